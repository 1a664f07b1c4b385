"""Authenticated request cost: ``GET /v1/me`` with an API key, through the whole ASGI app (middleware, key
lookup, user load, rate limit, serialisation), beside the raw SQL that the same lookup needs, on the same
database in the same run.

    python bench/bench_auth.py [--requests 2000] [--database-url URL]

Without ``--database-url`` it runs on a temporary SQLite file; pass a PostgreSQL URL (an empty database the
benchmark may migrate) to measure that engine too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import text

from prepaid.app import create_app
from prepaid.auth import service as auth_service
from prepaid.migrate import upgrade
from prepaid.settings import Settings


@dataclass
class Result:
    name: str
    engine: str
    count: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def _measure(name: str, engine: str, count: int, call: Callable[[], Awaitable[None]]) -> Result:
    for _ in range(min(50, count)):
        await call()  # warm caches and pools
    latencies = []
    started = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - t0)
    return Result(name, engine, count, time.perf_counter() - started, latencies)


async def run(database_url: str, requests: int) -> list[Result]:
    await asyncio.to_thread(upgrade, database_url)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database_url,
        run_jobs=False,
        rate_limits_enabled=True,
        rate_limit_read="1000000/minute",
        email_backend="memory",
    )
    app = create_app(settings)
    engine = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    async with app.router.lifespan_context(app):
        db = app.state.db
        async with db.transaction() as session:
            user = await auth_service.create_user(
                session,
                email=f"bench-{time.time_ns()}@example.com",
                password="bench-password-123",
                roles=["user"],
            )
            key, secret = await auth_service.create_api_key(
                session,
                actor=auth_service.Principal(user=user),
                name="bench",
                scopes=["balance:read"],
                server=False,
            )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            headers = {"Authorization": f"Bearer {secret}"}

            async def through_server() -> None:
                response = await client.get("/v1/me", headers=headers)
                assert response.status_code == 200, response.text

            async def raw_sql() -> None:
                async with db.read() as session:
                    row = (
                        await session.execute(
                            text(
                                "SELECT k.key_hash, u.id, u.email, u.name, u.active FROM auth_api_key k "
                                "JOIN auth_user u ON u.id = k.user_id WHERE k.prefix = :prefix"
                            ),
                            {"prefix": key.prefix},
                        )
                    ).one()
                    assert row[0] == hashlib.sha256(secret.encode()).hexdigest()

            return [
                await _measure("GET /v1/me (API key), server", engine, requests, through_server),
                await _measure("same lookup, raw SQL", engine, requests, raw_sql),
            ]


def print_table(results: list[Result]) -> None:
    header = f"{'operation':<34} {'engine':<10} {'n':>6} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.name:<34} {r.engine:<10} {r.count:>6} {r.per_second:>9.0f} "
            f"{statistics.median(r.latencies) * 1000:>8.2f} {r.percentile(0.99):>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(folder) / 'bench.db'}"
        print_table(asyncio.run(run(url, args.requests)))


if __name__ == "__main__":
    main()
