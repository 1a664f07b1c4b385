"""The built-in ``sandbox`` gateway: a simulated external payment service that lives inside the server.

It behaves like Razorpay, so the orders code meets the same shapes it meets in production:
- ``create_payment`` makes a sandbox order (``order_sbx_...``, amount, currency, receipt = our reference) and
  answers a checkout whose ``redirect_url`` is the hosted page ``{PREPAID_BASE_URL}/sandbox/checkout/{reference}``
  (``sandbox_pages.py``), where the buyer pays with a test card or a UPI id.
- After a payment settles the page sends the browser back to the return URL with Razorpay's callback fields
  (``razorpay_payment_id``, ``razorpay_order_id``, ``razorpay_signature`` = HMAC-SHA256 hex of
  ``"order_id|payment_id"`` with the sandbox key secret), or Razorpay's ``error[...]`` fields when it failed.
- It queues Razorpay-shaped webhooks (``payment.captured`` + ``order.paid``, ``payment.failed``,
  ``refund.processed``) that a runner job POSTs to ``{PREPAID_BASE_URL}/v1/webhooks/sandbox`` signed with
  ``X-Razorpay-Signature`` and named by ``x-razorpay-event-id``, retried with backoff until a 2xx. With
  ``PREPAID_SANDBOX_CHAOS`` each settlement's webhooks go out in reverse order and the first one twice.

It keeps its state in its own tables (``sandbox_models.py``) and opens its own transactions, independent of the
request that calls it, as a remote service would be. Its secrets are derived from ``PREPAID_SECRET_KEY`` with
fixed labels and never logged. Checking callbacks and webhooks, and turning its entities into prepaid's values,
is the Razorpay adapter's own code (one piece of code for one job): the sandbox speaks Razorpay's format.

Its writes (``create_payment``, ``refund``, the pages) open their own write transactions: on SQLite, which has
one writer at a time, call them while holding no write transaction (the orders code commits before and after
each gateway call); a call that cannot get the write lock is a retryable ``GatewayUnavailable``, never a hang.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.db import Database, open_database, utcnow
from prepaid.errors import InvalidRequest
from prepaid.ids import new_id
from prepaid.money import CURRENCY_MINOR_UNITS
from prepaid.payments.gateways.base import (
    GatewayCheckout,
    GatewayEvent,
    GatewayOrder,
    GatewayRefund,
    GatewayRefused,
    GatewayUnavailable,
    VerifiedCallback,
)
from prepaid.payments.gateways.razorpay import RazorpayGateway
from prepaid.payments.gateways.sandbox_models import (
    SandboxOrder,
    SandboxPayment,
    SandboxRefund,
    SandboxWebhook,
)
from prepaid.settings import Settings

log = structlog.get_logger("prepaid.payments.sandbox")

NAME = "sandbox"
KEY_ID = "rzp_test_sandbox"
ACCOUNT_ID = "acc_sandbox"
# Like Razorpay ("The amount must be at least INR 1.00"): one major unit of every currency prepaid knows.
MINIMUM_CHARGE: Mapping[str, int] = {
    currency: 10**digits for currency, digits in sorted(CURRENCY_MINOR_UNITS.items())
}
REFERENCE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")  # a Razorpay receipt: at most 40 characters
_KEY_SECRET_LABEL = b"prepaid sandbox gateway key secret v1"
_WEBHOOK_SECRET_LABEL = b"prepaid sandbox gateway webhook secret v1"
_CSRF_LABEL = b"prepaid sandbox checkout form v1"

# Webhook delivery: a claimed delivery is leased (not retaken by another process) while it is being sent;
# a failure is retried after 2 s, 4 s, 8 s ... at most 10 min apart, for a day (as Razorpay does), then
# given up.
WEBHOOK_TIMEOUT = 10.0
WEBHOOK_LEASE = timedelta(seconds=60)
WEBHOOK_BACKOFF_BASE = 2.0
WEBHOOK_BACKOFF_MAX = 600.0
WEBHOOK_GIVE_UP_AFTER = timedelta(hours=24)
WEBHOOK_BATCH = 50
_LOCKED = "The sandbox could not write now (the database is busy); try again."


# --- configuration and secrets -------------------------------------------------------------------------------


def _derive(secret_key: str, label: bytes) -> str:
    return hmac.new(secret_key.encode(), label, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SandboxConfig:
    base_url: str
    key_secret: str
    webhook_secret: str
    chaos: bool = False
    key_id: str = KEY_ID

    @classmethod
    def from_settings(cls, settings: Settings) -> SandboxConfig:
        return cls(
            base_url=settings.base_url.rstrip("/"),
            key_secret=_derive(settings.secret_key, _KEY_SECRET_LABEL),
            webhook_secret=_derive(settings.secret_key, _WEBHOOK_SECRET_LABEL),
            chaos=settings.sandbox_chaos,
        )

    def __repr__(self) -> str:  # never the secrets
        return f"SandboxConfig(base_url={self.base_url!r}, chaos={self.chaos})"

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}/v1/webhooks/{NAME}"

    def checkout_url(self, reference: str) -> str:
        return f"{self.base_url}/sandbox/checkout/{reference}"

    def default_return_url(self, reference: str) -> str:
        return f"{self.base_url}/orders/{reference}/return"

    def payment_signature(self, order_id: str, payment_id: str) -> str:
        return hmac.new(
            self.key_secret.encode(), f"{order_id}|{payment_id}".encode(), hashlib.sha256
        ).hexdigest()

    def webhook_signature(self, body: bytes) -> str:
        return hmac.new(self.webhook_secret.encode(), body, hashlib.sha256).hexdigest()

    def razorpay(self) -> RazorpayGateway:
        """The Razorpay adapter holding the sandbox's secrets: it verifies and normalises exactly as it does for
        Razorpay. It never sends a request (its API base is unroutable)."""
        return RazorpayGateway(
            key_id=self.key_id,
            key_secret=self.key_secret,
            webhook_secret=self.webhook_secret,
            api_base="http://sandbox.invalid",
        )


def form_token(checkout_secret: str, browser_nonce: str) -> str:
    """The checkout form's CSRF token: bound to this checkout (its secret) and to this browser (a nonce in a
    SameSite=Strict cookie), so neither another site nor another browser can post the form."""
    message = _CSRF_LABEL + b"|" + browser_nonce.encode()
    return hmac.new(checkout_secret.encode(), message, hashlib.sha256).hexdigest()


def form_token_ok(checkout_secret: str, browser_nonce: str | None, presented: str) -> bool:
    if not browser_nonce or not presented:
        return False
    return hmac.compare_digest(form_token(checkout_secret, browser_nonce), presented)


# --- test cards and UPI ids (pure) ----------------------------------------------------------------------------

Outcome = Literal["captured", "failed", "authenticate"]

TEST_CARDS: Mapping[str, Outcome] = {
    "4111111111111111": "captured",
    "4000000000000002": "failed",
    "4000002500003155": "authenticate",
}

# error_reason -> (error_code, error_source, error_step, error_description), Razorpay's vocabulary
FAILURES: Mapping[str, tuple[str, str, str, str]] = {
    "payment_declined": (
        "BAD_REQUEST_ERROR",
        "bank",
        "payment_authorization",
        "Your payment was declined by the bank (sandbox test card 4000 0000 0000 0002).",
    ),
    "authentication_failed": (
        "BAD_REQUEST_ERROR",
        "customer",
        "payment_authentication",
        "The card holder did not approve the payment at the authentication step.",
    ),
    "upi_payment_failed": (
        "BAD_REQUEST_ERROR",
        "customer",
        "payment_authorization",
        "The UPI payment was declined (sandbox UPI id failure@...).",
    ),
}


class CardInputError(ValueError):
    """A card or UPI field the buyer must correct; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CardEntry:
    outcome: Outcome
    network: str
    last4: str


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_network(digits: str) -> str:
    if digits.startswith("4"):
        return "Visa"
    if digits[:2] in {"51", "52", "53", "54", "55"} or "2221" <= digits[:4] <= "2720":
        return "MasterCard"
    if digits[:2] in {"34", "37"}:
        return "American Express"
    if digits.startswith(("60", "65", "81", "82", "508")):
        return "RuPay"
    return "Unknown"


