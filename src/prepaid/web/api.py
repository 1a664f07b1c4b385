"""The account pages: register, sign in and out, and the emailed password-reset and email-verification links.
The shared mechanisms (CSRF, who is signed in, field errors) are in ``web.render``; the buy page, the account
page and the admin panel are in their own modules beside this one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import TypeAdapter, ValidationError

from prepaid.auth import service as auth_service
from prepaid.auth.models import User
from prepaid.auth.schemas import Password, RegisterRequest
from prepaid.deps import SESSION_COOKIE, ReadSession, Session, SettingsDep, client_ip
from prepaid.errors import DomainError
from prepaid.settings import Settings
from prepaid.web.render import (
    FormText,
    domain_errors,
    form_csrf_ok,
    is_secure,
    message,
    refused,
    render,
    safe_next,
    signed_in,
    validation_errors,
)

router = APIRouter(include_in_schema=False)
NEW_PASSWORD: TypeAdapter[str] = TypeAdapter(Password)  # the same rule as the API's


@router.get("/login")
async def login_page(
    request: Request, settings: SettingsDep, next: Annotated[str, Query(max_length=500)] = "/account"
) -> HTMLResponse:
    return render(request, "login.html", {"email": "", "next": safe_next(next)}, settings=settings)


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
    if not form_csrf_ok(request, csrf_token):
        return refused(request, settings)
    limiter = request.app.state.rate_limiter
    try:
        await limiter.hit("login_ip", f"ip:{client_ip(request)}")
        await limiter.hit_email(email)
        # Checked in a read transaction: the write lock is taken only to store the session.
        user = await auth_service.authenticate(reading, email=email, password=password, settings=settings)
    except DomainError as error:
        return render(
            request,
            "login.html",
            {"email": email, "next": safe_next(next), "error": error.message},
            status_code=error.status,
            settings=settings,
        )
    return await _start_session(request, session, settings, user=user, next_page=safe_next(next))


async def _start_session(
    request: Request, session: Session, settings: Settings, *, user: User, next_page: str
) -> Response:
    _web_session, token = await auth_service.create_web_session(
        session, user=user, user_agent=request.headers.get("user-agent", ""), settings=settings
    )
    response = RedirectResponse(next_page, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.web_session_ttl,
        httponly=True,
        samesite="lax",
        secure=is_secure(settings),
        path="/",
    )
    return response


@router.get("/register")
async def register_page(
    request: Request, settings: SettingsDep, next: Annotated[str, Query(max_length=500)] = "/account"
) -> HTMLResponse:
    context = {"email": "", "name": "", "next": safe_next(next)}
    return render(request, "register.html", context, settings=settings)


@router.post("/register")
async def register_submit(
    request: Request,
    session: Session,
    settings: SettingsDep,
    email: FormText = "",
    password: FormText = "",
    name: FormText = "",
    csrf_token: FormText = "",
    next: FormText = "/account",
) -> Response:
    """A new account, signed in at once; errors are shown next to their fields and nothing is created."""
    if not form_csrf_ok(request, csrf_token):
        return refused(request, settings)
    context = {"email": email, "name": name, "next": safe_next(next)}
    try:
        await request.app.state.rate_limiter.hit("auth", f"ip:{client_ip(request)}")
        body = RegisterRequest(email=email, password=password, name=name)
        user = await auth_service.register(
            session, email=body.email, password=body.password, name=body.name, settings=settings
        )
    except ValidationError as error:
        errors = validation_errors(error)
        return render(
            request, "register.html", {**context, "errors": errors}, status_code=400, settings=settings
        )
    except DomainError as error:
        await session.rollback()  # a lost race on the unique email leaves a failed flush: nothing is kept
        errors = domain_errors(error)
        return render(
            request,
            "register.html",
            {**context, "errors": errors},
            status_code=error.status,
            settings=settings,
        )
    return await _start_session(request, session, settings, user=user, next_page=safe_next(next))


@router.post("/logout")
async def logout_submit(
    request: Request, session: Session, settings: SettingsDep, csrf_token: FormText = ""
) -> Response:
    principal = await signed_in(request, session, settings)
    if principal is None or principal.web_session is None:
        return RedirectResponse("/login", status_code=303)
    if not auth_service.csrf_matches(principal.web_session, csrf_token):
        return refused(request, settings)
    await auth_service.end_web_session(session, web_session=principal.web_session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/reset-password")
async def reset_password_page(
    request: Request, settings: SettingsDep, token: Annotated[str, Query(max_length=200)] = ""
) -> HTMLResponse:
    return render(request, "reset_password.html", {"token": token}, settings=settings)


@router.post("/reset-password")
async def reset_password_submit(
    request: Request,
    session: Session,
    settings: SettingsDep,
    token: FormText,
    password: FormText,
    csrf_token: FormText = "",
) -> Response:
    if not form_csrf_ok(request, csrf_token):
        return refused(request, settings)
    try:
        NEW_PASSWORD.validate_python(password)
    except ValidationError:
        return render(
            request,
            "reset_password.html",
            {"token": token, "error": "Choose a password of 10 to 256 characters, not only spaces."},
            status_code=400,
            settings=settings,
        )
    try:
        await auth_service.reset_password(session, token=token, new_password=password)
    except DomainError as error:
        return message(
            request, settings, heading="Link not valid", text=error.message, status_code=error.status
        )
    return message(
        request,
        settings,
        heading="Password changed",
        text="Your password is changed.",
        tone="good",
        link="/login",
        link_text="Sign in",
    )


@router.get("/verify-email")
async def verify_email_page(
    request: Request, settings: SettingsDep, token: Annotated[str, Query(max_length=200)] = ""
) -> HTMLResponse:
    return render(request, "verify_email.html", {"token": token}, settings=settings)


@router.post("/verify-email")
async def verify_email_submit(
    request: Request, session: Session, settings: SettingsDep, token: FormText, csrf_token: FormText = ""
) -> Response:
    if not form_csrf_ok(request, csrf_token):
        return refused(request, settings)
    try:
        await auth_service.verify_email(session, token=token)
    except DomainError as error:
        return message(
            request, settings, heading="Link not valid", text=error.message, status_code=error.status
        )
    return message(
        request,
        settings,
        heading="Email confirmed",
        text="Thank you: your email address is confirmed.",
        tone="good",
        link="/account",
        link_text="Go to your account",
    )
