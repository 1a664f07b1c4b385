"""Typed exceptions for the API error object ``{"error": {"type", "code", "message", "param", ...}}``."""

from __future__ import annotations

from typing import Any


class PrepaidError(Exception):
    """Any failure talking to prepaid. ``error`` is the API error object (empty when there was no answer)."""

    def __init__(
        self, message: str, *, status: int | None = None, error: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error: dict[str, Any] = error or {}

    @property
    def code(self) -> str | None:
        code = self.error.get("code")
        return code if isinstance(code, str) else None

    @property
    def type(self) -> str | None:
        kind = self.error.get("type")
        return kind if isinstance(kind, str) else None

    @property
    def param(self) -> str | None:
        param = self.error.get("param")
        return param if isinstance(param, str) else None


class APIConnectionError(PrepaidError):
    """No answer: the connection failed or timed out (after the retries)."""


class APIError(PrepaidError):
    """The server answered with an error status."""


class InvalidRequest(APIError):
    """400 or 422: the request was refused as it stands."""


class AuthenticationError(APIError):
    """401: no key, or a key that is wrong, revoked or expired."""


class PermissionDenied(APIError):
    """403: the key may not do this."""


class NotFound(APIError):
    """404."""


class Conflict(APIError):
    """409: the resource is not in a state that allows this."""


class InsufficientCredits(APIError):
    """402: not enough credits; nothing was charged. ``available`` is what the wallet had."""

    @property
    def available(self) -> int | None:
        value = self.error.get("available")
        return value if isinstance(value, int) else None


class RateLimited(APIError):
    """429."""


class ServerError(APIError):
    """5xx (after the retries, for requests that may be retried)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    402: InsufficientCredits,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: InvalidRequest,
    429: RateLimited,
}


def error_for(status: int, body: Any) -> APIError:
    """The exception for an error answer: by status, carrying the API error object."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {}
    message = error.get("message") if isinstance(error.get("message"), str) else f"HTTP {status}"
    kind = ServerError if status >= 500 else _BY_STATUS.get(status, APIError)
    return kind(str(message), status=status, error=error)