_EXPIRY = re.compile(r"^(\d{1,2})\s*/\s*(\d{2}|\d{4})$")


def read_card(number: str, expiry: str, cvc: str, name: str, *, today: date) -> CardEntry:
    """Check a card form and say what the sandbox does with it. The number itself goes no further than this
    function: only its network and last 4 are kept."""
    digits = re.sub(r"[\s-]", "", number)
    if not digits:
        raise CardInputError("card_number", "Enter the card number.")
    if not digits.isdigit() or not 12 <= len(digits) <= 19 or not luhn_ok(digits):
        raise CardInputError("card_number", "The card number is not valid.")
    outcome = TEST_CARDS.get(digits)
    if outcome is None:
        raise CardInputError(
            "card_number",
            "The sandbox takes only its test cards: 4111 1111 1111 1111 (pays), 4000 0000 0000 0002 "
            "(declined), 4000 0025 0000 3155 (asks for authentication).",
        )
    match = _EXPIRY.match(expiry.strip())
    if match is None:
        raise CardInputError("card_expiry", "Enter the expiry date as MM/YY.")
    month, year = int(match.group(1)), int(match.group(2))
    if year < 100:
        year += 2000
    if not 1 <= month <= 12:
        raise CardInputError("card_expiry", "The expiry month must be between 01 and 12.")
    if (year, month) < (today.year, today.month):
        raise CardInputError("card_expiry", "The card has expired.")
    if not re.fullmatch(r"\d{3,4}", cvc.strip()):
        raise CardInputError("card_cvc", "The CVC is the 3 or 4 digits on the back of the card.")
    if not name.strip():
        raise CardInputError("card_name", "Enter the name on the card.")
    if len(name.strip()) > 100:
        raise CardInputError("card_name", "The name on the card is at most 100 characters.")
    return CardEntry(outcome=outcome, network=card_network(digits), last4=digits[-4:])


