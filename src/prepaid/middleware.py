"""Pure ASGI middleware: request body limits and content type, the security headers, and unexpected errors."""

from __future__ import annotations

import contextlib
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prepaid.errors import ApiError, DomainError, InvalidRequest
from prepaid.observability import log

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class PayloadTooLarge(DomainError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(DomainError):
    status = 415
    default_code = "unsupported_media_type"


async def send_error(send: Send, error: DomainError) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` (413) and, under ``/v1``, bodies that are not JSON (415).

    The size is checked against ``Content-Length`` up front and against the bytes actually received, so a
    chunked upload cannot slip past it.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        too_large = PayloadTooLarge(f"The request body is larger than {self.max_bytes} bytes.")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await send_error(send, InvalidRequest("Content-Length is not a number.", code="bad_length"))
                return
            if declared > self.max_bytes:
                await send_error(send, too_large)
                return
            has_body = declared > 0
        else:
            has_body = b"chunked" in headers.get(b"transfer-encoding", b"")
        if has_body and scope["path"].startswith("/v1/"):
            media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                await send_error(
                    send,
                    UnsupportedMediaType(
                        "Send the request body as JSON with Content-Type: application/json.",
                        param="Content-Type",
                    ),
                )
                return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                return  # the app turned the refused read into its own error; the answer is 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited_receive, tracking_send)
        if exceeded and not response_started:
            await send_error(send, too_large)


class _BodyTooLarge(Exception):
    pass


class SecurityHeadersMiddleware:
    """CSP, nosniff, frame-ancestors, referrer policy on every answer; HSTS when served over https."""

    CSP = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; object-src 'none'"
    )

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"content-security-policy", self.CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"strict-origin-when-cross-origin"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                if self.https or scope.get("scheme") == "https":
                    extra.append((b"strict-transport-security", b"max-age=63072000; includeSubDomains"))
                headers = list(message.get("headers", []))
                # A route that sets its own policy (the /docs page) keeps it: two CSP headers would both apply.
                present = {name.lower() for name, _value in headers}
                message["headers"] = headers + [(name, value) for name, value in extra if name not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnhandledErrorMiddleware:
    """Innermost: an unexpected exception becomes ``500 api_error`` here, inside the other middleware.

    Starlette would answer it from its outermost layer, past the request id, the security headers and the
    request's log context; here the answer carries all three and the log line names the request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except _BodyTooLarge:
            raise
        except Exception as error:
            log.exception("unhandled_error", error_type=type(error).__name__)
            if response_started:
                raise
            await send_error(send, ApiError("Something went wrong on our side; it is logged."))
