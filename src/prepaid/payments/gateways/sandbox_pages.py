"""The sandbox gateway's hosted checkout: the pages a buyer sees at ``/sandbox/checkout/{reference}``.

They stand in for Razorpay's hosted checkout, so they are not under ``/v1`` and need no sign-in. The forms are
CSRF-protected per checkout: a random nonce in a SameSite=Strict, HttpOnly cookie (path ``/sandbox/``) and a
token in the form that is the HMAC of that nonce with the checkout's own secret. The card number is read,
checked and dropped here: only its network and last 4 go further, and it is never logged.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.exc import OperationalError

from prepaid.db import Database
from prepaid.money import CURRENCY_MINOR_UNITS, to_display
from prepaid.payments.gateways import sandbox
from prepaid.payments.gateways.sandbox_models import SandboxOrder, SandboxPayment
from prepaid.settings import Settings

router = APIRouter(include_in_schema=False, prefix="/sandbox")
templates = Jinja2Templates(
    env=Environment(
        loader=FileSystemLoader(Path(__file__).parents[2] / "web" / "templates"),
        autoescape=select_autoescape(["html", "svg", "xml"], default_for_string=True),
    )
)
NONCE_COOKIE = "prepaid_sandbox"
FormText = Annotated[str, Form(max_length=300)]


def _config(request: Request) -> sandbox.SandboxConfig:
    settings: Settings = request.app.state.settings
    return sandbox.SandboxConfig.from_settings(settings)


def _db(request: Request) -> Database:
    database: Database = request.app.state.db
    return database


def _amount(order: SandboxOrder) -> str:
    digits = CURRENCY_MINOR_UNITS.get(order.currency, 2)
    return f"{order.currency} {to_display(order.amount, digits):,.{digits}f}"


def _nonce(request: Request) -> str:
    value = request.cookies.get(NONCE_COOKIE, "")
    return value if 20 <= len(value) <= 64 and value.isascii() else secrets.token_urlsafe(24)


def _page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200, nonce: str | None = None
) -> HTMLResponse:
    response = templates.TemplateResponse(request, f"sandbox/{name}", context, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    if nonce is not None:
        settings: Settings = request.app.state.settings
        response.set_cookie(
            NONCE_COOKIE,
            nonce,
            httponly=True,
            samesite="strict",
            secure=settings.base_url.startswith("https://"),
            path="/sandbox/",
        )
    return response


def _message(
    request: Request, heading: str, message: str, *, status_code: int, link: str | None = None
) -> Response:
    context = {"heading": heading, "message": message, "link": link}
    return _page(request, "message.html", context, status_code=status_code)


def _unknown(request: Request) -> Response:
    return _message(
        request, "Checkout not found", "There is no sandbox checkout at this address.", status_code=404
    )


def _busy(request: Request) -> Response:
    return _message(
        request, "Try again", "The sandbox is busy; go back and submit the form again.", status_code=503
    )


def _paid_link(request: Request, order: SandboxOrder, payments: list[SandboxPayment]) -> str | None:
    captured = [payment for payment in payments if payment.status in ("captured", "refunded")]
    return sandbox.callback_url(_config(request), order, captured[0]) if captured else None


def _checkout(
    request: Request,
    order: SandboxOrder,
    *,
    nonce: str,
    status_code: int = 200,
    error: sandbox.CardInputError | None = None,
    method: str = "card",
    values: dict[str, str] | None = None,
) -> Response:
    context = {
        "order": order,
        "amount": _amount(order),
        "csrf_token": sandbox.form_token(order.checkout_secret, nonce),
        "error": error,
        "method": method,
        "values": values or {},
        "test_cards": [
            ("4111 1111 1111 1111", "pays"),
            ("4000 0000 0000 0002", "is declined"),
            ("4000 0025 0000 3155", "asks for an authentication step"),
        ],
    }
    return _page(request, "checkout.html", context, status_code=status_code, nonce=nonce)


@router.get("/checkout/{reference}", response_class=HTMLResponse)
async def checkout_page(request: Request, reference: str) -> Response:
    if not sandbox.REFERENCE.match(reference):
        return _unknown(request)
    found = await sandbox.load_order(_db(request), reference)
    if found is None:
        return _unknown(request)
    order, payments = found
    if order.status == "paid":
        return _message(
            request,
            "Already paid",
            f"This order ({_amount(order)}) is paid.",
            status_code=200,
            link=_paid_link(request, order, payments),
        )
    return _checkout(request, order, nonce=_nonce(request))


@router.post("/checkout/{reference}", response_class=HTMLResponse)
async def checkout_submit(
    request: Request,
    reference: str,
    csrf_token: FormText = "",
    method: FormText = "card",
    card_number: FormText = "",
    card_expiry: FormText = "",
    card_cvc: FormText = "",
    card_name: FormText = "",
    vpa: FormText = "",
) -> Response:
    if not sandbox.REFERENCE.match(reference):
        return _unknown(request)
    found = await sandbox.load_order(_db(request), reference)
    if found is None:
        return _unknown(request)
    order, payments = found
    nonce = request.cookies.get(NONCE_COOKIE)
    if not sandbox.form_token_ok(order.checkout_secret, nonce, csrf_token):
        return _message(
            request,
            "Form expired",
            "This payment form is no longer valid; reload the checkout page and try again.",
            status_code=403,
            link=f"/sandbox/checkout/{order.reference}",
        )
    assert nonce is not None
    if order.status == "paid":
        return _message(
            request,
            "Already paid",
            "This order is paid.",
            status_code=409,
            link=_paid_link(request, order, payments),
        )
    # only what the buyer may see again: never the card number nor the CVC
    kept = {"card_expiry": card_expiry, "card_name": card_name, "vpa": vpa}
    try:
        if method == "card":
            card = sandbox.read_card(
                card_number, card_expiry, card_cvc, card_name, today=datetime.now(UTC).date()
            )
            outcome, upi = card.outcome, None
        elif method == "upi":
            card = None
            outcome, upi = sandbox.read_upi(vpa)
        else:
            raise sandbox.CardInputError("method", "Choose to pay by card or by UPI.")
    except sandbox.CardInputError as error:
        return _checkout(
            request,
            order,
            nonce=nonce,
            status_code=400,
            error=error,
            method=method if method == "upi" else "card",
            values=kept,
        )
    try:
        settled = await sandbox.pay(
            _db(request),
            _config(request),
            reference,
            method="card" if card else "upi",
            outcome=outcome,
            card=card,
            vpa=upi,
        )
    except LookupError:
        return _unknown(request)
    except sandbox.CheckoutClosed as closed:
        return _message(request, "Payment not taken", str(closed), status_code=409)
    except OperationalError:
        return _busy(request)
    return RedirectResponse(settled.redirect_url, status_code=303)


@router.get("/checkout/{reference}/authenticate/{payment_id}", response_class=HTMLResponse)
async def authenticate_page(request: Request, reference: str, payment_id: str) -> Response:
    if not sandbox.REFERENCE.match(reference):
        return _unknown(request)
    found = await sandbox.load_order(_db(request), reference)
    if found is None:
        return _unknown(request)
    order, payments = found
    payment = next((payment for payment in payments if payment.id == payment_id), None)
    if payment is None:
        return _unknown(request)
    if payment.status != "created":
        return _message(
            request, "Nothing to approve", "This payment is not waiting for authentication.", status_code=409
        )
    nonce = _nonce(request)
    context = {
        "order": order,
        "payment": payment,
        "amount": _amount(order),
        "csrf_token": sandbox.form_token(order.checkout_secret, nonce),
    }
    return _page(request, "authenticate.html", context, nonce=nonce)


@router.post("/checkout/{reference}/authenticate/{payment_id}", response_class=HTMLResponse)
async def authenticate_submit(
    request: Request, reference: str, payment_id: str, csrf_token: FormText = "", decision: FormText = ""
) -> Response:
    if not sandbox.REFERENCE.match(reference):
        return _unknown(request)
    found = await sandbox.load_order(_db(request), reference)
    if found is None:
        return _unknown(request)
    order, _payments = found
    if not sandbox.form_token_ok(order.checkout_secret, request.cookies.get(NONCE_COOKIE), csrf_token):
        return _message(
            request,
            "Form expired",
            "This authentication form is no longer valid; reload the page and try again.",
            status_code=403,
        )
    if decision not in ("approve", "deny"):
        return _message(request, "Choose an answer", "Approve or deny the payment.", status_code=400)
    try:
        settled = await sandbox.authenticate(
            _db(request), _config(request), reference, payment_id, approve=decision == "approve"
        )
    except LookupError:
        return _unknown(request)
    except sandbox.CheckoutClosed as closed:
        return _message(request, "Nothing to approve", str(closed), status_code=409)
    except OperationalError:
        return _busy(request)
    return RedirectResponse(settled.redirect_url, status_code=303)