_VPA = re.compile(r"^[A-Za-z0-9._-]{2,256}@[A-Za-z][A-Za-z0-9]{1,63}$")


def read_upi(vpa: str) -> tuple[Outcome, str]:
    """A UPI id (``name@bank``): ``failure@...`` fails, any other well-formed id pays."""
    value = vpa.strip()
    if not value:
        raise CardInputError("vpa", "Enter a UPI id, such as success@razorpay.")
    if not _VPA.match(value):
        raise CardInputError("vpa", "A UPI id looks like name@bank, such as success@razorpay.")
    outcome: Outcome = "failed" if value.split("@", 1)[0].lower() == "failure" else "captured"
    return outcome, value


# --- Razorpay-shaped entities ---------------------------------------------------------------------------------


def _ts(value: datetime) -> int:
    return int(value.timestamp())


def order_entity(order: SandboxOrder) -> dict[str, Any]:
    return {
        "id": order.id,
        "entity": "order",
        "amount": order.amount,
        "amount_paid": order.amount_paid,
        "amount_due": max(order.amount - order.amount_paid, 0),
        "currency": order.currency,
        "receipt": order.reference,
        "offer_id": None,
        "status": order.status,
        "attempts": order.attempts,
        "notes": {"order_id": order.reference},
        "created_at": _ts(order.created_at),
    }


def payment_entity(payment: SandboxPayment, order: SandboxOrder) -> dict[str, Any]:
    failure = FAILURES.get(payment.error_reason or "")
    card: dict[str, Any] | None = None
    if payment.method == "card":
        card = {
            "id": "card_" + payment.id.removeprefix("pay_"),
            "entity": "card",
            "name": None,  # the sandbox does not keep the card holder's name
            "last4": payment.card_last4,
            "network": payment.card_network,
            "type": "credit",
            "issuer": None,
            "international": False,
            "emi": False,
        }
    refund_status = None
    if payment.amount_refunded:
        refund_status = "full" if payment.amount_refunded >= payment.amount else "partial"
    return {
        "id": payment.id,
        "entity": "payment",
        "amount": payment.amount,
        "currency": payment.currency,
        "status": payment.status,
        "order_id": order.id,
        "invoice_id": None,
        "international": False,
        "method": payment.method,
        "amount_refunded": payment.amount_refunded,
        "refund_status": refund_status,
        "captured": payment.status in ("captured", "refunded"),
        "description": order.description,
        "card_id": card["id"] if card else None,
        "card": card,
        "bank": None,
        "wallet": None,
        "vpa": payment.vpa,
        "email": order.customer_email or "",
        "contact": "",
        "notes": {"order_id": order.reference},
        "fee": None,
        "tax": None,
        "error_code": payment.error_code,
        "error_description": payment.error_description,
        "error_source": failure[1] if failure else None,
        "error_step": failure[2] if failure else None,
        "error_reason": payment.error_reason,
        "acquirer_data": {},
        "created_at": _ts(payment.created_at),
    }


