"""The load side of the benchmarks: a closed-loop driver (N workers, each sending its next operation when the
last one answered) shared by every path, and the HTTP load process.

The HTTP load runs in a process of its own, so the client's CPU is not the server's: ``bench/ledger.py`` starts
``python -m bench._load`` and writes the cell's spec as one line of JSON on its stdin. The load process warms
up, prints ``warm`` and waits for a ``go`` line (so the parent reads the server's CPU over the measured part
only), then measures and prints the sample as one line of JSON. Each worker owns one keep-alive connection
(``KeepAliveClient``), so ``--concurrency 32`` means 32 connections, each with one request in flight.

Every loop here is bounded: a cell ends after its ``seconds`` or its ``spends``, whichever it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic_core import to_json

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
    # Operations the CPU readings cover: those done when the first worker ran out of time or budget (when
    # ``on_stop`` fired), plus half of those still in flight then.
    cpu_operations: float | None = None

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
            "cpu_operations": self.cpu_operations,
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
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Sample:
    """Runs ``concurrency`` workers, each calling ``operation`` on a random wallet of ``wallets`` one after the
    other, until ``seconds`` have passed or ``spends`` operations were started. Each worker first makes
    ``warmup`` calls that are not counted (connections opened, statements prepared, caches filled); then
    ``on_start`` is called (to start a CPU reading, say) and the measured part begins. ``on_stop`` is called
    once, when the first worker finds the time or the budget used up: the others are still in flight, so
    every connection is still open (a pool's overflow connections close as the operations drain)."""
    if (seconds is None) == (spends is None):
        raise ValueError("give either seconds or spends")
    if not wallets:
        raise ValueError("no wallets")
    latencies: list[float] = []
    errors = 0
    started_count = 0
    in_flight = 0
    cpu_operations: float | None = None

    async def warm(worker: int) -> None:
        rng = random.Random(worker)
        for i in range(warmup):
            await operation(worker, -1 - i, rng.choice(wallets))

    await asyncio.gather(*(warm(worker) for worker in range(concurrency)))
    if on_start is not None:
        on_start()
    started = time.perf_counter()
    deadline = started + seconds if seconds is not None else float("inf")
    budget = spends if spends is not None else sys.maxsize
    finished = started

    def stop() -> None:
        nonlocal cpu_operations
        if cpu_operations is None:
            cpu_operations = len(latencies) + errors + in_flight / 2
            if on_stop is not None:
                on_stop()

    async def work(worker: int) -> None:
        nonlocal errors, started_count, finished, in_flight
        rng = random.Random(1000 + worker)
        sequence = 0
        while started_count < budget and time.perf_counter() < deadline:
            started_count += 1
            wallet = rng.choice(wallets)
            t0 = time.perf_counter()
            in_flight += 1
            try:
                ok = await operation(worker, sequence, wallet)
            finally:
                in_flight -= 1
            t1 = time.perf_counter()
            sequence += 1
            finished = max(finished, t1)
            if ok:
                latencies.append(t1 - t0)
            else:
                errors += 1
        stop()

    await asyncio.gather(*(work(worker) for worker in range(concurrency)))
    return Sample(
        count=len(latencies),
        seconds=finished - started,
        latencies=latencies,
        errors=errors,
        cpu_operations=cpu_operations,
    )


# ---------------------------------------------------------------- the HTTP load process


class KeepAliveClient:
    """One keep-alive HTTP/1.1 connection to the benchmark's server, posting JSON and reading each answer by its
    ``Content-Length`` (every answer of prepaid and of the floor app carries one; anything else is an error).

    It exists because the load process shares the machine with the server: httpx spent about 1 ms of CPU per
    request here, taken from the cores the server runs on. This spends a fraction of that; the load process's
    CPU is still measured and shown."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        lines = [f"Host: {host_port}", "Content-Type: application/json"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.headers = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post_json(
        self, path: str, payload: dict[str, Any], *, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        body = to_json(payload)  # pydantic's serialiser: half the CPU of json.dumps on a 1,000-event batch
        request = (
            b"POST " + path.encode("latin-1") + b" HTTP/1.1\r\n" + self.headers
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        async with asyncio.timeout(timeout):
            reused = self.writer is not None
            try:
                return await self._exchange(request)
            except (asyncio.IncompleteReadError, ConnectionError) as error:
                # The server closes a keep-alive connection left idle (uvicorn: after 5 s, as while the other
                # clients finish warming up). Sent again once on a new connection, as httpx does; a debit
                # carries its idempotency key, so even a request that was read cannot count twice.
                await self.aclose()
                partial = getattr(error, "partial", b"")
                if not reused or partial:
                    raise
                return await self._exchange(request)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length: int | None = None
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise RuntimeError("an answer with Transfer-Encoding (not read here)")
        if length is None:
            raise RuntimeError("an answer without Content-Length")
        answer = await reader.readexactly(length)
        if close:
            await self.aclose()
        return status, answer

    async def aclose(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _http_load(spec: dict[str, Any]) -> Sample:
    concurrency: int = spec["concurrency"]
    prefix: str = spec["key_prefix"]
    amount: int = spec.get("amount", 1)
    headers = {"Authorization": f"Bearer {spec['api_key']}"}
    clients = [KeepAliveClient(spec["base_url"], headers) for _ in range(concurrency)]
    error_samples: list[str] = []
    cpu_at_start: list[float] = []
    cpu_at_stop: list[float] = []

    def cpu_now() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def warmed_up() -> None:
        """Tell the parent, wait for its ``go`` (it reads the server's CPU meanwhile), start the clock."""
        sys.stdout.write("warm\n")
        sys.stdout.flush()
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("the benchmark did not say go")
        cpu_at_start.append(cpu_now())

    def stopped() -> None:
        """Tell the parent the measured part is over (it reads the server's CPU), before the drain."""
        cpu_at_stop.append(cpu_now())
        sys.stdout.write("stopped\n")
        sys.stdout.flush()

    async def debit(worker: int, sequence: int, wallet: str) -> bool:
        status, answer = await clients[worker].post_json(
            f"/v1/wallets/{wallet}/debits",
            {"amount": amount, "idempotency_key": f"{prefix}-{worker}-{sequence}", "reason": "bench"},
        )
        if status == 201:
            return True
        if len(error_samples) < 5:
            error_samples.append(f"{status} {answer[:300].decode(errors='replace')}")
        return False

    try:
        sample = await drive(
            debit,
            wallets=spec["wallets"],
            concurrency=concurrency,
            seconds=spec.get("seconds"),
            spends=spec.get("spends"),
            warmup=spec.get("warmup", 5),
            on_start=warmed_up,
            on_stop=stopped,
        )
        sample.client_cpu_seconds = cpu_at_stop[0] - cpu_at_start[0]
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))
    sample.error_samples = error_samples
    return sample


def main() -> None:
    """Reads one spec (a line of JSON) from stdin, runs it, writes the sample (JSON) as the last line of
    stdout."""
    spec = json.loads(sys.stdin.readline())
    if not str(spec["base_url"]).startswith("http://127.0.0.1:"):
        raise SystemExit("the load process only speaks to 127.0.0.1")
    sample = run_fast(_http_load(spec))
    sys.stdout.write(json.dumps(sample.to_json()) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
