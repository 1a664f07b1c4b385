"""Dependencies as ``Annotated`` aliases: ``Session``, ``Principal``, ``CurrentUser``, ``Admin``, scoped keys.

The request owns the transaction: ``Session`` opens one unit of work per request and commits it when the
route returns, before the response is sent, so a client never sees success for a change that did not commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth import service as auth_service
from prepaid.auth.models import User
from prepaid.db import Database
from prepaid.errors import AuthenticationError, PermissionDenied
from prepaid.pagination import DEFAULT_LIMIT, MAX_LIMIT, PageParams
from prepaid.ratelimit import RateLimiter
from prepaid.settings import Settings

SESSION_COOKIE = "prepaid_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


# Dependencies are ``async def`` even when they do not await: FastAPI runs a plain ``def`` in a thread pool.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    db = get_database(request)
    async with db.transaction(write=request.method not in SAFE_METHODS) as session:
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with get_database(request).transaction(write=False) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]
# A read-only transaction beside the request's own, for slow checks (argon2) that must not hold the write lock.
ReadSession = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


def credentials_from(request: Request) -> auth_service.Credentials:
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    return auth_service.Credentials(
        bearer=bearer,
        api_key=request.headers.get("x-api-key") or None,
        session_cookie=request.cookies.get(SESSION_COOKIE) or None,
    )


async def optional_principal(request: Request, session: Session) -> auth_service.Principal | None:
    # The settings are read here rather than through a dependency: this runs on every /v1 call.
    principal = await auth_service.resolve_principal(
        session, credentials=credentials_from(request), settings=request.app.state.settings
    )
    if principal is not None and principal.web_session is not None and request.url.path.startswith("/v1/"):
        presented = request.headers.get(CSRF_HEADER)
        if not auth_service.csrf_matches(principal.web_session, presented):
            raise PermissionDenied(
                f"Cookie-authenticated API calls must send the {CSRF_HEADER} header.",
                code="csrf_failed",
                param=CSRF_HEADER,
            )
    if principal is not None:
        request.state.principal = principal
    return principal


OptionalPrincipal = Annotated[auth_service.Principal | None, Depends(optional_principal)]


async def require_principal(principal: OptionalPrincipal) -> auth_service.Principal:
    if principal is None:
        raise AuthenticationError()
    return principal


Principal = Annotated[auth_service.Principal, Depends(require_principal)]


async def require_person(principal: Principal) -> auth_service.Principal:
    """A signed-in person (token or browser session); API keys cannot manage accounts or keys."""
    if not principal.is_session:
        raise PermissionDenied("This route needs a signed-in user, not an API key.", code="session_required")
    return principal


Person = Annotated[auth_service.Principal, Depends(require_person)]


async def current_user(principal: Principal) -> User:
    return principal.user


CurrentUser = Annotated[User, Depends(current_user)]


async def require_admin(principal: Principal) -> auth_service.Principal:
    if not principal.is_admin:
        raise PermissionDenied("This route is for admins.", code="admin_required")
    return principal


Admin = Annotated[auth_service.Principal, Depends(require_admin)]


def require_scope(scope: str) -> Callable[[auth_service.Principal], Awaitable[auth_service.Principal]]:
    """A caller holding ``scope``: a person (their role decides), or an API key that carries the scope."""

    async def check(principal: Principal) -> auth_service.Principal:
        if not principal.has_scope(scope):
            raise PermissionDenied(
                f"This API key lacks the {scope} scope.", code="missing_scope", param=scope
            )
        return principal

    return check


UsageWriter = Annotated[auth_service.Principal, Depends(require_scope("usage:write"))]
BalanceReader = Annotated[auth_service.Principal, Depends(require_scope("balance:read"))]
CustomersWriter = Annotated[auth_service.Principal, Depends(require_scope("customers:write"))]
OrdersWriter = Annotated[auth_service.Principal, Depends(require_scope("orders:write"))]


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
    ending_before: Annotated[str | None, Query(max_length=64)] = None,
) -> PageParams:
    return PageParams(limit=limit, starting_after=starting_after, ending_before=ending_before)


Pagination = Annotated[PageParams, Depends(page_params)]


def rate_limit(route_class: str, *, per_ip: bool = False) -> Callable[[Request], Awaitable[None]]:
    """Counts the request against ``route_class`` for the caller (user, key or address); with ``per_ip``, for
    the client address whatever credential it carries (a token of one's own must not lift a per-IP limit)."""

    async def check(request: Request) -> None:
        limiter: RateLimiter = request.app.state.rate_limiter
        principal = None if per_ip else getattr(request.state, "principal", None)
        who = principal.caller_id if principal is not None else f"ip:{client_ip(request)}"
        await limiter.hit(route_class, who)

    return check


def client_ip(request: Request) -> str:
    ip = request.scope.get("state", {}).get("client_ip")
    if ip:
        return str(ip)
    return request.client.host if request.client else "unknown"