def refund_entity(refund: SandboxRefund) -> dict[str, Any]:
    notes: dict[str, str] = {"refund_id": refund.idempotency_key}
    if refund.reason:
        notes["reason"] = refund.reason
    return {
        "id": refund.id,
        "entity": "refund",
        "amount": refund.amount,
        "currency": refund.currency,
        "payment_id": refund.payment_id,
        "notes": notes,
        "receipt": None,
        "status": refund.status,
        "speed_processed": "normal",
        "speed_requested": "normal",
        "created_at": _ts(refund.created_at),
    }


def _event_body(event: str, entities: dict[str, dict[str, Any]], now: datetime) -> str:
    payload = {
        "entity": "event",
        "account_id": ACCOUNT_ID,
        "event": event,
        "contains": list(entities),
        "payload": {name: {"entity": entity} for name, entity in entities.items()},
        "created_at": _ts(now),
    }
    return json.dumps(payload, separators=(",", ":"))


def queue_webhooks(
    session: AsyncSession,
    config: SandboxConfig,
    *,
    order_id: str,
    events: list[tuple[str, dict[str, dict[str, Any]]]],
    now: datetime,
) -> list[SandboxWebhook]:
    """Queue one settlement's webhooks, in the order they happened. With chaos they go out in reverse order and
    the first event twice (once first-queued copy late, after the others): deterministic, so tests can count."""
    bodies = [(_id("evt"), event, _event_body(event, entities, now)) for event, entities in events]
    deliveries = [*reversed(bodies), bodies[0]] if config.chaos else bodies
    rows = []
    for position, (event_id, event, body) in enumerate(deliveries):
        row = SandboxWebhook(
            id=_id("whd"),
            event_id=event_id,
            event=event,
            order_id=order_id,
            url=config.webhook_url,
            body=body,
            status="pending",
            attempts=0,
            seq=position,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(row)
        rows.append(row)
    return rows


def _id(kind: str) -> str:
    """``order_sbx_...``, ``pay_sbx_...``, ``rfnd_sbx_...``: Razorpay's prefixes on prepaid's sortable ids."""
    return f"{kind}_{new_id('sbx')}"


# --- reading -------------------------------------------------------------------------------------------------


async def load_order(db: Database, reference: str) -> tuple[SandboxOrder, list[SandboxPayment]] | None:
    """A sandbox order by its reference (receipt) with its payments, oldest first; None when unknown."""
    async with db.transaction(write=False) as session:
        order = await session.scalar(select(SandboxOrder).where(SandboxOrder.reference == reference))
        if order is None:
            return None
        payments = await _payments(session, [order.id])
        return order, payments.get(order.id, [])


async def _payments(session: AsyncSession, order_ids: list[str]) -> dict[str, list[SandboxPayment]]:
    found: dict[str, list[SandboxPayment]] = {order_id: [] for order_id in order_ids}
    if not order_ids:
        return found
    rows = await session.scalars(
        select(SandboxPayment).where(SandboxPayment.order_id.in_(order_ids)).order_by(SandboxPayment.id)
    )
    for payment in rows:
        found[payment.order_id].append(payment)
    return found


# --- paying (the hosted page) -----------------------------------------------------------------------------------


class CheckoutClosed(Exception):
    """The order cannot take this payment (already paid, or the payment is not waiting for authentication)."""


@dataclass(frozen=True)
class Settled:
    """A payment that reached captured, failed or a waiting authentication step, and where the browser goes."""

    order_id: str
    payment_id: str
    status: str  # captured, failed, created (waiting for authentication)
    redirect_url: str


def callback_url(config: SandboxConfig, order: SandboxOrder, payment: SandboxPayment) -> str:
    """The return URL with Razorpay Checkout's callback fields: signed ones for a captured payment, its
    ``error[...]`` fields for a failed one."""
    target = order.return_url or config.default_return_url(order.reference)
    if payment.status in ("captured", "refunded"):
        fields = {
            "razorpay_payment_id": payment.id,
            "razorpay_order_id": order.id,
            "razorpay_signature": config.payment_signature(order.id, payment.id),
        }
    else:
        code, source, step, description = FAILURES.get(
            payment.error_reason or "", ("BAD_REQUEST_ERROR", "customer", "payment_authorization", "")
        )
        fields = {
            "error[code]": payment.error_code or code,
            "error[description]": payment.error_description or description,
            "error[source]": source,
            "error[step]": step,
            "error[reason]": payment.error_reason or "payment_failed",
            "error[metadata]": json.dumps({"payment_id": payment.id, "order_id": order.id}),
        }
    parts = urlsplit(target)
    query = (parts.query + "&" if parts.query else "") + urlencode(fields)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def _settle(
    session: AsyncSession,
    config: SandboxConfig,
    order: SandboxOrder,
    payment: SandboxPayment,
    outcome: Literal["captured", "failed"],
    failure: str,
    now: datetime,
) -> None:
    if outcome == "captured":
        payment.status = "captured"
        payment.captured_at = now
        order.amount_paid += payment.amount
        order.status = "paid"
        entity = payment_entity(payment, order)
        queue_webhooks(
            session,
            config,
            order_id=order.id,
            events=[
                ("payment.captured", {"payment": entity}),
                ("order.paid", {"payment": entity, "order": order_entity(order)}),
            ],
            now=now,
        )
    else:
        code, _source, _step, description = FAILURES[failure]
        payment.status = "failed"
        payment.error_code = code
        payment.error_reason = failure
        payment.error_description = description
        queue_webhooks(
            session,
            config,
            order_id=order.id,
            events=[("payment.failed", {"payment": payment_entity(payment, order)})],
            now=now,
        )
    payment.updated_at = now


async def _lock_order(session: AsyncSession, db: Database, reference: str) -> SandboxOrder | None:
    query = select(SandboxOrder).where(SandboxOrder.reference == reference)
    if not db.is_sqlite:  # SQLite: the write transaction already holds the database's write lock
        query = query.with_for_update()
    return await session.scalar(query)


async def pay(
    db: Database,
    config: SandboxConfig,
    reference: str,
    *,
    method: Literal["card", "upi"],
    outcome: Outcome,
    card: CardEntry | None = None,
    vpa: str | None = None,
) -> Settled:
    """Record one payment on the order named by ``reference`` and settle it (or leave it waiting for the
    authentication step), in one transaction of the sandbox's own."""
    now = utcnow()
    async with db.transaction() as session:
        order = await _lock_order(session, db, reference)
        if order is None:
            raise LookupError(reference)
        if order.status == "paid":
            raise CheckoutClosed("This order is already paid.")
        payment = SandboxPayment(
            id=_id("pay"),
            order_id=order.id,
            amount=order.amount,
            currency=order.currency,
            status="created",
            method=method,
            card_network=card.network if card else None,
            card_last4=card.last4 if card else None,
            vpa=vpa,
            amount_refunded=0,
            created_at=now,
            updated_at=now,
        )
        session.add(payment)
        order.attempts += 1
        order.status = "attempted"
        order.updated_at = now
        if outcome == "captured":
            _settle(session, config, order, payment, "captured", "", now)
        elif outcome == "failed":
            reason = "upi_payment_failed" if method == "upi" else "payment_declined"
            _settle(session, config, order, payment, "failed", reason, now)
        await session.flush()
        if outcome == "authenticate":
            redirect = f"{config.base_url}/sandbox/checkout/{order.reference}/authenticate/{payment.id}"
        else:
            redirect = callback_url(config, order, payment)
        return Settled(order.id, payment.id, payment.status, redirect)


async def authenticate(
    db: Database, config: SandboxConfig, reference: str, payment_id: str, *, approve: bool
) -> Settled:
    """The extra authentication step (3-D Secure) answered: approved captures the payment, denied fails it."""
    now = utcnow()
    async with db.transaction() as session:
        order = await _lock_order(session, db, reference)
        if order is None:
            raise LookupError(reference)
        payment = await session.get(SandboxPayment, payment_id)
        if payment is None or payment.order_id != order.id:
            raise LookupError(payment_id)
        if payment.status != "created":
            raise CheckoutClosed("This payment is not waiting for authentication.")
        order.updated_at = now
        if approve:
            _settle(session, config, order, payment, "captured", "", now)
        else:
            _settle(session, config, order, payment, "failed", "authentication_failed", now)
        await session.flush()
        return Settled(order.id, payment.id, payment.status, callback_url(config, order, payment))


# --- webhook delivery (a runner job) ------------------------------------------------------------------------------


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(WEBHOOK_BACKOFF_BASE * 2 ** max(attempts - 1, 0), WEBHOOK_BACKOFF_MAX))


