"""``prepaid.db``: SQLite's write transactions of one process queue in order on the ``Database``'s own lock
(and fail as SQLite's busy handler would after the busy timeout); PostgreSQL's pool takes its size from the
settings and replaces a connection that died while idle before a transaction uses it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError

from prepaid import db as db_module
from prepaid.db import Database, open_database
from prepaid.settings import Settings


async def test_sqlite_writers_of_one_process_take_turns_in_the_order_they_came(
    sqlite_only_database: str,
) -> None:
    db = open_database(sqlite_only_database)
    entered: list[int] = []
    inside = 0
    most_inside = 0

    async def writer(number: int) -> None:
        nonlocal inside, most_inside
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))  # the first statement begins: the write lock is taken
            inside += 1
            most_inside = max(most_inside, inside)
            entered.append(number)
            await asyncio.sleep(0.005)  # the write lock is held across awaits, as a request holds it
            inside -= 1

    opened = 0
    all_open = asyncio.Event()

    async def open_connection() -> None:
        nonlocal opened
        async with db.transaction(write=False) as session:
            await session.execute(text("SELECT 1"))
            opened += 1
            if opened == 13:
                all_open.set()
            await all_open.wait()

    try:
        # The pool holds a connection for each writer already, so they line up in the order they start.
        await asyncio.gather(*(open_connection() for _ in range(13)))
        async with db.transaction() as session:  # the first holds the lock while the others line up
            await session.execute(text("SELECT 1"))
            tasks = []
            for number in range(12):
                tasks.append(asyncio.create_task(writer(number)))
                for _ in range(5):  # each starts waiting before the next is created
                    await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    finally:
        await db.dispose()
    assert entered == list(range(12))
    assert most_inside == 1


async def test_a_sqlite_write_transaction_that_sends_nothing_takes_no_turn(sqlite_only_database: str) -> None:
    """As with ``BEGIN IMMEDIATE``, the lock is taken by the first statement: a write session opened but
    not used (say a route that only calls a gateway) does not hold up the others."""
    db = open_database(sqlite_only_database)
    try:
        async with db.transaction(), db.transaction() as other:
            assert await other.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()


async def test_sqlite_readers_do_not_wait_for_a_writer(sqlite_only_database: str) -> None:
    db = open_database(sqlite_only_database)
    try:
        async with db.transaction() as session:
            await session.execute(text("UPDATE ledger_account SET name = name WHERE id = 'sys_usage'"))
            async with db.transaction(write=False) as reader:
                assert await reader.scalar(text("SELECT count(*) FROM ledger_account")) > 0
    finally:
        await db.dispose()


async def test_a_sqlite_writer_kept_waiting_past_the_busy_timeout_fails_as_locked_and_the_queue_goes_on(
    sqlite_only_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    db = open_database(sqlite_only_database)
    try:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            with pytest.raises(OperationalError, match="database is locked"):
                async with db.transaction() as second:
                    await second.execute(text("SELECT 1"))
        async with db.transaction() as session:  # the timed-out waiter left nothing behind
            assert await session.scalar(text("SELECT 1")) == 1
    finally:
        await db.dispose()


@pytest.fixture
def postgres_database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _backend_pid(db: Database) -> int:
    async with db.transaction(write=False) as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


async def _kill(killer: Database, pid: int) -> None:
    """Ends another connection's backend, as a server restart or a dropped TCP connection would."""
    async with killer.transaction() as session:
        assert await session.scalar(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    for _ in range(200):
        async with killer.transaction(write=False) as session:
            gone = not await session.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            )
        if gone:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"backend {pid} did not end")


async def test_postgres_replaces_a_connection_that_died_while_idle_before_using_it(
    postgres_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = open_database(postgres_database_url, pool_size=1, max_overflow=0)
    killer = open_database(postgres_database_url, pool_size=1, max_overflow=0)
    try:
        first = await _backend_pid(db)
        assert await _backend_pid(db) == first  # reused from the pool
        await _kill(killer, first)
        monkeypatch.setattr(db_module, "PING_AFTER_IDLE", 0.0)  # it has been idle long enough to be pinged
        second = await _backend_pid(db)  # no error: the dead connection was replaced at checkout
        assert second != first
    finally:
        await db.dispose()
        await killer.dispose()


async def test_postgres_does_not_ping_a_connection_in_steady_use(postgres_database_url: str) -> None:
    """The price of skipping the ping: a connection killed a moment after its last use fails the one
    transaction that meets it (nothing is written), and the pool replaces it for the next."""
    db = open_database(postgres_database_url, pool_size=1, max_overflow=0)
    killer = open_database(postgres_database_url, pool_size=1, max_overflow=0)
    try:
        first = await _backend_pid(db)
        await _kill(killer, first)
        with pytest.raises(DBAPIError):
            await _backend_pid(db)
        assert await _backend_pid(db) != first
    finally:
        await db.dispose()
        await killer.dispose()


async def test_the_pool_size_comes_from_the_settings(postgres_database_url: str) -> None:
    from prepaid.app import create_app

    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=postgres_database_url,
        run_jobs=False,
        email_backend="memory",
        db_pool_size=3,
        db_max_overflow=2,
    )
    app: Any = create_app(settings)
    async with app.router.lifespan_context(app):
        pool: Any = app.state.db.engine.pool
        assert (pool.size(), pool._max_overflow) == (3, 2)


def test_pool_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="db_pool_size"):
        Settings(_env_file=None, db_pool_size=0)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="db_max_overflow"):
        Settings(_env_file=None, db_max_overflow=-1)  # type: ignore[call-arg]
