"""Migrations and models agree: an EMPTY database upgraded to head has exactly the schema the models describe,
on both engines, and the migrations go down to nothing and up again.

Each test gets a database of its own that nothing else has touched: a new SQLite file, or a new PostgreSQL
database created on the server ``PREPAID_TEST_DATABASE_URL`` names (and dropped afterwards). The shared test
databases of ``conftest.py`` are migrated once per session, so they cannot show this.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, make_url

from prepaid.db import Base, create_engine
from prepaid.migrate import current_revision, downgrade, head_revision, upgrade
from prepaid.models import load_all_models
from tests.conftest import PG_URL, skip_or_fail

T = TypeVar("T")


def _on_connection(url: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` on a synchronous view of an async connection (in a loop of its own: the tests are sync,
    because Alembic runs its own event loop)."""

    async def run() -> T:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _postgres_admin(sql: str) -> None:
    async def run() -> None:
        engine = create_engine(PG_URL)
        try:
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text(sql))
        finally:
            await engine.dispose()

    asyncio.run(run())


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    if not PG_URL:
        skip_or_fail(
            "PostgreSQL tests need PREPAID_TEST_DATABASE_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1/test)"
        )
    name = f"prepaid_migrations_{os.getpid()}_{secrets.token_hex(3)}"
    try:
        _postgres_admin(f'CREATE DATABASE "{name}"')
    except Exception as error:
        skip_or_fail(
            f"PostgreSQL at PREPAID_TEST_DATABASE_URL is not reachable ({type(error).__name__}: {error})"
        )
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _drift(url: str) -> list[Any]:
    """What autogenerate would write to make the database match the models: nothing, when they agree."""
    load_all_models()

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(context, Base.metadata))

    return _on_connection(url, compare)


def _tables(url: str) -> set[str]:
    return _on_connection(url, lambda connection: set(inspect(connection).get_table_names()))


def _revision(url: str) -> str | None:
    async def run() -> str | None:
        engine = create_engine(url)
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_an_empty_database_upgraded_to_head_matches_the_models(empty_database: str) -> None:
    assert _tables(empty_database) == set(), "the database must start empty"
    upgrade(empty_database)
    assert _revision(empty_database) == head_revision(empty_database)
    load_all_models()
    assert set(Base.metadata.tables) <= _tables(empty_database)
    drift = _drift(empty_database)
    assert drift == [], "models and migrations disagree; write a migration for:\n" + "\n".join(
        map(str, drift)
    )


def test_migrations_go_down_to_base_and_up_again(empty_database: str) -> None:
    upgrade(empty_database)
    downgrade(empty_database, "base")
    assert _tables(empty_database) <= {"alembic_version"}, "downgrade to base left tables behind"
    assert _revision(empty_database) is None
    upgrade(empty_database)
    assert _revision(empty_database) == head_revision(empty_database)
    assert _drift(empty_database) == []


def test_the_drift_check_sees_a_missing_migration(empty_database: str) -> None:
    """The comparison is not vacuous: a table the models declare but no migration creates is reported."""
    upgrade(empty_database)
    _on_connection(empty_database, _drop_outbox)
    drift = _drift(empty_database)
    assert ("add_table", "notify_outbox") in {
        (diff[0], diff[1].name) for diff in drift if diff[0] == "add_table"
    }


def _drop_outbox(connection: Connection) -> None:
    connection.execute(text("DROP TABLE notify_outbox"))
    connection.commit()