async def deliver_webhooks(
    db: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = WEBHOOK_BATCH,
) -> int:
    """Send the due webhook deliveries, oldest first; returns how many were sent (whatever the answer).

    Rows are claimed (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) and leased for a minute in one short
    transaction, sent with no transaction open (the receiver is usually this very server, which on SQLite needs
    the write lock to store the event), and their outcome recorded in another: a 2xx is delivered; anything
    else is retried with backoff, and given up a day after the event."""
    config = SandboxConfig.from_settings(settings)
    now = now or utcnow()
    async with db.transaction() as session:
        query = (
            select(SandboxWebhook)
            .where(SandboxWebhook.status == "pending", SandboxWebhook.next_attempt_at <= now)
            .order_by(SandboxWebhook.next_attempt_at, SandboxWebhook.seq, SandboxWebhook.id)
            .limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        rows = list(await session.scalars(query))
        claimed = [(row.id, row.event_id, row.url, row.body) for row in rows]
        for row in rows:
            row.next_attempt_at = now + WEBHOOK_LEASE
    if not claimed:
        return 0
    outcomes: dict[str, tuple[int | None, str | None]] = {}
    async with httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT, follow_redirects=False) as http:
        for delivery_id, event_id, url, body in claimed:
            raw = body.encode()
            headers = {
                "Content-Type": "application/json",
                "X-Razorpay-Signature": config.webhook_signature(raw),
                "x-razorpay-event-id": event_id,
                "User-Agent": "prepaid-sandbox-webhooks/1",
            }
            try:
                response = await http.post(url, content=raw, headers=headers)
                outcomes[delivery_id] = (response.status_code, None)
            except httpx.HTTPError as error:
                outcomes[delivery_id] = (None, f"{type(error).__name__}: {error}"[:500])
    done = utcnow()
    async with db.transaction() as session:
        for delivery_id, (status_code, failure) in outcomes.items():
            delivery = await session.get(SandboxWebhook, delivery_id)
            if delivery is None or delivery.status != "pending":
                continue
            delivery.attempts += 1
            delivery.last_status_code = status_code
            delivery.last_error = failure
            if status_code is not None and 200 <= status_code < 300:
                delivery.status = "delivered"
                delivery.delivered_at = done
            elif done - delivery.created_at >= WEBHOOK_GIVE_UP_AFTER:
                delivery.status = "abandoned"
            else:
                delivery.next_attempt_at = max(now, done) + _backoff(delivery.attempts)
            log.info(
                "sandbox_webhook_sent",
                delivery=delivery.id,
                event_id=delivery.event_id,
                webhook=delivery.event,
                status_code=status_code,
                outcome=delivery.status,
                attempts=delivery.attempts,
            )
    return len(claimed)


