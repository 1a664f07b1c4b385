"""The buyer's pages around a gateway's checkout (not under ``/v1``; no sign-in needed):

- ``/orders/{attempt}/return``: where a gateway sends the buyer back (the sandbox by a GET with Razorpay's
  signed fields, Razorpay Checkout by a POST, Stripe Checkout with ``session_id``, Stripe Elements with
  ``payment_intent`` and ``payment_intent_client_secret``). The callback is checked
  against the gateway order id stored with the attempt, then goes through the orders service's verify path
  (which asks the gateway itself: the query string is trusted for nothing but the signature check). The buyer
  is then sent to the order's signed status page.
- ``/orders/{order}/status``: the order's status and, once they land, its credits; while the order is open
  the page polls ``/orders/{order}/status.json`` (plain JS written here), so credits that come with a late
  webhook appear too. Both are reached only through a signed link (the follow link), which shows this order
  and nothing else of the account.
- ``/checkout/{order}``: the signed ``checkout_url`` a bot sends over chat; it opens the gateway's checkout
  (the sandbox's hosted page, Razorpay Checkout's own script, a Stripe Checkout Session, or for a Stripe
  PaymentIntent (a browser's order) Stripe Elements on our page, with Stripe.js from js.stripe.com) and expires
  with the order. A failed or expired order can be tried again from it (a form, with CSRF).
- ``/guest/claim``: a guest's emailed one-time link, to set a password on the account made for their order.

Signed links are ``HMAC-SHA256(key, purpose|subject|expires)`` with a key derived from ``PREPAID_SECRET_KEY``
under a label of their own, so a link for one purpose or order never opens another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import TypeAdapter, ValidationError

from prepaid.auth import service as auth_service
from prepaid.auth.schemas import Password
from prepaid.db import Database, utcnow
from prepaid.deps import SESSION_COOKIE, client_ip, get_database
from prepaid.errors import DomainError
from prepaid.money import CURRENCY_MINOR_UNITS, to_display
from prepaid.payments import service
from prepaid.payments.gateways import Gateway, GatewayError, InvalidSignature
from prepaid.payments.models import PaymentAttempt, PaymentOrder
from prepaid.payments.schemas import OrderRead
from prepaid.settings import Settings

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(Path(__file__).parents[1] / "web" / "templates"),
        autoescape=select_autoescape(["html", "svg", "xml"], default_for_string=True),
    )
)
FOLLOW_TTL = timedelta(days=30)
CSRF_COOKIE = "prepaid_checkout_csrf"
ID = re.compile(r"^[a-z]{3,4}_[0-9A-Z]{26}$")
CALLBACK_FIELDS = (
    "razorpay_payment_id",
    "razorpay_order_id",
    "razorpay_signature",
    "payment_intent",
    "payment_intent_client_secret",
    "session_id",
)
# A callback that names the payment in a way the gateway's check can verify; anything less is not trusted.
PROOF_FIELDS = ("razorpay_signature", "session_id", "payment_intent_client_secret")
FINAL = frozenset(
    {"fulfilled", "flagged", "failed", "expired", "cancelled", "refunded", "partially_refunded"}
)
FINAL |= {"disputed"}
RAZORPAY_SCRIPT = "https://checkout.razorpay.com/v1/checkout.js"
# A page that loads a script from elsewhere: Razorpay Checkout's own, which opens Razorpay's frames.
RAZORPAY_CSP = (
    "default-src 'self'; script-src 'self' https://checkout.razorpay.com; "
    "frame-src https://api.razorpay.com https://checkout.razorpay.com; "
    "connect-src 'self' https://api.razorpay.com https://lumberjack.razorpay.com; img-src 'self' data: https:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)
STRIPE_SCRIPT = "https://js.stripe.com/v3/"  # Stripe requires loading it from there, never bundled
# The Stripe Elements page: the directives Stripe documents for Stripe.js (docs.stripe.com/security/guide, "Content
# Security Policy"): its script and frames from js.stripe.com and its subdomains, 3D Secure frames from
# hooks.stripe.com, its API at api.stripe.com, and Google Maps for its address autocomplete. Stripe.js injects
# style elements, hence 'unsafe-inline' for styles (as on the Razorpay page); scripts stay 'self' plus Stripe.
STRIPE_CSP = (
    "default-src 'self'; script-src 'self' https://js.stripe.com https://*.js.stripe.com "
    "https://maps.googleapis.com; frame-src https://js.stripe.com https://*.js.stripe.com https://hooks.stripe.com; "
    "connect-src 'self' https://api.stripe.com https://maps.googleapis.com; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'; "
    "object-src 'none'"
)
NEW_PASSWORD: TypeAdapter[str] = TypeAdapter(Password)
_LINK_LABEL = b"prepaid checkout links v1"


# ---------------------------------------------------------------- signed links


def _link_key(settings: Settings) -> bytes:
    return hmac.new(settings.secret_key.encode(), _LINK_LABEL, hashlib.sha256).digest()


def sign_link(settings: Settings, purpose: str, subject: str, expires: int) -> str:
    mac = hmac.new(_link_key(settings), f"{purpose}|{subject}|{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def link_ok(
    settings: Settings, purpose: str, subject: str, expires: str, signature: str, *, now: datetime
) -> bool:
    """The link is this server's, for this purpose and subject, and not past its expiry."""
    if not (expires.isdigit() and len(expires) <= 12 and signature.isascii() and len(signature) <= 64):
        return False
    if int(expires) <= now.timestamp():
        return False
    return hmac.compare_digest(sign_link(settings, purpose, subject, int(expires)), signature)


