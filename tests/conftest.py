"""Fixtures shared by every test.

Databases: the money paths run on both engines. SQLite always runs (a migrated template file copied per
test). PostgreSQL runs when ``PREPAID_TEST_DATABASE_URL`` points at a server: a fresh database is created for
the test session, migrated once, and emptied between tests. Without it those tests are skipped with the
reason printed; with ``PREPAID_REQUIRE_ALL=1`` (CI) a missing PostgreSQL or Chromium fails instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url

from prepaid.app import create_app
from prepaid.db import Base, Database, create_engine, open_database
from prepaid.ledger.models import Account
from prepaid.ledger.service import SYSTEM_ACCOUNTS
from prepaid.migrate import upgrade
from prepaid.models import load_all_models
from prepaid.money import CREDIT
from prepaid.settings import Settings

REQUIRE_ALL = os.environ.get("PREPAID_REQUIRE_ALL") == "1"
PG_URL = os.environ.get("PREPAID_TEST_DATABASE_URL", "")
T = TypeVar("T")
OUTPUT_DIR = Path(os.environ.get("PREPAID_TEST_OUTPUT", Path(__file__).parent.parent / "test-output"))


def run_blocking(function: Callable[[], T]) -> T:
    """Run set-up code that starts its own event loop (Alembic, asyncio.run) from inside a running one."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result()


def skip_or_fail(reason: str) -> None:
    """Skip with the reason, or fail when the run requires everything (CI)."""
    if REQUIRE_ALL:
        pytest.fail(f"PREPAID_REQUIRE_ALL=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    return path


async def _pg_reachable(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return None
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own for this test session, created, migrated, and dropped at the end."""
    if not PG_URL:
        skip_or_fail(
            "PostgreSQL tests need PREPAID_TEST_DATABASE_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1/test)"
        )
    problem = run_blocking(lambda: asyncio.run(_pg_reachable(PG_URL)))
    if problem:
        skip_or_fail(f"PostgreSQL at PREPAID_TEST_DATABASE_URL is not reachable ({problem})")
    name = f"prepaid_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin_url = PG_URL

    async def admin(sql: str) -> None:
        engine = create_engine(admin_url)
        try:
            async with engine.connect() as connection:
                await connection.execution_options(isolation_level="AUTOCOMMIT")
                await connection.execute(text(sql))
        finally:
            await engine.dispose()

    run_blocking(lambda: asyncio.run(admin(f'CREATE DATABASE "{name}"')))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    run_blocking(lambda: upgrade(url))
    yield url
    run_blocking(lambda: asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')))


async def _truncate_all(url: str) -> None:
    """Back to a freshly migrated database: every table emptied, then the rows the migrations seed (the
    ledger's system accounts) put back, as the SQLite template copy has them."""
    load_all_models()
    tables = ", ".join(f'"{table.name}"' for table in Base.metadata.sorted_tables)
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            await connection.execute(
                insert(Account),
                [
                    {
                        "id": account_id,
                        "kind": "system",
                        "code": code,
                        "name": code,
                        "asset": CREDIT,
                        "balance": 0,
                        "held": 0,
                        "debt": 0,
                        "clawback_debt": 0,
                        "overdraft_limit": 0,
                        "is_default": False,
                        "frozen": False,
                    }
                    for code, account_id in SYSTEM_ACCOUNTS.items()
                ],
            )
    finally:
        await engine.dispose()


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database emptied back to its migrated state, for a test that serves it from
    other processes: what an earlier test of this session left (an offer, a slab) must not change its answers."""
    run_blocking(lambda: asyncio.run(_truncate_all(postgres_url)))
    return postgres_url


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def database_url(
    engine_name: str, request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[str]:
    if engine_name == "sqlite":
        path = tmp_path / "prepaid.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url: str = request.getfixturevalue("postgres_url")
    await _truncate_all(url)
    yield url


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with ``@pytest.mark.parametrize``) to change settings."""
    return {}


@pytest.fixture
def settings(database_url: str, settings_overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "secret_key": secrets.token_urlsafe(48),
        "base_url": "http://testserver",
        "run_jobs": False,
        "email_backend": "memory",
        "rate_limits_enabled": False,
        **settings_overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def db(app: Any) -> Database:
    database: Database = app.state.db
    return database


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def sqlite_only_database(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "prepaid.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


# ---------------------------------------------------------------- parallel runs (pytest-xdist)
#
# ``python -m pytest`` (the whole suite, or folders of it) runs on PARALLEL_WORKERS xdist workers (fewer on a
# smaller machine); named test files run serially, as do ``--pdb``, ``--trace`` and ``--collect-only`` (starting
# workers costs more than a file's tests take). ``-n N`` (``-n 0``: serial) or ``-p no:xdist`` decides instead.
# Every worker has its own PostgreSQL database, SQLite template and temporary folder (see above), the servers
# it starts listen on free ports, and tests/xdist_scheduling.py keeps the heavy modules apart.

PARALLEL_WORKERS = 2  # CI's machine has 2 cores; each worker also drives servers and Chromium
_OUR_SCHEDULING = pytest.StashKey[bool]()


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which turns ``-n`` into workers
def pytest_cmdline_main(config: pytest.Config) -> None:
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("xdist"):
        return
    option = config.option
    if option.dist != "no":
        return  # ``--dist`` chosen on the command line: xdist's own scheduling
    if option.numprocesses is None and not option.tx:
        here = config.invocation_params.dir
        if any(getattr(option, name, False) for name in ("usepdb", "trace", "collectonly")):
            return
        if not all((here / arg.split("::", 1)[0]).is_dir() for arg in config.args):
            return  # test files named: not worth starting workers
        workers = min(PARALLEL_WORKERS, _available_cpus())
        if workers < 2:
            return
        option.numprocesses = workers
        option.tx = ["popen"] * workers
    if option.numprocesses or option.tx:
        option.dist = "loadscope"
        config.stash[_OUR_SCHEDULING] = True


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if not config.stash.get(_OUR_SCHEDULING, False):
        return None
    from tests.xdist_scheduling import HeavyModulesApart

    return HeavyModulesApart(config, log)


__all__ = ["OUTPUT_DIR", "open_database", "skip_or_fail"]
