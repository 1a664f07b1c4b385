"""Spends per second and p50/p99 latency of a debit of 1 credit, on one hot wallet and on many wallets, at
several concurrencies, along three paths on the same database in the same run:

- ``HTTP``: ``POST /v1/wallets/{id}/debits`` to a real ``prepaid serve`` (2 workers on PostgreSQL, 1 on
  SQLite), driven by keep-alive HTTP/1.1 clients in a separate process (``bench/_load.py``);
- ``service``: ``ledger.service.spend`` called in this process, each spend in its own ``db.transaction()``;
- ``raw SQL``: the same debit written by hand with the bare driver (asyncpg on PostgreSQL, aiosqlite on
  SQLite): a conditional ``UPDATE ledger_account ... WHERE balance >= amount``, the lot decremented, the
  transaction and its two postings inserted, in one transaction. The books stay balanced, so
  ``prepaid check`` is clean after the run whatever the path.

Each row shows its throughput as a fraction of the raw SQL row with the same wallets and clients. With
``--paths ...,floor`` a fourth row, ``HTTP+raw``, drives a bare FastAPI route doing the raw SQL debit under
uvicorn with the same workers (``bench/_floor_app.py``): roughly the ceiling of a Python HTTP server here. With
``--paths ...,plumbing`` (PostgreSQL) a row ``app+raw`` drives prepaid's own app (its middleware, the API key's
authentication, the request's SQLAlchemy transaction) whose debit route runs that raw SQL instead of the
ledger: the ceiling of any debit built on the design's stack.
A second table gives the CPU milliseconds each spend cost the app, the HTTP load process and PostgreSQL.

    python bench/ledger.py [--database-url URL] [--seconds 10 | --spends N] [--concurrency 1,8,32]
                           [--wallets 10000] [--paths http,plumbing,floor,service,raw]

Without ``--database-url`` it runs on a temporary SQLite file. A PostgreSQL URL should name an empty
database the benchmark may migrate and fill (``createdb prepaid_bench``); wallets are seeded with bulk
inserts that keep balances, lots and postings consistent, and the invariant check runs at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert

if not __package__:  # run as a script (python bench/ledger.py): make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _server
from bench._load import Operation, Sample, drive, run_fast
from prepaid.auth import service as auth_service
from prepaid.db import Database, open_database, utcnow
from prepaid.ids import new_id
from prepaid.ledger import service as ledger
from prepaid.ledger.errors import InsufficientCredits
from prepaid.ledger.models import Account, Lot, Posting, Transaction
from prepaid.migrate import upgrade
from prepaid.money import CREDIT

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("http", "service", "raw")  # the three paths, run by default
ALL_PATHS = ("http", "plumbing", "floor", "service", "raw")  # in table order; the floors: bench/_floor_app.py
PATH_LABELS = {
    "http": "HTTP",
    "plumbing": "app+raw",
    "floor": "HTTP+raw",
    "service": "service",
    "raw": "raw SQL",
}
FLOOR_FACTORIES = {"floor": "create_app", "plumbing": "create_prepaid_app"}
HOT_BALANCE = 10**15  # never runs out, whatever the run's length
WALLET_BALANCE = 10**9
SEED_BATCH = 2000
LOAD_TIMEOUT_SLACK = 300.0  # seconds a load process may take beyond its cell's length before it is stopped
SPENDS_CELL_TIMEOUT = 3600.0


# ---------------------------------------------------------------- results


@dataclass
class Row:
    wallets: str  # "hot" or the number of wallets
    clients: int
    path: str
    sample: Sample
    app_cpu_seconds: float | None = None  # server processes (HTTP) or this process (service, raw SQL)
    db_cpu_seconds: float | None = None  # the PostgreSQL server's processes, when they can be read
    busy_seconds: float | None = None  # CPU seconds the whole machine spent, all processes
    wall_seconds: float | None = None  # the cell's length, start-up of its load process included

    def other_share(self, cpus: int) -> float | None:
        """The part of the machine's CPU that went to none of the measured processes during the cell (anything
        else running, an idle server's jobs, a PostgreSQL backend that closed inside the cell): near 0 when
        the figures are clean."""
        if self.busy_seconds is None or not self.wall_seconds:
            return None
        measured = sum(
            value or 0.0
            for value in (self.app_cpu_seconds, self.sample.client_cpu_seconds, self.db_cpu_seconds)
        )
        return max(0.0, self.busy_seconds - measured) / (self.wall_seconds * cpus)

    @property
    def label(self) -> str:
        return PATH_LABELS[self.path]


@dataclass
class Report:
    engine: str
    workers: int
    wallet_count: int
    cell: str  # "10 s" or "5000 spends"
    rows: list[Row] = field(default_factory=list)
    breaches: list[ledger.Breach] = field(default_factory=list)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The 1-minute load average when the cells start and when they end: anything else busy on the machine
    # (a test suite, another benchmark) shows here, and the figures are then not worth keeping.
    load_before: float | None = None
    load_after: float | None = None

    def raw_rate(self, wallets: str, clients: int) -> float | None:
        for row in self.rows:
            if row.path == "raw" and row.wallets == wallets and row.clients == clients:
                return row.sample.per_second
        return None

    def ratio(self, row: Row) -> float | None:
        raw = self.raw_rate(row.wallets, row.clients)
        return row.sample.per_second / raw if raw else None


# ---------------------------------------------------------------- set-up


@dataclass
class Wallet:
    id: str
    lot_id: str


@dataclass
class Setup:
    api_key: str
    hot: Wallet
    wallets: list[Wallet]


async def seed_wallets(db: Database, *, user_id: str, count: int, balance: int, label: str) -> list[Wallet]:
    """``count`` wallets holding ``balance`` each, written in bulk with the rows ``ledger.service.grant``
    would leave (the wallet and its hold account, a grant transaction from ``@promotions`` with its two
    postings, one promotional lot), so the books balance from the start."""
    made: list[Wallet] = []
    for start in range(0, count, SEED_BATCH):
        now = utcnow()
        accounts: list[dict[str, Any]] = []
        transactions: list[dict[str, Any]] = []
        postings: list[dict[str, Any]] = []
        lots: list[dict[str, Any]] = []
        for number in range(start, min(count, start + SEED_BATCH)):
            wallet_id, hold_id, txn_id, lot_id = new_id("wal"), new_id("acc"), new_id("txn"), new_id("lot")
            name = f"{label} {number}"
            common = {
                "user_id": user_id,
                "asset": CREDIT,
                "held": 0,
                "debt": 0,
                "clawback_debt": 0,
                "overdraft_limit": 0,
                "low_balance_threshold": None,
                "is_default": False,
                "frozen": False,
                "created_at": now,
                "updated_at": now,
                "code": None,
            }
            accounts.append(
                {
                    **common,
                    "id": hold_id,
                    "kind": "hold",
                    "name": f"{name} (held)",
                    "hold_account_id": None,
                    "balance": 0,
                }
            )
            accounts.append(
                {
                    **common,
                    "id": wallet_id,
                    "kind": "wallet",
                    "name": name,
                    "hold_account_id": hold_id,
                    "balance": balance,
                }
            )
            transactions.append(
                {
                    "id": txn_id,
                    "kind": "grant",
                    "idempotency_key": f"bench:seed:{wallet_id}",
                    "request_hash": ledger.request_hash("grant", wallet=wallet_id, amount=balance),
                    "reference_type": None,
                    "reference_id": None,
                    "reverses_id": None,
                    "memo": "benchmark seed",
                    "metadata_": {},
                    "actor_user_id": None,
                    "lot_moves": [[lot_id, balance]],
                    "debt_change": 0,
                    "created_at": now,
                }
            )
            postings.append(
                {
                    "transaction_id": txn_id,
                    "account_id": ledger.SYSTEM_ACCOUNTS["@promotions"],
                    "asset": CREDIT,
                    "amount": -balance,
                    "created_at": now,
                }
            )
            postings.append(
                {
                    "transaction_id": txn_id,
                    "account_id": wallet_id,
                    "asset": CREDIT,
                    "amount": balance,
                    "created_at": now,
                }
            )
            lots.append(
                {
                    "id": lot_id,
                    "wallet_id": wallet_id,
                    "transaction_id": txn_id,
                    "asset": CREDIT,
                    "source": "promotional",
                    "priority": ledger.DEFAULT_PRIORITY["promotional"],
                    "amount": balance,
                    "remaining": balance,
                    "expires_at": None,
                    "created_at": now,
                }
            )
            made.append(Wallet(wallet_id, lot_id))
        async with db.transaction() as session:
            await session.execute(insert(Transaction), transactions)
            await session.execute(insert(Account), accounts)
            await session.execute(insert(Posting), postings)
            await session.execute(insert(Lot), lots)
    return made


async def prepare(db: Database, *, wallet_count: int) -> Setup:
    """An admin with a server key (``usage:write``, acts on any wallet), a customer, one hot wallet and
    ``wallet_count`` others."""
    tag = secrets.token_hex(4)
    async with db.transaction() as session:
        admin = await auth_service.create_user(
            session, email=f"bench-admin-{tag}@example.com", password=None, roles=["admin"]
        )
        customer = await auth_service.create_user(
            session, email=f"bench-customer-{tag}@example.com", password=None, roles=["user"]
        )
        _key, secret = await auth_service.create_api_key(
            session,
            actor=auth_service.Principal(user=admin),
            name=f"ledger benchmark {tag}",
            scopes=["usage:write"],
            server=True,
        )
    (hot,) = await seed_wallets(db, user_id=customer.id, count=1, balance=HOT_BALANCE, label="bench hot")
    wallets = await seed_wallets(
        db, user_id=customer.id, count=wallet_count, balance=WALLET_BALANCE, label="bench"
    )
    return Setup(api_key=secret, hot=hot, wallets=wallets)


# ---------------------------------------------------------------- path 2: ledger.service


def service_operation(db: Database, prefix: str) -> Operation:
    async def debit(worker: int, sequence: int, wallet_id: str) -> bool:
        try:
            async with db.transaction() as session:
                await ledger.spend(
                    session,
                    wallet_id=wallet_id,
                    amount=1,
                    idempotency_key=f"{prefix}-{worker}-{sequence}",
                    memo="bench",
                )
        except InsufficientCredits:
            return False
        return True

    return debit


# ---------------------------------------------------------------- path 3: raw SQL


class Refused(Exception):
    """The conditional update found too little: the transaction is rolled back."""


def _lot_moves(lot_id: str) -> str:
    return json.dumps([[lot_id, -1]])


# The raw SQL debit on PostgreSQL, in the driver's own ``$n`` parameters: the raw SQL path runs it with asyncpg,
# and the floor apps (bench/_floor_app.py) run the same statements, one through a SQLAlchemy session.
PG_DEBIT_WALLET = (
    "UPDATE ledger_account SET balance = balance - $1, updated_at = $3 "
    "WHERE id = $2 AND balance >= $1 RETURNING balance"
)
PG_DEBIT_LOT = "UPDATE ledger_lot SET remaining = remaining - $1 WHERE id = $2 AND remaining >= $1"
PG_DEBIT_TRANSACTION = (
    "INSERT INTO ledger_transaction (id, kind, idempotency_key, request_hash, memo, metadata, "
    "lot_moves, debt_change, created_at) "
    "VALUES ($1, 'spend', $2, $3, 'bench', '{}'::jsonb, $4::jsonb, 0, $5)"
)
PG_DEBIT_POSTINGS = (
    "INSERT INTO ledger_posting (transaction_id, account_id, asset, amount, created_at) "
    "VALUES ($1, $2, $3, -$4::bigint, $5), ($1, $6, $3, $4::bigint, $5)"
)


async def pg_debit(
    fetchval: Callable[..., Awaitable[Any]],
    execute: Callable[..., Awaitable[Any]],
    *,
    wallet_id: str,
    lot_id: str,
    key: str,
) -> bool:
    """The raw SQL debit of 1 credit through a driver's ``fetchval`` and ``execute``, inside the caller's
    transaction: False (nothing changed, so far) when the wallet cannot pay."""
    now = datetime.now(UTC)
    txn_id = new_id("txn")
    if await fetchval(PG_DEBIT_WALLET, 1, wallet_id, now) is None:
        return False
    await execute(PG_DEBIT_LOT, 1, lot_id)
    await execute(
        PG_DEBIT_TRANSACTION,
        txn_id,
        key,
        ledger.request_hash("spend", wallet=wallet_id, amount=1),
        _lot_moves(lot_id),
        now,
    )
    await execute(PG_DEBIT_POSTINGS, txn_id, wallet_id, CREDIT, 1, now, ledger.SYSTEM_ACCOUNTS["@usage"])
    return True


@contextlib.asynccontextmanager
async def raw_postgres(
    url: str, *, concurrency: int, lots: dict[str, str], prefix: str
) -> AsyncIterator[Operation]:
    """asyncpg, one pooled connection per client: the debit as four statements in one transaction."""
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)

    async def debit(worker: int, sequence: int, wallet_id: str) -> bool:
        try:
            async with pool.acquire() as conn, conn.transaction():
                key = f"{prefix}-{worker}-{sequence}"
                if not await pg_debit(
                    conn.fetchval, conn.execute, wallet_id=wallet_id, lot_id=lots[wallet_id], key=key
                ):
                    raise Refused  # rolls the transaction back
        except Refused:
            return False
        return True

    try:
        yield debit
    finally:
        await pool.close()


def _sqlite_now() -> str:
    """A timestamp as SQLAlchemy stores a UTC datetime in SQLite (naive, microseconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


@contextlib.asynccontextmanager
async def raw_sqlite(
    path: str, *, concurrency: int, lots: dict[str, str], prefix: str
) -> AsyncIterator[Operation]:
    """aiosqlite (the app's driver) with the app's pragmas; SQLite has one writer, so the clients share one
    connection and take turns (an in-process lock), the fastest way to write SQLite from one process."""
    import aiosqlite

    conn = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000", "synchronous=NORMAL"):
        await conn.execute(f"PRAGMA {pragma}")
    turn = asyncio.Lock()
    usage = ledger.SYSTEM_ACCOUNTS["@usage"]

    async def debit(worker: int, sequence: int, wallet_id: str) -> bool:
        now = _sqlite_now()
        txn_id = new_id("txn")
        key = f"{prefix}-{worker}-{sequence}"
        async with turn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = await conn.execute(
                    "UPDATE ledger_account SET balance = balance - ?, updated_at = ? WHERE id = ? AND balance >= ?",
                    (1, now, wallet_id, 1),
                )
                if cursor.rowcount != 1:
                    raise Refused
                await conn.execute(
                    "UPDATE ledger_lot SET remaining = remaining - ? WHERE id = ? AND remaining >= ?",
                    (1, lots[wallet_id], 1),
                )
                await conn.execute(
                    "INSERT INTO ledger_transaction (id, kind, idempotency_key, request_hash, memo, metadata, "
                    "lot_moves, debt_change, created_at) VALUES (?, 'spend', ?, ?, 'bench', '{}', ?, 0, ?)",
                    (
                        txn_id,
                        key,
                        ledger.request_hash("spend", wallet=wallet_id, amount=1),
                        _lot_moves(lots[wallet_id]),
                        now,
                    ),
                )
                await conn.execute(
                    "INSERT INTO ledger_posting (transaction_id, account_id, asset, amount, created_at) "
                    "VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)",
                    (txn_id, wallet_id, CREDIT, -1, now, txn_id, usage, CREDIT, 1, now),
                )
            except Refused:
                await conn.execute("ROLLBACK")
                return False
            except BaseException:
                await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")
        return True

    try:
        yield debit
    finally:
        await conn.close()


def sqlite_path(url: str) -> str:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database:
        raise SystemExit("the SQLite benchmark needs a file database")
    return database


# ---------------------------------------------------------------- path 1: HTTP


def http_cell(
    server: _server.Server,
    *,
    api_key: str,
    wallets: Sequence[str],
    concurrency: int,
    seconds: float | None,
    spends: int | None,
    warmup: int,
    prefix: str,
    meter: CpuMeter | None = None,
) -> Sample:
    """One cell in a separate load process (``python -m bench._load``); ``meter`` is started when the load
    process has warmed up and stopped when its time or budget is used up."""
    spec = {
        "base_url": server.base_url,
        "api_key": api_key,
        "wallets": list(wallets),
        "concurrency": concurrency,
        "seconds": seconds,
        "spends": spends,
        "warmup": warmup,
        "key_prefix": prefix,
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    timeout = seconds + LOAD_TIMEOUT_SLACK if seconds is not None else SPENDS_CELL_TIMEOUT
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench._load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,  # a file, not a pipe: nothing the load process says can block it
            text=True,
            cwd=ROOT,
            env=env,
        )
        watchdog = threading.Timer(timeout, process.kill)  # bounds every wait below
        watchdog.start()
        try:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps(spec) + "\n")
            process.stdin.flush()
            lines = [process.stdout.readline()]
            if lines[-1].strip() == "warm":
                if meter is not None:
                    meter.start()
                process.stdin.write("go\n")
                process.stdin.flush()
                lines.append(process.stdout.readline())
                if lines[-1].strip() == "stopped" and meter is not None:
                    meter.stop()
            lines.append(process.stdout.read())  # the sample, up to the end of the output
            process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
        out = "".join(lines)
        errors.seek(0)
        if process.returncode != 0 or not out.strip().endswith("}"):
            raise RuntimeError(f"the load process failed ({process.returncode}):\n{out}\n{errors.read()}")
    return Sample.from_json(json.loads(out.strip().splitlines()[-1]))


