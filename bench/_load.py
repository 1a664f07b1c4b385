"""The load side of the benchmarks: a closed-loop driver (N workers, each sending its next operation when the
last one answered) shared by every path, and the HTTP load process.

The HTTP load runs in a process of its own, so the client's CPU is not the server's: ``bench/ledger.py`` starts
``python -m bench._load``, writes the cell's spec as JSON on its stdin, and reads the measurement as JSON from
its stdout. Each worker owns one keep-alive ``httpx.AsyncClient`` (one connection), so ``--concurrency 32``
means 32 connections, each with one request in flight.

Every loop here is bounded: a cell ends after its ``seconds`` or its ``spends``, whichever it was given.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

# One operation: (worker number, sequence number within the cell, wallet id) -> whether it succeeded.
Operation = Callable[[int, int, str], Awaitable[bool]]


@dataclass
class Sample:
    """What one cell measured: completed operations, wall time, per-operation latencies (seconds)."""

    count: int
    seconds: float
    latencies: list[float]
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    client_cpu_seconds: float | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "seconds": self.seconds,
            "latencies": self.latencies,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "client_cpu_seconds": self.client_cpu_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sample:
        return cls(**data)


def run_fast(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on uvloop when it is installed: the loop ``prepaid serve`` (uvicorn) runs on, so the
    in-process paths and the server are measured on the same event loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] installs it
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


async def drive(
    operation: Operation,
    *,
    wallets: Sequence[str],
    concurrency: int,
    seconds: float | None = None,
    spends: int | None = None,
    warmup: int = 5,
) -> Sample:
    """Runs ``concurrency`` workers, each calling ``operation`` on a random wallet of ``wallets`` one after the
    other, until ``seconds`` have passed or ``spends`` operations were started. Each worker first makes
    ``warmup`` calls that are not counted (connections opened, statements prepared, caches filled)."""
    if (seconds is None) == (spends is None):
        raise ValueError("give either seconds or spends")
    if not wallets:
        raise ValueError("no wallets")
    latencies: list[float] = []
    errors = 0
    started_count = 0

    async def warm(worker: int) -> None:
        rng = random.Random(worker)
        for i in range(warmup):
            await operation(worker, -1 - i, rng.choice(wallets))

    await asyncio.gather(*(warm(worker) for worker in range(concurrency)))
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else float("inf")
    budget = spends if spends is not None else sys.maxsize
    finished = started

    async def work(worker: int) -> None:
        nonlocal errors, started_count, finished
        rng = random.Random(1000 + worker)
        sequence = 0
        while started_count < budget and time.perf_counter() < deadline:
            started_count += 1
            wallet = rng.choice(wallets)
            t0 = time.perf_counter()
            ok = await operation(worker, sequence, wallet)
            t1 = time.perf_counter()
            sequence += 1
            finished = max(finished, t1)
            if ok:
                latencies.append(t1 - t0)
            else:
                errors += 1

    await asyncio.gather(*(work(worker) for worker in range(concurrency)))
    return Sample(count=len(latencies), seconds=finished - started, latencies=latencies, errors=errors)


# ---------------------------------------------------------------- the HTTP load process


async def _http_load(spec: dict[str, Any]) -> Sample:
    import httpx

    concurrency: int = spec["concurrency"]
    prefix: str = spec["key_prefix"]
    amount: int = spec.get("amount", 1)
    headers = {"Authorization": f"Bearer {spec['api_key']}"}
    clients = [
        httpx.AsyncClient(
            base_url=spec["base_url"],
            headers=headers,
            timeout=60.0,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )
        for _ in range(concurrency)
    ]
    error_samples: list[str] = []

    async def debit(worker: int, sequence: int, wallet: str) -> bool:
        response = await clients[worker].post(
            f"/v1/wallets/{wallet}/debits",
            json={
                "amount": amount,
                "idempotency_key": f"{prefix}-{worker}-{sequence}",
                "reason": "bench",
            },
        )
        if response.status_code == 201:
            return True
        if len(error_samples) < 5:
            error_samples.append(f"{response.status_code} {response.text[:300]}")
        return False

    try:
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        sample = await drive(
            debit,
            wallets=spec["wallets"],
            concurrency=concurrency,
            seconds=spec.get("seconds"),
            spends=spec.get("spends"),
            warmup=spec.get("warmup", 5),
        )
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    sample.error_samples = error_samples
    sample.client_cpu_seconds = (cpu_after.ru_utime - cpu_before.ru_utime) + (
        cpu_after.ru_stime - cpu_before.ru_stime
    )
    return sample


def main() -> None:
    """Reads one spec (JSON) from stdin, runs it, writes the sample (JSON) as the last line of stdout."""
    spec = json.loads(sys.stdin.read())
    if not str(spec["base_url"]).startswith("http://127.0.0.1:"):
        raise SystemExit("the load process only speaks to 127.0.0.1")
    sample = run_fast(_http_load(spec))
    sys.stdout.write(json.dumps(sample.to_json()) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