# --- the gateway -----------------------------------------------------------------------------------------------


class SandboxGateway:
    """The ``Gateway`` for the built-in sandbox. ``database`` is the one it writes its own transactions to (the
    app's, shared by its pages and its webhook job); without one it opens its own from ``database_url``."""

    name = NAME
    minimum_charge: Mapping[str, int] = MINIMUM_CHARGE

    def __init__(
        self, config: SandboxConfig, *, database: Database | None = None, database_url: str | None = None
    ) -> None:
        if database is None and not database_url:
            raise ValueError("the sandbox gateway needs a database or a database URL")
        self.config = config
        self._database = database
        self._database_url = database_url
        self._owns_database = database is None
        self._razorpay = config.razorpay()

    @classmethod
    def from_settings(cls, settings: Settings, *, database: Database | None = None) -> SandboxGateway:
        return cls(
            SandboxConfig.from_settings(settings), database=database, database_url=settings.database_url
        )

    def __repr__(self) -> str:
        return f"SandboxGateway(base_url={self.config.base_url!r})"

    @property
    def db(self) -> Database:
        if self._database is None:
            assert self._database_url is not None
            self._database = open_database(self._database_url)
        return self._database

    # --- payments ------------------------------------------------------------------------------------------

    async def create_payment(
        self,
        *,
        reference: str,
        amount: int,
        currency: str,
        description: str,
        idempotency_key: str | None = None,
        customer_email: str | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
    ) -> GatewayCheckout:
        currency = currency.upper()
        if not REFERENCE.match(reference):
            raise InvalidRequest(
                "A sandbox receipt is 1 to 40 letters, digits, '-' or '_'.", code="invalid_reference"
            )
        minimum = MINIMUM_CHARGE.get(currency)
        if minimum is None:
            raise GatewayRefused(f"The sandbox does not take {currency}.", gateway=NAME)
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < minimum:
            raise GatewayRefused(
                f"The amount must be at least {currency} {minimum} (minor units).", gateway=NAME
            )
        existing = await self._existing(reference)
        if existing is not None:
            if (existing["amount"], existing["currency"]) != (amount, currency):
                raise GatewayRefused(
                    f"The receipt {reference} is already used by a sandbox order for another amount.",
                    gateway=NAME,
                )
            return self._checkout(existing)
        now = utcnow()
        values: dict[str, Any] = {
            "id": _id("order"),
            "reference": reference,
            "amount": amount,
            "currency": currency,
            "amount_paid": 0,
            "status": "created",
            "attempts": 0,
            "description": description[:256],
            "customer_email": customer_email,
            "return_url": success_url,
            "cancel_url": cancel_url,
            "checkout_secret": secrets.token_hex(32),
            "created_at": now,
            "updated_at": now,
        }
        try:
            await self._insert(values)
        except IntegrityError:  # the same reference created at the same time: answer that one
            existing = await self._existing(reference)
            if existing is None or (existing["amount"], existing["currency"]) != (amount, currency):
                raise GatewayRefused(
                    f"The receipt {reference} is already used by another sandbox order.", gateway=NAME
                ) from None
            return self._checkout(existing)
        except OperationalError:
            raise GatewayUnavailable(_LOCKED, gateway=NAME) from None
        return self._checkout(values)

    def _checkout(self, values: Mapping[str, Any]) -> GatewayCheckout:
        reference = str(values["reference"])
        url = self.config.checkout_url(reference)
        return GatewayCheckout(
            gateway=NAME,
            gateway_order_id=str(values["id"]),
            reference=reference,
            amount=int(values["amount"]),
            currency=str(values["currency"]),
            client={
                "key_id": self.config.key_id,
                "order_id": str(values["id"]),
                "amount": int(values["amount"]),
                "currency": str(values["currency"]),
                "checkout_url": url,
            },
            redirect_url=url,
        )

    async def _existing(self, reference: str) -> dict[str, Any] | None:
        async with self.db.transaction(write=False) as session:
            order = await session.scalar(select(SandboxOrder).where(SandboxOrder.reference == reference))
            if order is None:
                return None
            return {
                "id": order.id,
                "reference": order.reference,
                "amount": order.amount,
                "currency": order.currency,
            }

    async def _insert(self, values: dict[str, Any]) -> None:
        async with self.db.transaction() as session:
            session.add(SandboxOrder(**values))

    async def fetch_payment(self, gateway_order_id: str) -> GatewayOrder:
        async with self.db.transaction(write=False) as session:
            order = await session.get(SandboxOrder, gateway_order_id)
            if order is None:
                raise GatewayRefused(f"The id provided does not exist: {gateway_order_id}", gateway=NAME)
            payments = await _payments(session, [order.id])
            return self._order(order, payments[order.id])

    def verify_callback(self, *, gateway_order_id: str, fields: Mapping[str, str]) -> VerifiedCallback:
        verified = self._razorpay.verify_callback(gateway_order_id=gateway_order_id, fields=fields)
        return replace(verified, gateway=NAME)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> GatewayEvent:
        return replace(self._razorpay.parse_webhook(headers, body), gateway=NAME)

    async def refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str, reason: str | None = None
    ) -> GatewayRefund:
        if not idempotency_key or len(idempotency_key) > 255:
            raise InvalidRequest(
                "A refund idempotency key is 1 to 255 characters.", code="invalid_idempotency_key"
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise GatewayRefused("The refund amount must be a positive integer.", gateway=NAME)
        currency = currency.upper()
        now = utcnow()
        try:
            async with self.db.transaction() as session:
                query = select(SandboxPayment).where(SandboxPayment.id == payment_id)
                if not self.db.is_sqlite:
                    query = query.with_for_update()
                payment = await session.scalar(query)
                if payment is None:
                    raise GatewayRefused(f"The id provided does not exist: {payment_id}", gateway=NAME)
                done = await session.scalar(
                    select(SandboxRefund).where(SandboxRefund.idempotency_key == idempotency_key)
                )
                if done is not None:
                    if (done.payment_id, done.amount) != (payment_id, amount):
                        raise GatewayRefused(
                            "This idempotency key was used for another refund.", gateway=NAME
                        )
                    return self._refund(done)
                if payment.status not in ("captured", "refunded"):
                    raise GatewayRefused("Only a captured payment can be refunded.", gateway=NAME)
                if currency != payment.currency:
                    raise GatewayRefused(
                        f"The payment is in {payment.currency}, not {currency}.", gateway=NAME
                    )
                if payment.amount_refunded + amount > payment.amount:
                    raise GatewayRefused(
                        "The refund amount provided is greater than amount captured "
                        f"({payment.amount - payment.amount_refunded} left).",
                        gateway=NAME,
                    )
                order = await session.get(SandboxOrder, payment.order_id)
                assert order is not None
                refund = SandboxRefund(
                    id=_id("rfnd"),
                    payment_id=payment.id,
                    idempotency_key=idempotency_key,
                    amount=amount,
                    currency=payment.currency,
                    status="processed",
                    reason=(reason or None) and reason[:256],
                    created_at=now,
                )
                session.add(refund)
                payment.amount_refunded += amount
                if payment.amount_refunded == payment.amount:
                    payment.status = "refunded"
                payment.updated_at = now
                queue_webhooks(
                    session,
                    self.config,
                    order_id=order.id,
                    events=[
                        (
                            "refund.processed",
                            {"refund": refund_entity(refund), "payment": payment_entity(payment, order)},
                        )
                    ],
                    now=now,
                )
                await session.flush()
                return self._refund(refund)
        except OperationalError:  # SQLite: the caller holds the write lock (see the module's docstring)
            raise GatewayUnavailable(_LOCKED, gateway=NAME) from None
        except IntegrityError:  # the same key at the same time in another process: that refund stands
            async with self.db.transaction(write=False) as session:
                done = await session.scalar(
                    select(SandboxRefund).where(SandboxRefund.idempotency_key == idempotency_key)
                )
                if done is None or (done.payment_id, done.amount) != (payment_id, amount):
                    raise GatewayUnavailable(
                        "The refund could not be recorded; try again.", gateway=NAME
                    ) from None
                return self._refund(done)

    async def list_orders(self, *, since: datetime, until: datetime, limit: int = 1000) -> list[GatewayOrder]:
        async with self.db.transaction(write=False) as session:
            orders = list(
                await session.scalars(
                    select(SandboxOrder)
                    .where(SandboxOrder.created_at >= since, SandboxOrder.created_at <= until)
                    .order_by(SandboxOrder.created_at.desc(), SandboxOrder.id.desc())
                    .limit(limit)
                )
            )
            payments = await _payments(session, [order.id for order in orders])
            return [self._order(order, payments[order.id]) for order in orders]

    async def aclose(self) -> None:
        await self._razorpay.aclose()
        if self._owns_database and self._database is not None:
            await self._database.dispose()
            self._database = None

    # --- translation: the Razorpay adapter's own --------------------------------------------------------------

    def _order(self, order: SandboxOrder, payments: list[SandboxPayment]) -> GatewayOrder:
        translated = [RazorpayGateway._payment(payment_entity(payment, order)) for payment in payments]
        return replace(RazorpayGateway._order(order_entity(order), translated), gateway=NAME)

    @staticmethod
    def _refund(refund: SandboxRefund) -> GatewayRefund:
        translated = RazorpayGateway._refund(
            refund_entity(refund), payment_id=refund.payment_id, currency=refund.currency
        )
        return replace(translated, gateway=NAME)
