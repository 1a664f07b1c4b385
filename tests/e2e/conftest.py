"""Real processes for the end-to-end tests: ``prepaid`` run as a subprocess on a free port, spoken to over
real sockets with httpx.

Every wait is bounded polling: a server is ready when ``/healthz`` answers, and a server that exits before
that fails the test with its own output. Servers run in their own process group and are stopped (TERM, then
KILL) with every worker they started.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest

PREPAID = [sys.executable, "-m", "prepaid"]
START_TIMEOUT = 90.0  # a loaded machine (parallel test workers) starts `serve --workers 2` slowly
COMMAND_TIMEOUT = 60.0
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def poll(check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def base_env(**overrides: str) -> dict[str, str]:
    """The parent's environment without any ``PREPAID_*`` (or Prometheus) setting, plus ``overrides``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREPAID_") and key != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update(
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        TERM="dumb",
        PREPAID_SECRET_KEY=secrets.token_urlsafe(48),
        PREPAID_JOB_INTERVAL="0.2",
    )
    env.update(overrides)
    return env


@dataclass
class CommandResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams with every run of whitespace made one space (the console wraps long lines)."""
        return " ".join(f"{self.stdout}\n{self.stderr}".split())


def run_prepaid(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = COMMAND_TIMEOUT
) -> CommandResult:
    """Run a ``prepaid`` command to its end; one still running after ``timeout`` is killed (with anything it
    started) and fails the test."""
    process = subprocess.Popen(
        [*PREPAID, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(
            f"`prepaid {' '.join(args)}` still running after {timeout:.0f} s:\n{stdout}\n{stderr}",
            pytrace=False,
        )
    return CommandResult(process.returncode, stdout, stderr)


@dataclass
class ServerProcess:
    """A running ``prepaid`` process (``serve`` or ``demo``) and what it printed so far."""

    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    cwd: Path
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, *, timeout: float = 10.0, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout, **kwargs)

    def wait_until_ready(self) -> None:
        def ready() -> bool | None:
            if self.process.poll() is not None:
                pytest.fail(
                    f"prepaid exited with {self.process.returncode} before serving:\n{self.log}",
                    pytrace=False,
                )
            try:
                return httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200 or None
            except httpx.TransportError:
                return None

        poll(ready, timeout=START_TIMEOUT, what=f"{self.base_url}/healthz")

    def stop(self) -> None:
        """Stop the whole process group: uvicorn's supervisor and every worker it spawned."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind by a dead supervisor
        self._log.close()


def start_prepaid(*args: str, env: dict[str, str], cwd: Path, port: int, wait: bool = True) -> ServerProcess:
    log_path = cwd / f"prepaid-{port}.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [*PREPAID, *args],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so stop() reaches the workers too
    )
    server = ServerProcess(process=process, port=port, env=env, cwd=cwd, log_path=log_path, _log=log)
    if wait:
        try:
            server.wait_until_ready()
        except BaseException:
            server.stop()
            raise
    return server


@dataclass
class ServerFactory:
    """Starts ``prepaid serve`` on a migrated database with the e2e environment; stops everything after."""

    tmp_path: Path
    started: list[ServerProcess] = field(default_factory=list)

    def env(self, database_url: str, port: int, **overrides: str) -> dict[str, str]:
        return base_env(
            PREPAID_DATABASE_URL=database_url,
            PREPAID_BASE_URL=f"http://127.0.0.1:{port}",
            **overrides,
        )

    def sqlite_url(self, name: str = "prepaid.db") -> str:
        return f"sqlite+aiosqlite:///{self.tmp_path / name}"

    def migrate(self, env: dict[str, str]) -> None:
        result = run_prepaid("migrate", env=env, cwd=self.tmp_path)
        assert result.returncode == 0, result.output

    def serve(
        self, *, database_url: str | None = None, workers: int = 1, migrate: bool = True, **overrides: str
    ) -> ServerProcess:
        port = free_port()
        env = self.env(database_url or self.sqlite_url(), port, **overrides)
        if migrate:
            self.migrate(env)
        server = start_prepaid(
            "serve", "--port", str(port), "--workers", str(workers), env=env, cwd=self.tmp_path, port=port
        )
        self.started.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerFactory]:
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``prepaid serve`` on a fresh, migrated SQLite file, shared by a module's tests (each test signs up
    users of its own)."""
    factory = ServerFactory(tmp_path_factory.mktemp("server"))
    try:
        yield factory.serve()
    finally:
        factory.stop_all()


# ---------------------------------------------------------------- talking to it like a person would


_HIDDEN_INPUT = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r'(\w[\w-]*)="([^"]*)"')


def form_fields(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the form posting to ``action``, as a browser would submit them."""
    match = re.search(rf'<form\b[^>]*action="{re.escape(action)}"[^>]*>(.*?)</form>', page, re.S | re.I)
    assert match, f"no form posting to {action} in:\n{page}"
    fields: dict[str, str] = {}
    for tag in _HIDDEN_INPUT.findall(match.group(1)):
        attributes = {name.lower(): html.unescape(value) for name, value in _ATTRIBUTE.findall(tag)}
        if attributes.get("type") == "hidden" and "name" in attributes:
            fields[attributes["name"]] = attributes.get("value", "")
    return fields


def meta_csrf_token(page: str) -> str:
    match = re.search(r'<meta name="csrf-token" content="([^"]*)">', page)
    assert match, f"no csrf-token meta in:\n{page}"
    return html.unescape(match.group(1))


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """Raw ``Set-Cookie`` headers of one response, by cookie name."""
    found: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0].strip()
        found[name] = header
    return found


def register(client: httpx.Client, *, email: str, password: str, name: str = "") -> dict[str, Any]:
    response = client.post("/v1/auth/register", json={"email": email, "password": password, "name": name})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def api_login(client: httpx.Client, *, email: str, password: str) -> httpx.Response:
    return client.post("/v1/auth/login", json={"email": email, "password": password})


def unique_email(label: str) -> str:
    return f"{label}-{secrets.token_hex(4)}@example.com"
