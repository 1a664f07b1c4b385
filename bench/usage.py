"""Usage events per second: single events (``POST /v1/usage``) and batches of 100 and 1,000
(``POST /v1/usage/batch``) to a real ``prepaid serve`` (2 workers on PostgreSQL, 1 on SQLite), beside the raw
SQL of the same charge on the same database in the same run, with the ratio.

The raw SQL of a charge of ``n`` events on one wallet, in one transaction: the wallet's conditional
``UPDATE ... WHERE balance >= cost``, its lot decremented, the ledger transaction and its two postings, and the
``n`` usage rows (one multi-row insert). That is what the server does for one request, less the pricing, the
authorisation, the duplicate check and HTTP. The books stay balanced, so ``prepaid check`` is clean after a run.

    python bench/usage.py [--database-url URL] [--seconds 5 | --requests N] [--concurrency 8]
                          [--batches 1,100,1000] [--wallets 100] [--paths http,raw]

Without ``--database-url`` it runs on a temporary SQLite file; a PostgreSQL URL should name an empty database
the benchmark may migrate and fill. The HTTP load runs in a process of its own (``python -m bench.usage
--load``), with the keep-alive clients and the closed-loop driver of ``bench/_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if not __package__:  # run as a script (python bench/usage.py): make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _server
from bench._load import KeepAliveClient, Operation, Sample, drive, run_fast
from bench.ledger import Refused, Wallet, seed_wallets, sqlite_path
from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.catalog import service as catalog_service
from prepaid.db import Database, open_database
from prepaid.ids import new_id
from prepaid.ledger import service as ledger
from prepaid.migrate import upgrade
from prepaid.money import CREDIT

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("http", "raw")
PATH_LABELS = {"http": "HTTP", "raw": "raw SQL"}
METER = "bench_event"
WALLET_BALANCE = 10**15
LOAD_TIMEOUT_SLACK = 300.0
CONNECT_GAP = 0.05  # seconds between the load's connections (see ``_http_load``)


@dataclass
class Row:
    batch: int
    path: str
    sample: Sample

    @property
    def events_per_second(self) -> float:
        return self.sample.per_second * self.batch


@dataclass
class Report:
    engine: str
    workers: int
    clients: int
    rows: list[Row] = field(default_factory=list)
    breaches: list[ledger.Breach] = field(default_factory=list)

    def ratio(self, row: Row) -> float | None:
        for other in self.rows:
            if other.path == "raw" and other.batch == row.batch and other.sample.per_second:
                return row.sample.per_second / other.sample.per_second
        return None


@dataclass
class Config:
    database_url: str | None = None
    seconds: float | None = 5.0
    requests: int | None = None
    concurrency: int = 8
    batches: list[int] = field(default_factory=lambda: [1, 100, 1000])
    wallets: int = 100
    warmup: int = 2
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    workers: int | None = None
    folder: Path | None = None
    progress: bool = True

    @property
    def is_postgres(self) -> bool:
        return bool(self.database_url) and str(self.database_url).startswith("postgresql")


# ---------------------------------------------------------------- set-up


async def prepare(db: Database, *, wallet_count: int) -> tuple[str, list[Wallet]]:
    """A server key (``usage:write``), the meter (1 credit per event) and ``wallet_count`` funded wallets."""
    tag = secrets.token_hex(4)
    async with db.transaction() as session:
        admin = await auth_service.create_user(
            session, email=f"bench-usage-admin-{tag}@example.com", password=None, roles=["admin"]
        )
        customer = await auth_service.create_user(
            session, email=f"bench-usage-{tag}@example.com", password=None, roles=["user"]
        )
        _key, secret = await auth_service.create_api_key(
            session,
            actor=auth_service.Principal(user=admin),
            name=f"usage benchmark {tag}",
            scopes=["usage:write"],
            server=True,
        )
        try:
            await catalog_service.get_meter(session, METER)
        except Exception:
            await catalog_service.create_meter(
                session,
                actor=audit_service.Actor(user_id=admin.id),
                code=METER,
                name="Benchmark event",
                kind="unit",
                unit="call",
                price=1,
            )
    wallets = await seed_wallets(
        db, user_id=customer.id, count=wallet_count, balance=WALLET_BALANCE, label="usage"
    )
    return secret, wallets


def events(prefix: str, wallet: str, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{n}", "wallet": wallet, "meter": METER, "quantity": 1} for n in range(count)]


# ---------------------------------------------------------------- raw SQL


@contextlib.asynccontextmanager
async def raw_postgres(
    url: str, *, concurrency: int, lots: dict[str, str], user_id: str, batch: int, prefix: str
) -> AsyncIterator[Operation]:
    import asyncpg
    from sqlalchemy.engine import make_url

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    usage = ledger.SYSTEM_ACCOUNTS["@usage"]

    async def charge(worker: int, sequence: int, wallet_id: str) -> bool:
        now = datetime.now(UTC)
        txn_id = new_id("txn")
        key = f"{prefix}-{worker}-{sequence}"
        ids = [new_id("usg") for _ in range(batch)]
        try:
            async with pool.acquire() as conn, conn.transaction():
                if (
                    await conn.fetchval(
                        "UPDATE ledger_account SET balance = balance - $1, updated_at = $3 "
                        "WHERE id = $2 AND balance >= $1 RETURNING balance",
                        batch,
                        wallet_id,
                        now,
                    )
                    is None
                ):
                    raise Refused
                await conn.execute(
                    "UPDATE ledger_lot SET remaining = remaining - $1 WHERE id = $2", batch, lots[wallet_id]
                )
                await conn.execute(
                    "INSERT INTO ledger_transaction (id, kind, idempotency_key, request_hash, memo, metadata, "
                    "lot_moves, debt_change, created_at) "
                    "VALUES ($1, 'spend', $2, $3, '', '{}'::jsonb, $4::jsonb, 0, $5)",
                    txn_id,
                    key,
                    ledger.request_hash("spend", wallet=wallet_id, amount=batch),
                    json.dumps([[lots[wallet_id], -batch]]),
                    now,
                )
                await conn.execute(
                    "INSERT INTO ledger_posting (transaction_id, account_id, asset, amount, created_at) "
                    "VALUES ($1, $2, $3, -$4::bigint, $5), ($1, $6, $3, $4::bigint, $5)",
                    txn_id,
                    wallet_id,
                    CREDIT,
                    batch,
                    now,
                    usage,
                )
                await conn.execute(
                    "INSERT INTO metering_usage (id, event_id, request_hash, user_id, wallet_id, meter_code, "
                    "quantity, cost, asset, balance_after, transaction_id, metadata, occurred_at, created_at) "
                    "SELECT u.id, $2 || '-' || u.n, '', $3, $4, $5, 1, 1, 'credit', 0, $6, '{}'::jsonb, $7, $7 "
                    "FROM unnest($1::text[]) WITH ORDINALITY AS u(id, n) ON CONFLICT (event_id) DO NOTHING",
                    ids,
                    key,
                    user_id,
                    wallet_id,
                    METER,
                    txn_id,
                    now,
                )
        except Refused:
            return False
        return True

    try:
        yield charge
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def raw_sqlite(
    path: str, *, lots: dict[str, str], user_id: str, batch: int, prefix: str
) -> AsyncIterator[Operation]:
    import aiosqlite

    conn = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=10000", "synchronous=NORMAL"):
        await conn.execute(f"PRAGMA {pragma}")
    turn = asyncio.Lock()
    usage = ledger.SYSTEM_ACCOUNTS["@usage"]

    async def charge(worker: int, sequence: int, wallet_id: str) -> bool:
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        txn_id = new_id("txn")
        key = f"{prefix}-{worker}-{sequence}"
        async with turn:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = await conn.execute(
                    "UPDATE ledger_account SET balance = balance - ?, updated_at = ? WHERE id = ? AND balance >= ?",
                    (batch, now, wallet_id, batch),
                )
                if cursor.rowcount != 1:
                    raise Refused
                await conn.execute(
                    "UPDATE ledger_lot SET remaining = remaining - ? WHERE id = ?", (batch, lots[wallet_id])
                )
                await conn.execute(
                    "INSERT INTO ledger_transaction (id, kind, idempotency_key, request_hash, memo, metadata, "
                    "lot_moves, debt_change, created_at) VALUES (?, 'spend', ?, ?, '', '{}', ?, 0, ?)",
                    (
                        txn_id,
                        key,
                        ledger.request_hash("spend", wallet=wallet_id, amount=batch),
                        json.dumps([[lots[wallet_id], -batch]]),
                        now,
                    ),
                )
                await conn.execute(
                    "INSERT INTO ledger_posting (transaction_id, account_id, asset, amount, created_at) "
                    "VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?)",
                    (txn_id, wallet_id, CREDIT, -batch, now, txn_id, usage, CREDIT, batch, now),
                )
                await conn.executemany(
                    "INSERT INTO metering_usage (id, event_id, request_hash, user_id, wallet_id, meter_code, "
                    "quantity, cost, asset, balance_after, transaction_id, metadata, occurred_at, created_at) "
                    "VALUES (?, ?, '', ?, ?, ?, 1, 1, 'credit', 0, ?, '{}', ?, ?)",
                    [
                        (new_id("usg"), f"{key}-{n}", user_id, wallet_id, METER, txn_id, now, now)
                        for n in range(batch)
                    ],
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
        yield charge
    finally:
        await conn.close()


# ---------------------------------------------------------------- HTTP (the load process)


def charged(answer: bytes) -> int:
    """The ``charged`` count of a batch's answer, read from the fields before its per-event ``data`` (parsing
    all of a 1,000-event answer cost the load process, on the server's cores, about as much as the rest of it)."""
    head, found, _rest = answer.partition(b',"data":')
    return int(json.loads(head + b"}" if found else answer)["charged"])


