"""What every server-rendered page shares: the template environment, rendering with the CSRF tokens, who is
signed in, and turning validation and domain errors into messages next to form fields.

Browsers authenticate with an HttpOnly, SameSite=Lax session cookie. Every form carries a CSRF token: the
session's own once signed in (``csrf_token``, also in ``<meta name="csrf-token">`` for the pages' scripts,
which send it as ``X-CSRF-Token`` on cookie-authenticated ``/v1`` calls), and before that a random token that
must match a ``prepaid_csrf`` cookie (double submit). Templates autoescape everything, SVG included.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import AfterValidator, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth import service as auth_service
from prepaid.deps import Session, SettingsDep, credentials_from
from prepaid.errors import DomainError
from prepaid.notify.email import format_credits, format_money
from prepaid.pagination import Page, PageParams
from prepaid.settings import Settings

templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "svg", "xml"], default_for_string=True),
    )
)
templates.env.filters["money"] = format_money  # {{ 450000 | money("INR") }} -> ₹4,500.00
templates.env.filters["credits"] = format_credits  # {{ amount | credits(credit_scale) }}
FORM_CSRF_COOKIE = "prepaid_csrf"
FormText = Annotated[str, Form(max_length=1000)]
FieldErrors = dict[str, str]


def is_secure(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def safe_next(target: str, default: str = "/account") -> str:
    """Only same-site paths: never an open redirect."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return default


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    settings: Settings,
    principal: auth_service.Principal | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """Render a page. With a signed-in ``principal`` the page gets ``user`` and the session's ``csrf_token``;
    every page also gets ``form_csrf`` (the double-submit token of the sign-in forms), ``errors`` (empty) and
    ``credit_scale``."""
    form_csrf = request.cookies.get(FORM_CSRF_COOKIE) or secrets.token_urlsafe(24)
    signed_in: dict[str, Any] = {"user": None, "csrf_token": None, "is_admin": False}
    if principal is not None and principal.web_session is not None:
        signed_in = {
            "user": principal.user,
            "csrf_token": principal.web_session.csrf_token,
            "is_admin": "admin" in principal.user.roles,
        }
    response = templates.TemplateResponse(
        request,
        name,
        {"form_csrf": form_csrf, "errors": {}, "credit_scale": settings.credit_scale, **signed_in, **context},
        status_code=status_code,
    )
    response.set_cookie(
        FORM_CSRF_COOKIE, form_csrf, httponly=True, samesite="strict", secure=is_secure(settings), path="/"
    )
    return response


def message(
    request: Request,
    settings: Settings,
    *,
    heading: str,
    text: str,
    tone: str = "error",
    link: str | None = None,
    link_text: str = "",
    status_code: int = 200,
    principal: auth_service.Principal | None = None,
) -> HTMLResponse:
    context = {"heading": heading, "message": text, "tone": tone, "link": link, "link_text": link_text}
    return render(
        request, "message.html", context, status_code=status_code, settings=settings, principal=principal
    )


def form_csrf_ok(request: Request, presented: str) -> bool:
    """The double-submit check of forms shown before sign-in."""
    expected = request.cookies.get(FORM_CSRF_COOKIE)
    return bool(expected) and hmac.compare_digest(expected or "", presented)


def session_csrf_ok(principal: auth_service.Principal, presented: str) -> bool:
    """The check of forms shown to a signed-in user."""
    return principal.web_session is not None and auth_service.csrf_matches(principal.web_session, presented)


def refused(
    request: Request, settings: Settings, principal: auth_service.Principal | None = None
) -> HTMLResponse:
    return message(
        request,
        settings,
        heading="Form expired",
        text="This form is no longer valid; reload the page and try again.",
        status_code=403,
        principal=principal,
    )


async def signed_in(
    request: Request, session: AsyncSession, settings: Settings
) -> auth_service.Principal | None:
    """The browser session's principal, or None (no cookie, an ended session, a deactivated user)."""
    credentials = credentials_from(request)
    if credentials.session_cookie is None:
        return None
    try:
        principal = await auth_service.resolve_principal(
            session,
            credentials=auth_service.Credentials(session_cookie=credentials.session_cookie),
            settings=settings,
        )
    except DomainError:
        return None
    return principal if principal is not None and principal.web_session is not None else None