def _base(settings: Settings) -> str:
    return settings.base_url.rstrip("/")


def _signed(settings: Settings, path: str, purpose: str, subject: str, expires: datetime) -> str:
    stamp = int(expires.timestamp())
    query = urlencode({"e": stamp, "s": sign_link(settings, purpose, subject, stamp)})
    return f"{_base(settings)}{path}?{query}"


def checkout_url(settings: Settings, order_id: str, expires_at: datetime) -> str:
    """The order's pay link (for bots to send over chat): valid until the order expires."""
    return _signed(settings, f"/checkout/{order_id}", "checkout", order_id, expires_at)


def with_checkout_url(read: OrderRead, settings: Settings, *, pages: bool = False) -> OrderRead:
    """An order's answer with its ``checkout_url`` while it can be paid through this server's pages. A Stripe
    PaymentIntent gets one only for a caller that pays through them (``pages``: a browser, or a bot's customer),
    where it opens Stripe Elements; an app with a token confirms its PaymentIntent itself with Stripe.js."""
    checkout = read.checkout
    if checkout is None or (checkout.gateway == "stripe" and not checkout.redirect_url and not pages):
        return read
    return read.model_copy(update={"checkout_url": checkout_url(settings, read.id, read.expires_at)})


def status_url(settings: Settings, order_id: str, *, now: datetime | None = None) -> str:
    """The order's follow link: its status page, for ``FOLLOW_TTL``."""
    return _signed(settings, f"/orders/{order_id}/status", "follow", order_id, (now or utcnow()) + FOLLOW_TTL)


# ---------------------------------------------------------------- page helpers


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _gateways(request: Request) -> dict[str, Gateway]:
    gateways: dict[str, Gateway] = getattr(request.app.state, "gateways", {})
    return gateways


def _form_csrf(request: Request) -> str:
    value = request.cookies.get(CSRF_COOKIE, "")
    return value if 20 <= len(value) <= 64 and value.isascii() else secrets.token_urlsafe(24)


def _form_csrf_ok(request: Request, presented: str) -> bool:
    expected = request.cookies.get(CSRF_COOKIE)
    return bool(expected) and bool(presented) and hmac.compare_digest(expected or "", presented)