async def _http_load(spec: dict[str, Any]) -> Sample:
    batch: int = spec["batch"]
    prefix: str = spec["key_prefix"]
    clients = [
        KeepAliveClient(spec["base_url"], {"Authorization": f"Bearer {spec['api_key']}"})
        for _ in range(spec["concurrency"])
    ]
    errors: list[str] = []

    async def send(worker: int, sequence: int | str, wallet: str) -> bool:
        tag = f"{prefix}-{worker}-{sequence}"
        if batch == 1:
            status, answer = await clients[worker].post_json("/v1/usage", events(tag, wallet, 1)[0])
            ok = status == 201
        else:
            status, answer = await clients[worker].post_json(
                "/v1/usage/batch", {"events": events(tag, wallet, batch)}
            )
            ok = status == 200 and charged(answer) == batch
        if not ok and len(errors) < 5:
            errors.append(f"{status} {answer[:300].decode(errors='replace')}")
        return ok

    async def spread() -> None:
        """Opens the connections one by one, each while the ones before it are busy with a first request. A
        burst of connections is accepted by whichever server worker wakes first (asyncio accepts every pending
        connection on one wakeup), which left one of the two workers with nearly all the load."""
        first: list[asyncio.Task[bool]] = []
        for worker in range(len(clients)):
            wallet = spec["wallets"][worker % len(spec["wallets"])]
            first.append(asyncio.create_task(send(worker, "connect", wallet)))
            await asyncio.sleep(CONNECT_GAP)
        await asyncio.gather(*first)

    try:
        await spread()
        sample = await drive(
            send,
            wallets=spec["wallets"],
            concurrency=spec["concurrency"],
            seconds=spec.get("seconds"),
            spends=spec.get("requests"),
            warmup=spec.get("warmup", 2),
        )
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    sample.error_samples = errors
    return sample