def to_login(request: Request) -> RedirectResponse:
    """Send a signed-out visitor to the sign-in page, coming back here afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={safe_next(target)}", status_code=303)


def url_id(text: str) -> str:
    """An id, code or cursor from a page's URL as the database may be asked for it: printable ASCII of at most 64
    characters, else ``-`` (which names nothing), so odd input is "not found" instead of a driver error."""
    return text if 0 < len(text) <= 64 and all("!" <= char <= "~" for char in text) else "-"


# A page route's id in the path or cursor in the query: ``Annotated[UrlId, Path()]``, ``Annotated[UrlId, Query()]``.
UrlId = Annotated[str, AfterValidator(url_id)]
NUMBER_HINT = "Enter a number, such as 12 or 12.50."


def parse_amount(raw: str, digits: int) -> int:
    """Decimal text as people type it (``1,299.50``) as whole units of 10^-digits, by integer arithmetic only
    (never a float, never a rounding context). ValueError, with a sentence for the person, when it is not one."""
    text = raw.strip().replace(",", "").replace("_", "")
    if not text or len(text) > 64 or not text.isascii():
        raise ValueError(NUMBER_HINT)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(NUMBER_HINT) from None
    if not number.is_finite() or number.adjusted() > 20:
        raise ValueError(NUMBER_HINT)
    sign, figures, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    coefficient = int("".join(map(str, figures)))
    shift = exponent + digits
    if coefficient == 0:
        return 0
    if shift >= 0:
        units = coefficient * 10**shift
    else:
        rest = 1 if -shift > len(figures) else coefficient % 10**-shift
        if rest:
            raise ValueError(f"Enter at most {digits} decimal places." if digits else "Enter a whole number.")
        units = coefficient // 10**-shift
    return int(-units if sign else units)


@dataclass(frozen=True)
class Pager:
    """The links to the newer and the older page of a newest-first list (None where there is none)."""

    newer: str | None = None
    older: str | None = None


def page_params(starting_after: str | None, ending_before: str | None, limit: int) -> PageParams:
    """A page after or before a cursor (both sent: the older page, as a pager's link never sends both)."""
    if starting_after and ending_before:
        ending_before = None
    return PageParams(limit=limit, starting_after=starting_after or None, ending_before=ending_before or None)


def pager(base: Mapping[str, str], page: Page[Any], params: PageParams, path: str = "") -> Pager:
    """Links around ``page`` keeping the query ``base`` (the list's filters), by the API's cursors; relative to
    the page itself unless ``path`` names it."""
    if not page.data:
        return Pager()
    backwards = params.ending_before is not None
    has_newer = page.has_more if backwards else params.starting_after is not None
    has_older = True if backwards else page.has_more
    return Pager(
        newer=f"{path}?{urlencode({**base, 'ending_before': page.data[0].id})}" if has_newer else None,
        older=f"{path}?{urlencode({**base, 'starting_after': page.data[-1].id})}" if has_older else None,
    )


def validation_errors(error: ValidationError) -> FieldErrors:
    """Pydantic's errors keyed by the top-level field they concern, each a sentence for a person."""
    errors: FieldErrors = {}
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "form"
        text = item["msg"].removeprefix("Value error, ")
        errors.setdefault(field, text[:1].upper() + text[1:])
    return errors


def domain_errors(error: DomainError) -> FieldErrors:
    """A domain error shown next to the field it names (``param``), or at the top of the form."""
    return {error.param or "form": error.message}


# ---------------------------------------------------------------- page dependencies


class PageInterrupt(Exception):
    """Raised by a page dependency to answer with ``response`` instead of the page (a redirect to sign in, a
    refusal); the request's transaction is rolled back."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


async def _page_user(request: Request, session: Session, settings: SettingsDep) -> auth_service.Principal:
    principal = await signed_in(request, session, settings)
    if principal is None:
        raise PageInterrupt(to_login(request))
    return principal


PageUser = Annotated[auth_service.Principal, Depends(_page_user)]


async def _page_admin(request: Request, principal: PageUser, settings: SettingsDep) -> auth_service.Principal:
    if "admin" not in principal.user.roles:
        raise PageInterrupt(
            message(
                request,
                settings,
                heading="Admins only",
                text="This page is for the shop's admins.",
                status_code=403,
                principal=principal,
            )
        )
    return principal


PageAdmin = Annotated[auth_service.Principal, Depends(_page_admin)]


async def _form_user(
    request: Request, principal: PageUser, settings: SettingsDep, csrf_token: FormText = ""
) -> auth_service.Principal:
    if not session_csrf_ok(principal, csrf_token):
        raise PageInterrupt(refused(request, settings, principal))
    return principal


async def _form_admin(
    request: Request, principal: PageAdmin, settings: SettingsDep, csrf_token: FormText = ""
) -> auth_service.Principal:
    if not session_csrf_ok(principal, csrf_token):
        raise PageInterrupt(refused(request, settings, principal))
    return principal


# A signed-in user's form post, its ``csrf_token`` field checked against the session's (403 page otherwise).
FormUser = Annotated[auth_service.Principal, Depends(_form_user)]
FormAdmin = Annotated[auth_service.Principal, Depends(_form_admin)]


def install_page_handlers(app: FastAPI) -> None:
    async def answer(_request: Request, interrupt: Exception) -> Response:
        assert isinstance(interrupt, PageInterrupt)
        return interrupt.response

    app.add_exception_handler(PageInterrupt, answer)
