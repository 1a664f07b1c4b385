"""The one place errors become HTTP answers: ``{"error": {type, code, message, param}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from prepaid.errors import DomainError, error_body
from prepaid.observability import log

_STATUS_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "unauthenticated"),
    403: ("permission_error", "forbidden"),
    404: ("not_found", "route_not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("conflict", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limited"),
}


# PostgreSQL's character_not_in_repertoire (a NUL byte in text) and untranslatable_character (\u0000 in JSON).
UNSTORABLE_TEXT = frozenset({"22021", "22P05"})


def error_response(error: DomainError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers or None)


def _param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or None


def _validation_message(error: dict[str, Any]) -> tuple[str, str]:
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "malformed_json", "The request body is not valid JSON."
    if kind == "extra_forbidden":
        return "unknown_field", "This field is not accepted here."
    if kind == "missing":
        return "missing_field", "This field is required."
    return "invalid_field", str(error.get("msg", "Invalid value."))


def _allowed_methods(request: Request) -> str:
    """Every method the path answers to. Starlette's 405 names only the first route matching the path, and
    ``GET /v1/me`` and ``PATCH /v1/me`` are two routes."""
    path = request.scope["path"]
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        regex = getattr(route, "path_regex", None)
        if route.methods and regex is not None and regex.match(path):
            methods |= route.methods
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(_request: Request, error: DomainError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        code, message = _validation_message(first)
        param = None if code == "malformed_json" else _param(tuple(first.get("loc", ())))
        if param and code != "malformed_json":
            message = f"{param}: {message}"
        return JSONResponse(error_body("invalid_request_error", code, message, param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        type_, code = _STATUS_TYPES.get(error.status_code, ("invalid_request_error", "invalid_request"))
        message = error.detail if isinstance(error.detail, str) else "Request failed."
        if error.status_code == 404 and message == "Not Found":
            message = "No such route."
        headers = error.headers
        if error.status_code == 405:
            headers = {**(headers or {}), "Allow": _allowed_methods(request)}
        return JSONResponse(error_body(type_, code, message), status_code=error.status_code, headers=headers)

    @app.exception_handler(IntegrityError)
    async def integrity_error(_request: Request, error: IntegrityError) -> JSONResponse:
        # Two requests raced for the same unique thing (say one idempotency key on two wallets at once): the
        # loser changed nothing and may retry.
        log.warning("integrity_conflict", error_type=type(error.orig).__name__)
        return JSONResponse(
            error_body(
                "conflict", "concurrent_conflict", "A concurrent request conflicted with this one; retry it."
            ),
            status_code=409,
        )

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, error: DBAPIError) -> JSONResponse:
        # PostgreSQL cannot store U+0000 in text or JSON: input holding one (in a path, a query, a body) is the
        # caller's mistake, refused like any other; the transaction was rolled back. Never log the parameters.
        if getattr(error.orig, "sqlstate", None) in UNSTORABLE_TEXT:
            return JSONResponse(
                error_body(
                    "invalid_request_error",
                    "invalid_characters",
                    "The request holds a NUL character (U+0000), which cannot be stored; remove it.",
                ),
                status_code=400,
            )
        return await unexpected_error(request, error)

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled_error", error_type=type(error).__name__)
        return JSONResponse(
            error_body("api_error", "internal_error", "Something went wrong on our side; it is logged."),
            status_code=500,
        )