def _page(request: Request, name: str, context: dict[str, Any], *, status_code: int = 200) -> HTMLResponse:
    settings = _settings(request)
    form_csrf = _form_csrf(request)
    response = templates.TemplateResponse(
        request,
        f"checkout/{name}",
        {
            "user": None,
            "csrf_token": None,
            "form_csrf": form_csrf,
            # Not looked up (these pages serve guests and bots too): the header offers the account, not sign-in.
            "has_session": SESSION_COOKIE in request.cookies,
            **context,
        },
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"  # the signed query string stays on this site
    response.set_cookie(
        CSRF_COOKIE,
        form_csrf,
        httponly=True,
        samesite="strict",
        secure=settings.base_url.startswith("https://"),
        path="/",
    )
    return response


def _message(
    request: Request,
    heading: str,
    message: str,
    *,
    status_code: int = 200,
    tone: str = "error",
    link: str | None = None,
    link_text: str = "",
) -> HTMLResponse:
    context = {"heading": heading, "message": message, "tone": tone, "link": link, "link_text": link_text}
    return _page(request, "message.html", context, status_code=status_code)


def _not_found(request: Request) -> HTMLResponse:
    return _message(request, "Not found", "There is no order at this address.", status_code=404)


def _bad_link(request: Request) -> HTMLResponse:
    return _message(
        request,
        "Link not valid",
        "This link is not valid or has expired. Ask for a new one where you got it.",
        status_code=403,
    )


def _money(amount: int, currency: str) -> str:
    digits = CURRENCY_MINOR_UNITS.get(currency, 2)
    return f"{currency} {to_display(amount, digits):,.{digits}f}"


def _credits(amount: int, scale: int) -> str:
    return f"{to_display(amount, scale):,.{scale}f}" if scale else f"{amount:,}"


def order_view(order: PaymentOrder, *, settings: Settings) -> dict[str, Any]:
    """What the status page and its poll show: this order only, never the account's balance or identity."""
    status = order.status
    credited = status in service.GRANTED
    credits = _credits(order.credits, settings.credit_scale)
    bonus = _credits(order.bonus_credits, settings.credit_scale)
    granted = credits + (f" + {bonus} bonus" if order.bonus_credits else "")
    if credited and status == "fulfilled":
        message = f"Paid. {granted} credits have been added."
    elif credited:
        message = f"Paid; {granted} credits were added (the order is now {status.replace('_', ' ')})."
    elif status == "flagged":
        message = "The payment came in and is being reviewed; the credits follow once it is checked."
    elif status == "failed":
        message = "The payment did not go through" + (
            f": {order.failure_reason}" if order.failure_reason else "."
        )
    elif status == "expired":
        message = "This order expired before it was paid."
    elif status == "cancelled":
        message = "This order was cancelled."
    else:
        message = "Waiting for the payment to be confirmed…"
    return {
        "object": "order_status",
        "order": order.id,
        "status": status,
        "final": status in FINAL,
        "credited": credited,
        "amount": order.amount,
        "currency": order.currency,
        "amount_display": _money(order.amount, order.currency),
        "credits": order.credits,
        "bonus_credits": order.bonus_credits,
        "credits_display": granted,
        "message": message,
    }


async def _load_attempt(db: Database, attempt_id: str) -> PaymentAttempt | None:
    async with db.transaction(write=False) as session:
        return await session.get(PaymentAttempt, attempt_id)


# ---------------------------------------------------------------- the return page


def _callback_fields(values: dict[str, str]) -> dict[str, str]:
    fields = {}
    for name in CALLBACK_FIELDS:
        value = values.get(name)
        if value and len(value) <= 500 and value.isascii() and value.isprintable():
            fields[name] = value
    return fields


@router.api_route("/orders/{attempt_id}/return", methods=["GET", "POST"], response_class=HTMLResponse)
async def return_page(request: Request, attempt_id: str) -> Response:
    """The gateway sends the buyer back here. Razorpay Checkout posts its fields (a cross-site form: the
    signature is the proof, there is no CSRF token to carry); the sandbox and Stripe use the query string."""
    if not ID.match(attempt_id):
        return _not_found(request)
    values = {key: value for key, value in request.query_params.items()}
    if request.method == "POST":
        try:
            form = await request.form(max_files=0, max_fields=20)
        except Exception:  # an unreadable form is just a callback without fields
            form = None
        if form is not None:
            values |= {key: value for key, value in form.items() if isinstance(value, str)}
    settings, db = _settings(request), get_database(request)
    attempt = await _load_attempt(db, attempt_id)
    if attempt is None:
        return _not_found(request)
    fields = _callback_fields(values)
    if not any(name in fields for name in PROOF_FIELDS):
        description = values.get("error[description]", "")[:300]
        declined = bool(values.get("error[code]") or values.get("error[reason]"))  # the gateway refused it
        text = (
            f"The payment did not go through: {description} "
            if description
            else "The payment was not completed. "
        ) + "Open the payment link again to try once more."
        # The page names no order detail (this address is not signed); the links need the buyer signed in.
        context = {"heading": "Payment declined" if declined else "Payment not completed", "message": text}
        links = {
            "link": f"/buy/attempts/{attempt.id}/pay",
            "link_text": "Try again",
            "account_link": True,
        }
        return _page(request, "message.html", {"tone": "error", **context, **links})
    gateway = _gateways(request).get(attempt.gateway)
    if gateway is None or attempt.gateway_order_id is None:
        return _message(
            request, "Cannot check this payment", "This payment cannot be checked here.", status_code=409
        )
    try:
        await request.app.state.rate_limiter.hit("order_verify", f"ip:{client_ip(request)}")
        # Checked here first: the service skips the check for an order already granted.
        gateway.verify_callback(gateway_order_id=attempt.gateway_order_id, fields=fields)
    except InvalidSignature:
        return _message(
            request,
            "Payment not verified",
            "This payment confirmation could not be verified, so nothing was changed.",
            status_code=400,
        )
    except DomainError as error:
        return _message(request, "Try again later", error.message, status_code=error.status)
    try:
        await service.verify_order(
            db, order_id=attempt.order_id, attempt_id=attempt.id, fields=fields, gateways=_gateways(request)
        )
    except GatewayError:
        pass  # the callback verified: the status page follows the order while the webhook or the job settle it
    except DomainError as error:
        return _message(request, "Payment not verified", error.message, status_code=error.status)
    return RedirectResponse(status_url(settings, attempt.order_id), status_code=303)


# ---------------------------------------------------------------- the status page and its poll


async def _followed_order(request: Request, order_id: str, e: str, s: str) -> PaymentOrder | None:
    if not ID.match(order_id) or not link_ok(_settings(request), "follow", order_id, e, s, now=utcnow()):
        return None
    async with get_database(request).transaction(write=False) as session:
        return await session.get(PaymentOrder, order_id)


LinkPart = Annotated[str, Query(max_length=64)]


@router.get("/orders/{order_id}/status", response_class=HTMLResponse)
async def status_page(request: Request, order_id: str, e: LinkPart = "", s: LinkPart = "") -> Response:
    order = await _followed_order(request, order_id, e, s)
    if order is None:
        return _bad_link(request)
    view = order_view(order, settings=_settings(request))
    poll = f"/orders/{order_id}/status.json?{urlencode({'e': e, 's': s})}"
    retry = None
    if order.status in service.RETRYABLE and order.quote_expires_at > utcnow():
        retry = (
            checkout_url(_settings(request), order.id, order.expires_at)
            if order.expires_at > utcnow()
            else None
        )
    return _page(request, "status.html", {"view": view, "poll_url": poll, "retry_url": retry})


@router.get("/orders/{order_id}/status.json")
async def status_json(request: Request, order_id: str, e: LinkPart = "", s: LinkPart = "") -> Response:
    order = await _followed_order(request, order_id, e, s)
    if order is None:
        body = {
            "error": {
                "type": "permission_error",
                "code": "invalid_link",
                "message": "This link is not valid.",
                "param": None,
            }
        }
        return JSONResponse(body, status_code=403, headers={"Cache-Control": "no-store"})
    return JSONResponse(order_view(order, settings=_settings(request)), headers={"Cache-Control": "no-store"})


# ---------------------------------------------------------------- the signed checkout_url


async def _checkout_target(
    request: Request, order_id: str, e: str, s: str
) -> tuple[PaymentOrder, list[PaymentAttempt]] | None:
    if not ID.match(order_id) or not link_ok(_settings(request), "checkout", order_id, e, s, now=utcnow()):
        return None
    async with get_database(request).transaction(write=False) as session:
        order = await session.get(PaymentOrder, order_id)
        if order is None:
            return None
        return order, await service.attempts_of(session, order_id)


def _open_gateway(request: Request, order: PaymentOrder, attempt: PaymentAttempt) -> Response:
    settings = _settings(request)
    if attempt.gateway == "razorpay":
        client = dict(attempt.checkout or {})
        options = {
            "key": client.get("key_id"),
            "order_id": attempt.gateway_order_id,
            "amount": attempt.amount,
            "currency": attempt.currency,
            "name": "prepaid",
            "description": f"{order.plan_code or 'Credits'}: {order.credits} credits",
            "callback_url": service.hosted_return_url(settings, attempt),
            "redirect": True,
        }
        context = {
            "view": order_view(order, settings=settings),
            "options": options,
            "script": RAZORPAY_SCRIPT,
        }
        response = _page(request, "razorpay.html", context)
        response.headers["Content-Security-Policy"] = RAZORPAY_CSP
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups"
        return response
    if attempt.redirect_url:  # the sandbox's hosted page, a Stripe Checkout Session
        return RedirectResponse(attempt.redirect_url, status_code=303)
    if attempt.gateway == "stripe" and (attempt.checkout or {}).get("client_secret"):
        return _stripe_elements(request, order, attempt)
    return _message(
        request,
        "Pay in the app",
        "This order can only be paid from the app that created it.",
        status_code=409,
    )


def elements_return_url(settings: Settings, attempt: PaymentAttempt) -> str:
    """Where Stripe.js sends the buyer after ``confirmPayment``: the attempt's return page, to which Stripe adds
    ``payment_intent``, ``payment_intent_client_secret`` and ``redirect_status``."""
    return f"{_base(settings)}/orders/{attempt.id}/return"


def _stripe_elements(request: Request, order: PaymentOrder, attempt: PaymentAttempt) -> HTMLResponse:
    """The Payment Element for the attempt's PaymentIntent: the publishable key and the client secret (never the
    secret key) in data attributes for ``static/checkout/stripe.js``, under Stripe's documented CSP."""
    settings = _settings(request)
    client = dict(attempt.checkout or {})
    context = {
        "view": order_view(order, settings=settings),
        "script": STRIPE_SCRIPT,
        "publishable_key": str(client.get("publishable_key") or ""),
        "client_secret": str(client.get("client_secret") or ""),
        "return_url": elements_return_url(settings, attempt),
    }
    response = _page(request, "stripe.html", context)
    response.headers["Content-Security-Policy"] = STRIPE_CSP
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups"  # wallets open Stripe popups
    return response


@router.get("/checkout/{order_id}", response_class=HTMLResponse)
async def checkout_page(request: Request, order_id: str, e: LinkPart = "", s: LinkPart = "") -> Response:
    found = await _checkout_target(request, order_id, e, s)
    if found is None:
        return _bad_link(request)
    order, attempts = found
    settings = _settings(request)
    if order.status not in service.UNPAID:
        return RedirectResponse(status_url(settings, order.id), status_code=303)
    if order.status in service.RETRYABLE:
        if order.quote_expires_at <= utcnow():
            return _message(
                request, "Order too old", "This order's price is no longer valid; start a new order."
            )
        context = {
            "view": order_view(order, settings=settings),
            "action": f"/checkout/{order.id}?{urlencode({'e': e, 's': s})}",
        }
        return _page(request, "retry.html", context)
    if order.status == "cancelled" or not attempts:
        return _message(request, "Order closed", "This order can no longer be paid.", status_code=409)
    attempt = attempts[-1]
    if attempt.status not in ("created", "pending") or attempt.gateway_order_id is None:
        return _message(request, "Order closed", "This order can no longer be paid.", status_code=409)
    return _open_gateway(request, order, attempt)


@router.post("/checkout/{order_id}", response_class=HTMLResponse)
async def checkout_retry(
    request: Request,
    order_id: str,
    e: LinkPart = "",
    s: LinkPart = "",
    csrf_token: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Try a failed or expired order again (a new attempt at the same quote), then open its checkout."""
    found = await _checkout_target(request, order_id, e, s)
    if found is None:
        return _bad_link(request)
    if not _form_csrf_ok(request, csrf_token):
        return _message(request, "Form expired", "Reload the page and try again.", status_code=403)
    order, _attempts = found
    if order.status not in service.RETRYABLE:
        return RedirectResponse(f"/checkout/{order.id}?{urlencode({'e': e, 's': s})}", status_code=303)
    try:
        await request.app.state.rate_limiter.hit("order_create", f"ip:{client_ip(request)}")
        await service.retry_order(
            get_database(request),
            order_id=order.id,
            gateway_name=None,
            gateways=_gateways(request),
            settings=_settings(request),
        )
    except DomainError as error:
        return _message(request, "Cannot try again", error.message, status_code=error.status)
    found = await _checkout_target(request, order_id, e, s)
    assert found is not None
    order, attempts = found
    return _open_gateway(request, order, attempts[-1])


# ---------------------------------------------------------------- a guest's claim link


@router.get("/guest/claim", response_class=HTMLResponse)
async def claim_page(request: Request, token: Annotated[str, Query(max_length=200)] = "") -> Response:
    return _page(request, "claim.html", {"token": token})


@router.post("/guest/claim", response_class=HTMLResponse)
async def claim_submit(
    request: Request,
    token: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Set the password of the account made for a guest's order: the emailed one-time link is the proof that
    the buyer owns the address (the same one-time tokens as a password reset: one use, expiring)."""
    if not _form_csrf_ok(request, csrf_token):
        return _message(request, "Form expired", "Reload the page and try again.", status_code=403)
    try:
        NEW_PASSWORD.validate_python(password)
    except ValidationError:
        context = {"token": token, "error": "Choose a password of 10 to 256 characters, not only spaces."}
        return _page(request, "claim.html", context, status_code=400)
    try:
        async with get_database(request).transaction() as session:
            await auth_service.reset_password(session, token=token, new_password=password)
    except DomainError as error:
        return _message(request, "Link not valid", error.message, status_code=error.status)
    return _message(
        request,
        "Account ready",
        "Your password is set: sign in to see your credits.",
        tone="good",
        link="/login",
        link_text="Sign in",
    )
