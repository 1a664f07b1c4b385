"""Logs, request ids and Prometheus metrics.

Every log line carries the request id, which also goes back in ``X-Request-Id``. Log lines name the method,
the route and the status, never headers or bodies, so no secret, password or token can reach a log.
With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (``prepaid serve`` does) and ``/metrics``
aggregates them.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
import time
from contextvars import ContextVar
from typing import Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_request_context: ContextVar[dict[str, str] | None] = ContextVar("prepaid_request_context", default=None)
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

HTTP_REQUESTS = Counter(
    "prepaid_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "prepaid_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def request_context() -> dict[str, str]:
    return _request_context.get() or {}


def configure_logging(*, json_logs: bool, level: int = logging.INFO) -> None:
    colors = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=colors)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


log = structlog.get_logger("prepaid")


def metrics_payload() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class RequestContextMiddleware:
    """Request id, client address, one access-log line, and the request metrics."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.trusted_proxies = trusted_proxies

    def _client_ip(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        client = scope.get("client")
        peer = client[0] if client else "unknown"
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded and peer in self.trusted_proxies:
            return forwarded.decode("latin-1").split(",")[0].strip()
        return str(peer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _REQUEST_ID_PATTERN.match(incoming) else "req_" + secrets.token_hex(12)
        client_ip = self._client_ip(scope, headers)
        scope.setdefault("state", {})["client_ip"] = client_ip
        token = _request_context.set({"request_id": request_id, "client_ip": client_ip})
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        recorded = False

        def record(status: int) -> None:
            """Counted when the answer starts, so a client that has its answer finds it in /metrics."""
            nonlocal recorded
            recorded = True
            elapsed = time.perf_counter() - started
            route_path = getattr(scope.get("route"), "path", None) or "unmatched"
            HTTP_REQUESTS.labels(scope["method"], route_path, str(status)).inc()
            HTTP_LATENCY.labels(scope["method"], route_path).observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                route=route_path,
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if scope["type"] == "http":
                    record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http" and not recorded:
                record(500)
            structlog.contextvars.unbind_contextvars("request_id")
            _request_context.reset(token)