def http_cell(server: _server.Server, spec: dict[str, Any], timeout: float) -> Sample:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.usage", "--load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    watchdog = threading.Timer(timeout, process.kill)
    watchdog.start()
    try:
        out, err = process.communicate(json.dumps({**spec, "base_url": server.base_url}) + "\n")
    finally:
        watchdog.cancel()
    if process.returncode != 0 or not out.strip().endswith("}"):
        raise RuntimeError(f"the load process failed ({process.returncode}):\n{out}\n{err}")
    return Sample.from_json(json.loads(out.strip().splitlines()[-1]))


# ---------------------------------------------------------------- the run


def _say(config: Config, message: str) -> None:
    if config.progress:
        print(message, file=sys.stderr, flush=True)


async def run(config: Config) -> Report:
    owned_folder: tempfile.TemporaryDirectory[str] | None = None
    if config.database_url is None:
        owned_folder = tempfile.TemporaryDirectory()
        config.database_url = f"sqlite+aiosqlite:///{owned_folder.name}/bench-usage.db"
    engine = "postgresql" if config.is_postgres else "sqlite"
    workers = config.workers or (2 if config.is_postgres else 1)
    report = Report(engine=engine, workers=workers, clients=config.concurrency)
    _say(config, f"migrating {engine} database ...")
    await asyncio.to_thread(upgrade, config.database_url)
    db = open_database(config.database_url)
    try:
        async with db.transaction() as session:
            await ledger.ensure_credit_scale(session, scale=0)
        api_key, wallets = await prepare(db, wallet_count=config.wallets)
        lots = {wallet.id: wallet.lot_id for wallet in wallets}
        wallet_ids = [wallet.id for wallet in wallets]
        async with db.transaction(write=False) as session:
            user_id = (await ledger.get_wallet(session, wallet_ids[0])).user_id or ""
        run_tag = secrets.token_hex(4)
        with contextlib.ExitStack() as stack:
            folder = config.folder or Path(stack.enter_context(tempfile.TemporaryDirectory()))
            server = None
            if "http" in config.paths:
                _say(config, f"starting prepaid serve --workers {workers} ...")
                server = stack.enter_context(
                    _server.serve(config.database_url, workers=workers, folder=folder)
                )
            for batch in config.batches:
                for path in PATHS:
                    if path not in config.paths:
                        continue
                    prefix = f"bench-{run_tag}-{path}-{batch}"
                    _say(config, f"  batch {batch:>5}, {PATH_LABELS[path]} ...")
                    if path == "http":
                        assert server is not None
                        spec = {
                            "api_key": api_key,
                            "wallets": wallet_ids,
                            "concurrency": config.concurrency,
                            "seconds": config.seconds,
                            "requests": config.requests,
                            "warmup": config.warmup,
                            "batch": batch,
                            "key_prefix": prefix,
                        }
                        timeout = (config.seconds or 600) + LOAD_TIMEOUT_SLACK
                        sample = await asyncio.to_thread(http_cell, server, spec, timeout)
                    else:
                        sample = await _raw_cell(config, lots, user_id, batch, prefix, wallet_ids)
                    report.rows.append(Row(batch=batch, path=path, sample=sample))
        _say(config, "checking the books ...")
        async with db.transaction(write=False) as session:
            report.breaches = await ledger.check_invariants(session)
    finally:
        await db.dispose()
        if owned_folder is not None:
            owned_folder.cleanup()
    return report


