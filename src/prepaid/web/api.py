"""Server-rendered pages: sign in and out, the emailed password-reset and email-verification links, and the
account page. Later issues add the buy page and the admin panel on the same mechanisms.

Browsers authenticate with an HttpOnly, SameSite=Lax session cookie. Every form carries a CSRF token: the
session's own once signed in, and before that a random token that must match a ``prepaid_csrf`` cookie
(double submit). Templates autoescape everything, SVG included.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import TypeAdapter, ValidationError

from prepaid.auth import service as auth_service
from prepaid.auth.schemas import Password
from prepaid.deps import SESSION_COOKIE, ReadSession, Session, SettingsDep, credentials_from
from prepaid.errors import DomainError
from prepaid.settings import Settings

router = APIRouter(include_in_schema=False)
NEW_PASSWORD: TypeAdapter[str] = TypeAdapter(Password)  # the same rule as the API's
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(["html", "svg", "xml"], default_for_string=True),
    )
)
FORM_CSRF_COOKIE = "prepaid_csrf"
FormText = Annotated[str, Form(max_length=1000)]


def _secure(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def _safe_next(target: str) -> str:
    """Only same-site paths: never an open redirect."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/account"


def _form_csrf(request: Request) -> str:
    return request.cookies.get(FORM_CSRF_COOKIE) or secrets.token_urlsafe(24)


def _render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200, settings: Settings
) -> HTMLResponse:
    form_csrf = _form_csrf(request)
    response = templates.TemplateResponse(
        request,
        name,
        {"form_csrf": form_csrf, "user": None, "csrf_token": None, **context},
        status_code=status_code,
    )
    response.set_cookie(
        FORM_CSRF_COOKIE, form_csrf, httponly=True, samesite="strict", secure=_secure(settings), path="/"
    )
    return response


def _message(
    request: Request,
    settings: Settings,
    *,
    heading: str,
    message: str,
    tone: str = "error",
    link: str | None = None,
    link_text: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    context = {"heading": heading, "message": message, "tone": tone, "link": link, "link_text": link_text}
    return _render(request, "message.html", context, status_code=status_code, settings=settings)


def _form_csrf_ok(request: Request, presented: str) -> bool:
    expected = request.cookies.get(FORM_CSRF_COOKIE)
    return bool(expected) and hmac.compare_digest(expected or "", presented)


def _refused(request: Request, settings: Settings) -> HTMLResponse:
    return _message(
        request,
        settings,
        heading="Form expired",
        message="This form is no longer valid; reload the page and try again.",
        status_code=403,
    )


async def _signed_in(request: Request, session: Any, settings: Settings) -> auth_service.Principal | None:
    credentials = credentials_from(request)
    if credentials.session_cookie is None:
        return None
    try:
        return await auth_service.resolve_principal(
            session,
            credentials=auth_service.Credentials(session_cookie=credentials.session_cookie),
            settings=settings,
        )
    except DomainError:
        return None


@router.get("/")
async def home(request: Request, session: Session, settings: SettingsDep) -> Response:
    principal = await _signed_in(request, session, settings)
    return RedirectResponse("/account" if principal else "/login", status_code=303)


@router.get("/login")
async def login_page(
    request: Request, settings: SettingsDep, next: Annotated[str, Query(max_length=500)] = "/account"
) -> HTMLResponse:
    return _render(request, "login.html", {"email": "", "next": _safe_next(next)}, settings=settings)


@router.post("/login")
async def login_submit(
    request: Request,
    reading: ReadSession,
    session: Session,
    settings: SettingsDep,
    email: FormText,
    password: FormText,
    csrf_token: FormText = "",  # missing is refused like wrong: 403 by _form_csrf_ok, not a 400
    next: FormText = "/account",
) -> Response:
    if not _form_csrf_ok(request, csrf_token):
        return _refused(request, settings)
    limiter = request.app.state.rate_limiter
    try:
        await limiter.hit("login_ip", f"ip:{request.scope.get('state', {}).get('client_ip', 'unknown')}")
        await limiter.hit_email(email)
        # Checked in a read transaction: the write lock is taken only to store the session.
        user = await auth_service.authenticate(reading, email=email, password=password, settings=settings)
    except DomainError as error:
        return _render(
            request,
            "login.html",
            {"email": email, "next": _safe_next(next), "error": error.message},
            status_code=error.status,
            settings=settings,
        )
    _web_session, token = await auth_service.create_web_session(
        session, user=user, user_agent=request.headers.get("user-agent", ""), settings=settings
    )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.web_session_ttl,
        httponly=True,
        samesite="lax",
        secure=_secure(settings),
        path="/",
    )
    return response


@router.post("/logout")
async def logout_submit(
    request: Request, session: Session, settings: SettingsDep, csrf_token: FormText = ""
) -> Response:
    principal = await _signed_in(request, session, settings)
    if principal is None or principal.web_session is None:
        return RedirectResponse("/login", status_code=303)
    if not auth_service.csrf_matches(principal.web_session, csrf_token):
        return _refused(request, settings)
    await auth_service.end_web_session(session, web_session=principal.web_session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/account")
async def account_page(request: Request, session: Session, settings: SettingsDep) -> Response:
    principal = await _signed_in(request, session, settings)
    if principal is None or principal.web_session is None:
        return RedirectResponse("/login?next=/account", status_code=303)
    return _render(
        request,
        "account.html",
        {"user": principal.user, "csrf_token": principal.web_session.csrf_token},
        settings=settings,
    )


@router.get("/reset-password")
async def reset_password_page(
    request: Request, settings: SettingsDep, token: Annotated[str, Query(max_length=200)] = ""
) -> HTMLResponse:
    return _render(request, "reset_password.html", {"token": token}, settings=settings)


@router.post("/reset-password")
async def reset_password_submit(
    request: Request,
    session: Session,
    settings: SettingsDep,
    token: FormText,
    password: FormText,
    csrf_token: FormText = "",
) -> Response:
    if not _form_csrf_ok(request, csrf_token):
        return _refused(request, settings)
    try:
        NEW_PASSWORD.validate_python(password)
    except ValidationError:
        return _render(
            request,
            "reset_password.html",
            {"token": token, "error": "Choose a password of 10 to 256 characters, not only spaces."},
            status_code=400,
            settings=settings,
        )
    try:
        await auth_service.reset_password(session, token=token, new_password=password)
    except DomainError as error:
        return _message(
            request, settings, heading="Link not valid", message=error.message, status_code=error.status
        )
    return _message(
        request,
        settings,
        heading="Password changed",
        message="Your password is changed.",
        tone="good",
        link="/login",
        link_text="Sign in",
    )


@router.get("/verify-email")
async def verify_email_page(
    request: Request, settings: SettingsDep, token: Annotated[str, Query(max_length=200)] = ""
) -> HTMLResponse:
    return _render(request, "verify_email.html", {"token": token}, settings=settings)


@router.post("/verify-email")
async def verify_email_submit(
    request: Request, session: Session, settings: SettingsDep, token: FormText, csrf_token: FormText = ""
) -> Response:
    if not _form_csrf_ok(request, csrf_token):
        return _refused(request, settings)
    try:
        await auth_service.verify_email(session, token=token)
    except DomainError as error:
        return _message(
            request, settings, heading="Link not valid", message=error.message, status_code=error.status
        )
    return _message(
        request,
        settings,
        heading="Email confirmed",
        message="Thank you: your email address is confirmed.",
        tone="good",
        link="/account",
        link_text="Go to your account",
    )
