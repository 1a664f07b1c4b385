"""A real ``prepaid serve`` for the benchmarks: ``python -m prepaid serve`` on a free port of 127.0.0.1, in a
process group of its own (so stopping it reaches every uvicorn worker), its output kept in a log file.

Every wait is bounded: the server must answer ``/healthz`` within ``START_TIMEOUT`` seconds or the benchmark
stops with the server's own output.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(database_url: str, port: int, **overrides: str) -> dict[str, str]:
    """The parent's environment without its ``PREPAID_*`` settings, plus the benchmark's.

    Rate limits are off: the benchmark sends tens of thousands of writes a minute with one API key, which
    the default write limit (300/minute per caller) is there to refuse. Jobs run as they would in production.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREPAID_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        PREPAID_DATABASE_URL=database_url,
        PREPAID_SECRET_KEY=secrets.token_urlsafe(48),
        PREPAID_BASE_URL=f"http://127.0.0.1:{port}",
        PREPAID_RATE_LIMITS_ENABLED="false",
    )
    env.update(overrides)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    _log: IO[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prepaid serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prepaid serve did not answer /healthz in {START_TIMEOUT:.0f} s:\n{self.log()}")

    def worker_pids(self) -> list[int]:
        """The processes of the server's group (the supervisor and its workers), from /proc."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError):
                if os.getpgid(int(entry.name)) == self.process.pid:
                    pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind by a dead supervisor
        self._log.close()


@contextlib.contextmanager
def _run(
    command: list[str], *, env: dict[str, str], port: int, folder: Path, cwd: Path, wait: bool
) -> Iterator[Server]:
    log_path = folder / f"server-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Server(process=process, port=port, log_path=log_path, _log=log)
    try:
        if wait:
            server.wait_until_ready()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def serve(
    database_url: str, *, workers: int, folder: Path, wait: bool = True, **overrides: str
) -> Iterator[Server]:
    """``prepaid serve --workers N`` on an already migrated database; stopped (with its workers) on exit.
    With ``wait=False`` the caller waits (``wait_until_ready``), so that several servers start at once."""
    port = free_port()
    command = [sys.executable, "-m", "prepaid", "serve", "--port", str(port), "--workers", str(workers)]
    with _run(
        command,
        env=server_env(database_url, port, **overrides),
        port=port,
        folder=folder,
        cwd=folder,
        wait=wait,
    ) as server:
        yield server


@contextlib.contextmanager
def serve_floor(
    database_url: str,
    *,
    workers: int,
    folder: Path,
    root: Path,
    lots: Path,
    pool: int,
    prefix: str,
    wait: bool = True,
    factory: str = "create_app",
) -> Iterator[Server]:
    """An HTTP floor of ``bench/_floor_app.py`` (``factory``: ``create_app``, or ``create_prepaid_app`` with
    prepaid's settings as ``serve`` gives them) under uvicorn with ``workers`` processes."""
    port = free_port()
    base = (
        server_env(database_url, port, PREPAID_DB_POOL_SIZE=str(pool))
        if factory == "create_prepaid_app"
        else dict(os.environ)
    )
    env = {
        **base,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        "BENCH_FLOOR_DATABASE_URL": database_url,
        "BENCH_FLOOR_LOTS": str(lots),
        "BENCH_FLOOR_POOL": str(pool),
        "BENCH_FLOOR_PREFIX": prefix,
    }
    command = [
        sys.executable, "-m", "uvicorn", f"bench._floor_app:{factory}", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning",
    ]  # fmt: skip
    with _run(command, env=env, port=port, folder=folder, cwd=root, wait=wait) as server:
        yield server
