"""Domain errors and the one API error object they become.

Services raise a ``DomainError`` subclass; ``app.py`` installs the handlers below, which turn it (and
validation errors, unknown routes, and anything unexpected) into::

    {"error": {"type": ..., "code": ..., "message": ..., "param": ...}}
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    default_code: ClassVar[str] = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return error_body(self.type, self.code, self.message, self.param, **self.extra)


def error_body(type_: str, code: str, message: str, param: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"error": {"type": type_, "code": code, "message": message, "param": param, **extra}}


class InvalidRequest(DomainError):
    pass


class AuthenticationError(DomainError):
    status = 401
    type = "authentication_error"
    default_code = "unauthenticated"

    def __init__(self, message: str = "Authentication required.", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class PermissionDenied(DomainError):
    status = 403
    type = "permission_error"
    default_code = "forbidden"


class NotFound(DomainError):
    status = 404
    type = "not_found"
    default_code = "resource_missing"


class Conflict(DomainError):
    status = 409
    type = "conflict"
    default_code = "conflict"


class InsufficientFunds(DomainError):
    status = 402
    type = "insufficient_funds"
    default_code = "insufficient_credits"


class IdempotencyError(DomainError):
    status = 400
    type = "idempotency_error"
    default_code = "idempotency_key_reused"


class RateLimited(DomainError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limited"

    def __init__(self, retry_after: int, message: str = "Too many requests; try again later.") -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class GatewayError(DomainError):
    status = 502
    type = "gateway_error"
    default_code = "gateway_unavailable"


class ApiError(DomainError):
    status = 500
    type = "api_error"
    default_code = "internal_error"
