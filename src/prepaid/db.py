"""Database layer: the declarative base, engines for SQLite and PostgreSQL, sessions.

SQLite runs in WAL mode with foreign keys on and a busy timeout. A session opened for writing starts its
transaction with ``BEGIN IMMEDIATE``, which takes SQLite's write lock at once: two writers queue on the busy
timeout instead of both reading and then one failing on upgrade. Read-only sessions use a plain ``BEGIN``
so readers never wait for writers (WAL). Within one process, the write transactions of ``Database.transaction``
also queue in order on an asyncio lock of their ``Database``, taken just before their ``BEGIN IMMEDIATE`` (at
their first statement, exactly when SQLite's lock would be) and given back after their ``COMMIT`` or
``ROLLBACK``: they wait their turn without polling SQLite's busy handler, while other processes (``prepaid
check``, the CLI) still meet the busy timeout. A writer that waits longer than the busy timeout for that lock
fails as SQLite's busy handler would (``OperationalError``, "database is locked").

The pool keeps up to ``pool_size`` connections open (``PREPAID_DB_POOL_SIZE``) and opens at most
``max_overflow`` more for bursts, closing them after (``PREPAID_DB_MAX_OVERFLOW``). A connection is pinged at
checkout only when it sat idle in the pool for ``PING_AFTER_IDLE`` seconds or more (a dead one is replaced
before use, as ``pool_pre_ping`` would); one in steady use is not pinged, and none is kept past
``POOL_RECYCLE`` seconds.

On PostgreSQL, the transactions of one process that are about to lock the same wallet row for a spend or a
hold first queue on an asyncio lock of that wallet (``wallet_gate``), held until their ``COMMIT`` or
``ROLLBACK``. The row lock still decides; the gate only keeps a hot wallet's queue in the process instead of
in PostgreSQL, where every waiter of a row lock is woken and re-queued at each commit (at 32 clients on one
wallet that cost PostgreSQL three times the CPU of the debit itself). A transaction takes one gate at most,
and a wait longer than ``GATE_TIMEOUT`` goes on without it, so a gate can delay a transaction, never block it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import JSON, DateTime, MetaData, event, exc, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_only

SQLITE_BUSY_TIMEOUT_MS = 10_000
DEFAULT_POOL_SIZE = 20
DEFAULT_MAX_OVERFLOW = 0
PING_AFTER_IDLE = 10.0  # seconds a pooled connection sat unused before it is pinged at checkout
POOL_RECYCLE = 1800  # seconds: no connection is used past this age (server timeouts, failovers, leaks)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


RowT = TypeVar("RowT", bound=Base)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def lock_row(session: AsyncSession, model: type[RowT], row_id: str) -> RowT | None:
    """The row with this primary key, locked until the transaction ends (``FOR UPDATE`` on PostgreSQL;
    SQLite's write lock is held from ``BEGIN IMMEDIATE``) and read afresh, or None when there is none."""
    row: RowT | None = await session.scalar(
        select(model)
        .where(model.__mapper__.primary_key[0] == row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return row


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on both engines.

    SQLite has no time zone type, so values are stored as naive UTC there and made aware on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("prepaid_write", False)
        if isinstance(mode, _WriteTurn):
            await_only(mode.take())  # runs inside the async session's greenlet, as the driver's calls do
        conn.exec_driver_sql("BEGIN IMMEDIATE" if mode else "BEGIN")


class _WriteTurn:
    """One write transaction's place in its process's queue for SQLite's write lock."""

    __slots__ = ("held", "lock")

    def __init__(self, lock: asyncio.Lock) -> None:
        self.lock = lock
        self.held = False

    async def take(self) -> None:
        try:
            async with asyncio.timeout(SQLITE_BUSY_TIMEOUT_MS / 1000):
                await self.lock.acquire()  # a wait cut short by the timeout never leaves the lock taken
        except TimeoutError:
            raise _database_locked() from None
        self.held = True

    def give_back(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()


GATE_TIMEOUT = 2.0  # seconds a transaction waits for a wallet's gate before it goes on without it


class _Gate:
    """The queue of one process's transactions for one wallet, dropped when nobody uses it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _GatesHeld:
    """The gate a PostgreSQL write transaction holds, if any, given back after COMMIT or ROLLBACK."""

    __slots__ = ("closed", "gates", "held", "key")

    def __init__(self, gates: dict[str, _Gate]) -> None:
        self.gates = gates
        self.key: str | None = None
        self.held: _Gate | None = None
        self.closed = False  # a gate taken or tried, or a wallet locked without one: no wait for a gate now

    async def take(self, key: str) -> None:
        if self.closed:
            return
        self.closed = True
        gate = self.gates.get(key)
        if gate is None:
            gate = self.gates[key] = _Gate()
        gate.users += 1
        try:
            async with asyncio.timeout(GATE_TIMEOUT):
                await gate.lock.acquire()  # a wait cut short by the timeout never leaves the lock taken
        except TimeoutError:
            self._leave(key, gate)
            return
        except BaseException:
            self._leave(key, gate)
            raise
        self.key, self.held = key, gate

    def give_back(self) -> None:
        if self.held is not None and self.key is not None:
            gate, key = self.held, self.key
            self.held = self.key = None
            gate.lock.release()
            self._leave(key, gate)

    def _leave(self, key: str, gate: _Gate) -> None:
        gate.users -= 1
        if not gate.users and self.gates.get(key) is gate:
            del self.gates[key]


_GATES_INFO = "prepaid_gates"


async def wallet_gate(session: AsyncSession, wallet_id: str) -> None:
    """Queues this transaction behind the process's others about to lock ``wallet_id`` (PostgreSQL write
    transactions of ``Database.transaction`` only; elsewhere nothing happens). Call it just before the
    statement that locks the wallet, when the transaction holds no other lock another spend could wait for.
    Only a transaction's first wallet lock can wait for a gate (see ``wallet_locked``)."""
    held: _GatesHeld | None = session.info.get(_GATES_INFO)
    if held is not None:
        await held.take(wallet_id)


def wallet_locked(session: AsyncSession) -> None:
    """Call before locking a wallet without its gate: the transaction waits for no gate after that, since a
    gate's holder may be waiting for the very row lock it holds."""
    held: _GatesHeld | None = session.info.get(_GATES_INFO)
    if held is not None:
        held.closed = True


def _install_idle_ping(engine: AsyncEngine) -> None:
    """A pinged checkout only for a connection that sat idle ``PING_AFTER_IDLE`` seconds: one that answers no
    more (the server restarted, a proxy dropped it) is replaced before use. ``pool_pre_ping`` would ping on
    every checkout, a round trip per request under load, when the connection was used a moment ago."""
    dialect = engine.sync_engine.dialect

    @event.listens_for(engine.sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:  # the record's info is cleared when its connection is replaced
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool closes this connection and checks out another (a new one if need be).
            raise exc.DisconnectionError(f"stale pooled connection: {type(error).__name__}") from error


def create_engine(
    url: str, *, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW
) -> AsyncEngine:
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_recycle": POOL_RECYCLE}
    if is_sqlite_url(url):
        if ":memory:" in url or url.rstrip("/").endswith(":"):
            engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        else:
            engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **pool)
        _install_sqlite_pragmas(engine)
        return engine
    engine = create_async_engine(url, **pool)
    _install_idle_ping(engine)
    return engine


def _database_locked() -> exc.OperationalError:
    """What SQLite's busy handler raises when its timeout passes, for a writer queued in this process."""
    return exc.OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))


@dataclass
class Database:
    """The engine and two session factories: ``read`` (plain BEGIN) and ``write`` (write lock at BEGIN)."""

    engine: AsyncEngine
    read: async_sessionmaker[AsyncSession]
    write: async_sessionmaker[AsyncSession]
    # SQLite: this process's write transactions, in order (one lock per event loop).
    _write_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )
    # PostgreSQL: this process's wallet gates (``wallet_gate``), per event loop.
    _gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Gate]] = field(
        default_factory=weakref.WeakKeyDictionary, repr=False
    )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def transaction(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits when the block ends, rolls back on any exception."""
        if write and self.is_sqlite:
            # The turn is taken by the "begin" event when the transaction's first statement needs it.
            turn = _WriteTurn(self._write_lock())
            bind = self.engine.execution_options(prepaid_write=turn)
            try:
                async with self.write(bind=bind) as session, session.begin():
                    yield session
            finally:
                turn.give_back()  # after COMMIT or ROLLBACK
            return
        if not write:
            async with self.read() as session, session.begin():
                yield session
            return
        held = _GatesHeld(self._wallet_gates())
        try:
            async with self.write() as session, session.begin():
                session.info[_GATES_INFO] = held
                yield session
        finally:
            held.give_back()  # after COMMIT or ROLLBACK

    def _wallet_gates(self) -> dict[str, _Gate]:
        loop = asyncio.get_running_loop()
        gates = self._gates.get(loop)
        if gates is None:
            gates = self._gates[loop] = {}
        return gates

    def _write_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._write_locks.get(loop)
        if lock is None:
            lock = self._write_locks[loop] = asyncio.Lock()
        return lock

    async def dispose(self) -> None:
        await self.engine.dispose()


def open_database(
    url: str, *, pool_size: int = DEFAULT_POOL_SIZE, max_overflow: int = DEFAULT_MAX_OVERFLOW
) -> Database:
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    write_engine = engine.execution_options(prepaid_write=True)
    return Database(
        engine=engine,
        read=async_sessionmaker(engine, expire_on_commit=False),
        write=async_sessionmaker(write_engine, expire_on_commit=False),
    )