# ---------------------------------------------------------------- CPU accounting


def _cpu_by_pid(pids: Sequence[int]) -> dict[tuple[int, int], float]:
    """User + system CPU seconds of each readable process of ``pids``, from /proc, keyed by (pid, start
    time) so that a pid reused by a new process is not taken for the old one."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found[(pid, int(fields[19]))] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime; starttime
    return found


def _postgres_pids(database: str) -> list[int]:
    """PostgreSQL's processes that work for ``database``: its backends (whose title names the database) and
    the server's own background processes (WAL writer, checkpointer, ...); other databases' backends (a test
    suite running beside the benchmark) are left out."""
    pids: list[int] = []
    proc = Path("/proc")
    if not proc.is_dir():
        return pids
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() not in {"postgres", "postmaster"}:
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            is_backend = "[local]" in title or re.search(r"\d\)", title) is not None  # "host(port)"
            if not is_backend or f" {database} " in f"{title} ":
                pids.append(int(entry.name))
    return pids


def _machine_busy() -> float | None:
    """CPU seconds the machine has spent on anything but idling and waiting for I/O, from /proc/stat."""
    try:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _spent(before: dict[tuple[int, int], float], after: dict[tuple[int, int], float]) -> float:
    """CPU used between two readings by the processes alive at the second (new ones count from zero)."""
    return sum(value - before.get(key, 0.0) for key, value in after.items())


class CpuMeter:
    """CPU seconds spent between ``start`` and ``stop`` by the app (``app_pids``, or this process), by the
    PostgreSQL processes working for ``database`` (those alive at the stop: a backend that ended in between,
    such as a pool's overflow connection, is missed), and by the whole machine."""

    def __init__(self, app_pids: Sequence[int] | None, *, database: str | None) -> None:
        self.app_pids = app_pids
        self.database = database
        self.app: float | None = None
        self.db: float | None = None
        self.busy: float | None = None
        self.wall: float | None = None
        self._start: tuple[float, float | None, float, dict[tuple[int, int], float]] | None = None

    def _app_now(self) -> float:
        if self.app_pids is not None:
            return sum(_cpu_by_pid(self.app_pids).values())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def _db_now(self) -> dict[tuple[int, int], float]:
        return _cpu_by_pid(_postgres_pids(self.database)) if self.database else {}

    def start(self) -> None:
        self._start = (self._app_now(), _machine_busy(), time.monotonic(), self._db_now())

    def stop(self) -> None:
        assert self._start is not None, "stop() before start()"
        app, busy, wall, db = self._start
        self.app = self._app_now() - app
        busy_now = _machine_busy()
        self.busy = busy_now - busy if busy is not None and busy_now is not None else None
        self.wall = time.monotonic() - wall
        self.db = _spent(db, self._db_now()) if self.database else None


# ---------------------------------------------------------------- the run


@dataclass
class Config:
    database_url: str
    seconds: float | None = 10.0
    spends: int | None = None
    concurrency: Sequence[int] = (1, 8, 32)
    wallets: int = 10_000
    paths: Sequence[str] = PATHS
    workers: int | None = None  # default: 2 on PostgreSQL, 1 on SQLite
    warmup: int = 20
    folder: Path | None = None  # for the server's log; a temporary folder when None
    progress: bool = True

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def postgres_database(self) -> str | None:
        """The PostgreSQL database's name (whose backends' CPU the benchmark reads), or None on SQLite."""
        if not self.is_postgres:
            return None
        from sqlalchemy.engine import make_url

        return make_url(self.database_url).database


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _say(config: Config, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


async def run(config: Config) -> Report:
    unknown = sorted(set(config.paths) - set(ALL_PATHS))
    if unknown:
        raise SystemExit(f"unknown path(s): {', '.join(unknown)}; choose from {', '.join(ALL_PATHS)}")
    engine = "postgresql" if config.is_postgres else "sqlite"
    workers = config.workers or (2 if config.is_postgres else 1)
    cell = f"{config.seconds:g} s" if config.seconds is not None else f"{config.spends} spends"
    report = Report(engine=engine, workers=workers, wallet_count=config.wallets, cell=cell)
    _say(config, f"migrating {engine} database ...")
    await asyncio.to_thread(upgrade, config.database_url)
    db = open_database(config.database_url)
    try:
        async with db.transaction() as session:
            await ledger.ensure_credit_scale(session, scale=0)
        _say(config, f"seeding 1 hot wallet and {config.wallets} wallets ...")
        started = time.perf_counter()
        setup = await prepare(db, wallet_count=config.wallets)
        _say(config, f"seeded in {time.perf_counter() - started:.1f} s")
        lots = {w.id: w.lot_id for w in [setup.hot, *setup.wallets]}
        sets = [("hot", [setup.hot.id]), (str(config.wallets), [w.id for w in setup.wallets])]
        run_tag = secrets.token_hex(4)
        report.load_before = _load_average()
        with contextlib.ExitStack() as stack:
            folder = config.folder or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            servers: dict[str, _server.Server] = {}
            if "http" in config.paths:
                _say(config, f"starting prepaid serve --workers {workers} ...")
                # Each worker's pool as large as the clients it serves at most, as the README advises; the
                # floor app below gets the same. Together with the raw SQL path's own connections they
                # stay under PostgreSQL's default max_connections (100).
                servers["http"] = stack.enter_context(
                    _server.serve(
                        config.database_url,
                        workers=workers,
                        folder=folder,
                        wait=False,
                        PREPAID_DB_POOL_SIZE=str(max(1, -(-max(config.concurrency) // workers))),
                    )
                )
            floors = [path for path in FLOOR_FACTORIES if path in config.paths]
            if floors:
                lots_file = folder / "floor-lots.json"
                lots_file.write_text(json.dumps(lots))
            for path in floors:
                _say(config, f"starting the {PATH_LABELS[path]} floor app with {workers} worker(s) ...")
                servers[path] = stack.enter_context(
                    _server.serve_floor(
                        config.database_url,
                        workers=workers,
                        folder=folder,
                        root=ROOT,
                        lots=lots_file,
                        pool=max(1, -(-max(config.concurrency) // workers)),
                        prefix=f"bench-{run_tag}-{path}",
                        wait=False,
                        factory=FLOOR_FACTORIES[path],
                    )
                )
            for server in servers.values():  # started together, waited for in turn
                await asyncio.to_thread(server.wait_until_ready)
            for wallets_label, wallet_ids in sets:
                for clients in config.concurrency:
                    for path in ALL_PATHS:
                        if path not in config.paths:
                            continue
                        prefix = f"bench-{run_tag}-{path}-{wallets_label}-{clients}"
                        _say(
                            config,
                            f"  {wallets_label:>6} wallets, {clients:>3} clients, {PATH_LABELS[path]} ...",
                        )
                        row = await _run_cell(
                            config, db, servers, setup, lots, path, wallets_label, wallet_ids, clients, prefix
                        )
                        report.rows.append(row)
        report.load_after = _load_average()
        _say(config, "checking the books ...")
        async with db.transaction(write=False) as session:
            report.breaches = await ledger.check_invariants(session)
    finally:
        await db.dispose()
    return report


async def _run_cell(
    config: Config,
    db: Database,
    servers: dict[str, _server.Server],
    setup: Setup,
    lots: dict[str, str],
    path: str,
    wallets_label: str,
    wallet_ids: list[str],
    clients: int,
    prefix: str,
) -> Row:
    """One cell: warm up, then measure throughput, latencies and CPU over the measured part only."""
    if path in ("http", *FLOOR_FACTORIES):
        server = servers[path]
        meter = CpuMeter(server.worker_pids(), database=config.postgres_database)
        sample = await asyncio.to_thread(
            http_cell,
            server,
            api_key=setup.api_key,
            wallets=wallet_ids,
            concurrency=clients,
            warmup=config.warmup,
            prefix=prefix,
            seconds=config.seconds,
            spends=config.spends,
            meter=meter,
        )
    else:
        meter = CpuMeter(None, database=config.postgres_database)
        async with contextlib.AsyncExitStack() as stack:
            if path == "service":
                operation = service_operation(db, prefix)
            elif config.is_postgres:
                operation = await stack.enter_async_context(
                    raw_postgres(config.database_url, concurrency=clients, lots=lots, prefix=prefix)
                )
            else:
                operation = await stack.enter_async_context(
                    raw_sqlite(
                        sqlite_path(config.database_url), concurrency=clients, lots=lots, prefix=prefix
                    )
                )
            sample = await drive(
                operation,
                wallets=wallet_ids,
                concurrency=clients,
                warmup=config.warmup,
                seconds=config.seconds,
                spends=config.spends,
                on_start=meter.start,
                on_stop=meter.stop,
            )
        if path == "service":
            await db.engine.dispose()  # its connections are not left open beside the next cells' own
    return Row(wallets_label, clients, path, sample, meter.app, meter.db, meter.busy, meter.wall)


# ---------------------------------------------------------------- the table


TABLE_COLUMNS = ("wallets", "clients", "path", "spends", "spends/s", "p50 ms", "p99 ms", "vs raw", "errors")


def table_lines(report: Report) -> list[str]:
    """The table as aligned text lines: a header, a rule, then one line per row."""
    header = (
        f"{'wallets':>7} {'clients':>7}  {'path':<8} {'spends':>8} {'spends/s':>9} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'vs raw':>7} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    for row in report.rows:
        ratio = report.ratio(row)
        wallets = "hot" if row.wallets == "hot" else f"{int(row.wallets):,}"
        lines.append(
            f"{wallets:>7} {row.clients:>7}  {row.label:<8} {row.sample.count:>8} "
            f"{row.sample.per_second:>9.0f} {row.sample.percentile_ms(0.5):>8.2f} "
            f"{row.sample.percentile_ms(0.99):>8.2f} {'' if ratio is None else f'{ratio:.2f}':>7} "
            f"{row.sample.errors:>6}"
        )
    return lines


def cpu_lines(report: Report) -> list[str]:
    """CPU milliseconds per spend on each side: where the machine's cores went."""
    lines = [
        f"{'wallets':>7} {'clients':>7}  {'path':<8} {'app ms':>8} {'load ms':>8} {'db ms':>8} {'other %':>8}",
    ]
    for row in report.rows:
        count = row.sample.cpu_operations or row.sample.count or 1
        wallets = "hot" if row.wallets == "hot" else f"{int(row.wallets):,}"

        def per(value: float | None, n: float = count) -> str:
            return "" if value is None else f"{value * 1000 / n:.3f}"

        lines.append(
            f"{wallets:>7} {row.clients:>7}  {row.label:<8} {per(row.app_cpu_seconds):>8} "
            f"{per(row.sample.client_cpu_seconds):>8} {per(row.db_cpu_seconds):>8} "
            f"{'' if (other := row.other_share(report.cpus)) is None else f'{other * 100:.0f}':>8}"
        )
    return lines


def aim_lines(report: Report) -> list[str]:
    """The issue's aim: HTTP at 32 clients >= 1/2 of raw SQL on many wallets and >= 2/3 on the hot wallet."""
    lines = []
    for wallets, target in ((str(report.wallet_count), 0.5), ("hot", 2 / 3)):
        for row in report.rows:
            if row.path == "http" and row.wallets == wallets and row.clients == 32:
                ratio = report.ratio(row)
                if ratio is None:
                    continue
                verdict = "met" if ratio >= target else "NOT met"
                name = "the hot wallet" if wallets == "hot" else f"{report.wallet_count:,} wallets"
                lines.append(
                    f"aim: HTTP at 32 clients on {name} = {ratio:.2f} of raw SQL (target {target:.2f}): {verdict}"
                )
    return lines


def print_report(report: Report) -> None:
    print(
        f"prepaid ledger benchmark: {report.engine}, HTTP server with {report.workers} worker(s), "
        f"{report.cell} per cell, {report.cpus} CPU(s)"
    )
    if report.load_before is not None and report.load_after is not None:
        print(
            f"1-minute load average: {report.load_before:.2f} at the start, {report.load_after:.2f} at the end"
        )
    print()
    for line in table_lines(report):
        print(line)
    print()
    print("CPU per spend (ms): app = the server's processes (HTTP) or this process (service, raw SQL);")
    print("load = the HTTP load process; db = PostgreSQL's processes for this database and its background")
    print("writers. other % = share of the machine's CPU used by anything else during the cell.")
    for line in cpu_lines(report):
        print(line)
    print()
    for line in aim_lines(report):
        print(line)
    if report.breaches:
        print(f"prepaid check: {len(report.breaches)} breach(es)")
        for breach in report.breaches[:20]:
            print(f"  {breach.invariant} {breach.subject}: {breach.detail}")
    else:
        print("prepaid check: clean (every ledger invariant holds after the run)")


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--seconds", type=float, default=None, help="length of each cell (default 10)")
    amount.add_argument("--spends", type=int, default=None, help="spends per cell instead of a duration")
    parser.add_argument("--concurrency", default="1,8,32", help="comma list of client counts")
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument(
        "--paths",
        default=",".join(PATHS),
        help="comma list of http, service, raw, floor (a bare FastAPI route doing the raw SQL) and plumbing "
        "(prepaid's app with that raw SQL as its debit; PostgreSQL)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="server workers (default 2 on PostgreSQL, 1 on SQLite)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="uncounted spends per client before each cell")
    parser.add_argument("--log-folder", type=Path, default=None, help="keep the server's log here")
    args = parser.parse_args(argv)
    if "plumbing" in args.paths and not str(args.database_url or "").startswith("postgresql"):
        parser.error(
            "the plumbing path runs on PostgreSQL only (give --database-url postgresql+asyncpg://...)"
        )
    seconds = args.seconds if args.seconds is not None or args.spends is not None else 10.0
    return Config(
        database_url=args.database_url or "",
        seconds=seconds,
        spends=args.spends,
        concurrency=[int(part) for part in args.concurrency.split(",") if part.strip()],
        wallets=args.wallets,
        paths=[part.strip() for part in args.paths.split(",") if part.strip()],
        workers=args.workers,
        warmup=args.warmup,
        folder=args.log_folder,
    )


def main(argv: Sequence[str] | None = None) -> None:
    config = parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        if not config.database_url:
            config.database_url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        print_report(run_fast(run(config)))


if __name__ == "__main__":
    main()
