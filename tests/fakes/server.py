"""A real HTTP server for a fake gateway: a Starlette app under uvicorn in a thread, on 127.0.0.1.

The official SDKs send their real requests to it (pointed at by the API base setting). Every request is
recorded; a test can queue canned failures (``fail_next``) or slow answers (``delay``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Handler = Callable[[Request, "Recorded"], Awaitable[Response]]


@dataclass
class Recorded:
    """One request as the fake server received it."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    basic_auth: tuple[str, str] | None = None
    bearer: str | None = None
    json: Any = None
    form: dict[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class CannedAnswer:
    status: int
    body: bytes
    content_type: str = "application/json"


class FakeApi:
    """State shared by the server thread and the test: every access under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self._canned: list[CannedAnswer] = []
        self._lost: list[CannedAnswer] = []
        self.delay = 0.0

    def fail_next(self, status: int, body: Any = None, *, times: int = 1, raw: bytes | None = None) -> None:
        """Answer the next ``times`` requests with this status and body (JSON, or ``raw`` bytes as HTML)."""
        with self.lock:
            for _ in range(times):
                if raw is not None:
                    self._canned.append(CannedAnswer(status, raw, "text/html"))
                else:
                    self._canned.append(CannedAnswer(status, json.dumps(body).encode()))

    def lose_next_answer(self, status: int = 502) -> None:
        """Process the next request for real, then answer it with an error (the answer was lost on the way):
        what a retry with the same idempotency key must survive."""
        with self.lock:
            self._lost.append(CannedAnswer(status, b"<html><body>502 Bad Gateway</body></html>", "text/html"))

    def calls(self, method: str, path_prefix: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def wrap(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body = await request.body()
            recorded = Recorded(
                method=request.method,
                path=request.url.path,
                query=parse_qsl(request.url.query, keep_blank_values=True),
                headers={key.lower(): value for key, value in request.headers.items()},
                body=body,
            )
            authorization = recorded.header("authorization") or ""
            if authorization.startswith("Basic "):
                user, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
                recorded.basic_auth = (user, password)
            elif authorization.startswith("Bearer "):
                recorded.bearer = authorization[7:]
            content_type = recorded.header("content-type") or ""
            if body and "json" in content_type:
                recorded.json = json.loads(body)
            elif body and "x-www-form-urlencoded" in content_type:
                recorded.form = decode_form(parse_qsl(body.decode(), keep_blank_values=True))
            with self.lock:
                self.requests.append(recorded)
                canned = self._canned.pop(0) if self._canned else None
                delay = self.delay
            if delay:
                await asyncio.sleep(delay)
            if canned is not None:
                return Response(canned.body, status_code=canned.status, media_type=canned.content_type)
            response = await handler(request, recorded)
            with self.lock:
                lost = self._lost.pop(0) if self._lost else None
            if lost is not None:
                return Response(lost.body, status_code=lost.status, media_type=lost.content_type)
            return response

        return endpoint


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``a[b][0][c]=1`` (how the Stripe SDK encodes nested parameters) back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = [key.split("[", 1)[0]] + [part.rstrip("]") for part in key.split("[")[1:]]
        node: Any = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
        # lists arrive as {"0": ..., "1": ...}: turned into lists below
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        converted = {key: _listify(value) for key, value in node.items()}
        if converted and all(key.isdigit() for key in converted):
            return [converted[key] for key in sorted(converted, key=int)]
        return converted
    return node


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


class RunningServer:
    """Starts ``app`` on a free port of 127.0.0.1 in a thread; ``url`` is its base address."""

    def __init__(self, app: Starlette) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> RunningServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake gateway server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