async def _raw_cell(
    config: Config, lots: dict[str, str], user_id: str, batch: int, prefix: str, wallet_ids: Sequence[str]
) -> Sample:
    assert config.database_url is not None
    raw: contextlib.AbstractAsyncContextManager[Operation]
    if config.is_postgres:
        raw = raw_postgres(
            config.database_url,
            concurrency=config.concurrency,
            lots=lots,
            user_id=user_id,
            batch=batch,
            prefix=prefix,
        )
    else:
        raw = raw_sqlite(
            sqlite_path(config.database_url), lots=lots, user_id=user_id, batch=batch, prefix=prefix
        )
    async with raw as operation:
        return await drive(
            operation,
            wallets=wallet_ids,
            concurrency=config.concurrency,
            seconds=config.seconds,
            spends=config.requests,
            warmup=config.warmup,
        )


def table_lines(report: Report) -> list[str]:
    header = f"{'batch':>6} {'path':<8} {'requests':>9} {'req/s':>9} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'vs raw':>7} {'errors':>6}"
    lines = [header, "-" * len(header)]
    for row in report.rows:
        ratio = report.ratio(row)
        lines.append(
            f"{row.batch:>6} {PATH_LABELS[row.path]:<8} {row.sample.count:>9} {row.sample.per_second:>9.1f} "
            f"{row.events_per_second:>10.0f} {row.sample.percentile_ms(0.5):>8.1f} "
            f"{row.sample.percentile_ms(0.99):>8.1f} {(f'{ratio:.2f}' if ratio else '-'):>7} "
            f"{row.sample.errors:>6}"
        )
    return lines


def print_report(report: Report) -> None:
    print(f"usage events, {report.engine}, {report.workers} server worker(s), {report.clients} clients")
    for line in table_lines(report):
        print(line)
    for row in report.rows:
        for sample in row.sample.error_samples:
            print(f"  {PATH_LABELS[row.path]} batch {row.batch}: {sample}")
    print(
        "prepaid check: clean" if not report.breaches else f"prepaid check: {len(report.breaches)} breaches"
    )


def parse_args(argv: Sequence[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batches", default="1,100,1000")
    parser.add_argument("--wallets", type=int, default=100)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--workers", type=int)
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None or args.requests is not None else 5.0
    return Config(
        database_url=args.database_url,
        seconds=seconds,
        requests=args.requests,
        concurrency=args.concurrency,
        batches=[int(part) for part in args.batches.split(",") if part],
        wallets=args.wallets,
        paths=[part for part in args.paths.split(",") if part],
        workers=args.workers,
    )


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--load"]:
        spec = json.loads(sys.stdin.readline())
        if not str(spec["base_url"]).startswith("http://127.0.0.1:"):
            raise SystemExit("the load process only speaks to 127.0.0.1")
        sample = run_fast(_http_load(spec))
        sys.stdout.write(json.dumps(sample.to_json()) + "\n")
        return
    print_report(run_fast(run(parse_args(argv))))


if __name__ == "__main__":
    main()
