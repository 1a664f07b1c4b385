"""The one protocol every payment gateway implements, and the small frozen values that cross it.

Amounts are integers in the currency's minor unit (paise, cents) beside an upper-case ISO 4217 currency.
Statuses are our own enums, not the provider's strings (those stay in ``raw_status`` / ``raw_type``).

Methods that talk to the gateway are ``async``; the checks that are pure computation (a client callback's
signature, a webhook's signature) are plain methods, so a webhook route can verify before it stores anything.
Every failure of the gateway or its SDK is a ``GatewayError`` (never the SDK's own exception); a bad signature
is ``InvalidSignature``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import structlog

from prepaid.errors import GatewayError as _GatewayErrorBase
from prepaid.errors import InvalidRequest


class PaymentStatus(StrEnum):
    """Where a payment (or a gateway order / intent, through its best payment) stands."""

    CREATED = "created"  # nothing attempted yet
    PENDING = "pending"  # started: waiting for the customer (3-D Secure, a redirect) or the bank
    AUTHORIZED = "authorized"  # authorised but not captured: NOT paid
    CAPTURED = "captured"  # the money is captured: the only status that counts as paid
    FAILED = "failed"  # declined or failed; a new payment may still follow on the same order
    CANCELLED = "cancelled"  # cancelled or expired at the gateway: no payment will follow


class RefundStatus(StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    FAILED = "failed"


class EventType(StrEnum):
    """A webhook event, normalised. ``OTHER`` is a genuine, verified event that prepaid does not act on."""

    PAYMENT_AUTHORIZED = "payment.authorized"
    PAYMENT_CAPTURED = "payment.captured"
    PAYMENT_FAILED = "payment.failed"
    PAYMENT_CANCELLED = "payment.cancelled"
    REFUND_CREATED = "refund.created"
    REFUND_PROCESSED = "refund.processed"
    REFUND_FAILED = "refund.failed"
    DISPUTE_OPENED = "dispute.opened"
    DISPUTE_UPDATED = "dispute.updated"
    DISPUTE_WON = "dispute.won"
    DISPUTE_LOST = "dispute.lost"
    OTHER = "other"


# --- errors ------------------------------------------------------------------------------------------------


class GatewayError(_GatewayErrorBase):
    """The gateway (or its SDK) failed or refused. ``retryable`` says whether the same call may succeed later
    (network trouble, the gateway's 5xx, a rate limit, a conflict while an earlier identical request runs)."""

    retryable: bool = True

    def __init__(self, message: str, *, gateway: str, retryable: bool | None = None, **kwargs: Any) -> None:
        super().__init__(message, gateway=gateway, **kwargs)
        self.gateway = gateway
        if retryable is not None:
            self.retryable = retryable


class GatewayUnavailable(GatewayError):
    """Network trouble, a timeout, or the gateway's own error: try again later (with the same idempotency key)."""

    default_code = "gateway_unavailable"
    retryable = True


def unreadable_answer(gateway: str, label: str, what: str, error: Exception) -> GatewayUnavailable:
    """The error for an answer the SDK could not read (a proxy's error page, a body of the wrong shape): logged
    by its type only, never its content, and retryable."""
    structlog.get_logger("prepaid.payments").warning(
        "gateway_unreadable_answer", gateway=gateway, action=what, error=type(error).__name__
    )
    return GatewayUnavailable(
        f"{label} answered with something unreadable to {what} ({type(error).__name__}).", gateway=gateway
    )


class GatewayRefused(GatewayError):
    """The gateway understood the request and refused it (bad amount, unknown id, refund above what is left,
    wrong keys). Retrying the same request will not help."""

    default_code = "gateway_refused"
    retryable = False


class InvalidSignature(InvalidRequest):
    """A webhook or client callback whose signature does not verify (forged, tampered, wrong secret, stale)."""

    default_code = "invalid_signature"


class GatewayNotConfigured(ValueError):
    """A gateway enabled in ``PREPAID_GATEWAYS`` without the keys it needs: the server refuses to start."""


# --- values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayCheckout:
    """What creating a payment returns: the gateway's order / intent id and what the client needs to open
    that gateway's checkout (``client``: for Razorpay ``key_id``, ``order_id``, ``amount``, ``currency``; for
    Stripe ``client_secret`` and ``publishable_key``). ``redirect_url`` is set for redirect flows (a Stripe
    Checkout Session's hosted page)."""

    gateway: str
    gateway_order_id: str
    reference: str
    amount: int
    currency: str
    client: Mapping[str, str | int]
    redirect_url: str | None = None


@dataclass(frozen=True)
class GatewayPayment:
    """One payment (one try by the customer) as the gateway reports it."""

    payment_id: str
    status: PaymentStatus
    amount: int
    currency: str
    raw_status: str
    method: str | None = None
    card_brand: str | None = None
    card_last4: str | None = None
    failure_reason: str | None = None
    amount_refunded: int = 0
    created_at: datetime | None = None

    @property
    def captured(self) -> bool:
        return self.status is PaymentStatus.CAPTURED


@dataclass(frozen=True)
class GatewayOrder:
    """A gateway order / PaymentIntent / Checkout Session with its payments.

    ``status`` is the best any payment reached (captured > authorized > pending > failed > cancelled), or
    ``created`` when nobody tried to pay yet. ``amount_paid`` is what was captured (after that, refunds are in
    each payment's ``amount_refunded``). ``payment`` is the payment that decided ``status``; ``payments`` are all
    of them, so a second captured payment on one order is visible."""

    gateway: str
    gateway_order_id: str
    reference: str | None
    amount: int
    currency: str
    status: PaymentStatus
    raw_status: str
    amount_paid: int = 0
    payments: tuple[GatewayPayment, ...] = ()
    created_at: datetime | None = None

    @property
    def paid(self) -> bool:
        """Only captured funds count: an authorised payment, a processing one, an unpaid session do not."""
        return self.status is PaymentStatus.CAPTURED

    @property
    def payment(self) -> GatewayPayment | None:
        for status in _STATUS_ORDER:
            for payment in self.payments:
                if payment.status is status:
                    return payment
        return None

    @property
    def captured_payments(self) -> tuple[GatewayPayment, ...]:
        return tuple(payment for payment in self.payments if payment.captured)


_STATUS_ORDER = (
    PaymentStatus.CAPTURED,
    PaymentStatus.AUTHORIZED,
    PaymentStatus.PENDING,
    PaymentStatus.FAILED,
    PaymentStatus.CANCELLED,
    PaymentStatus.CREATED,
)


def best_status(statuses: list[PaymentStatus]) -> PaymentStatus:
    for status in _STATUS_ORDER:
        if status in statuses:
            return status
    return PaymentStatus.CREATED


@dataclass(frozen=True)
class VerifiedCallback:
    """A client callback that verified against the gateway order id stored with the attempt. It proves the
    customer came back from checkout, not that the money is captured: fetch the payment before fulfilling."""

    gateway: str
    gateway_order_id: str
    payment_id: str | None


@dataclass(frozen=True)
class GatewayEvent:
    """A verified webhook, normalised. ``event_id`` is the gateway's id for deduplication; ``reference`` is our
    own id when the gateway echoes it (receipt, metadata); ``refund_reference`` is our refund id for refund
    events. ``payload`` is the parsed JSON body."""

    gateway: str
    event_id: str
    type: EventType
    raw_type: str
    created_at: datetime
    gateway_order_id: str | None = None
    payment_id: str | None = None
    reference: str | None = None
    amount: int | None = None
    currency: str | None = None
    status: str | None = None
    method: str | None = None
    card_brand: str | None = None
    card_last4: str | None = None
    failure_reason: str | None = None
    refund_id: str | None = None
    refund_reference: str | None = None
    dispute_id: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class GatewayRefund:
    gateway: str
    refund_id: str
    payment_id: str
    amount: int
    currency: str
    status: RefundStatus
    raw_status: str
    reference: str | None = None


# --- the protocol ------------------------------------------------------------------------------------------


@runtime_checkable
class Gateway(Protocol):
    """A payment gateway. ``name`` is the one in ``PREPAID_GATEWAYS``; ``minimum_charge`` is the smallest amount
    per currency the gateway takes (in minor units); a currency missing from it is not supported."""

    name: str
    minimum_charge: Mapping[str, int]

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
        """Open a payment for our order ``reference`` (sent as the gateway's receipt / metadata). With
        ``success_url`` a gateway that has a hosted redirect page (Stripe Checkout) uses it."""
        ...

    async def fetch_payment(self, gateway_order_id: str) -> GatewayOrder:
        """The gateway's live view of a gateway order / intent / session and its payments."""
        ...

    def verify_callback(self, *, gateway_order_id: str, fields: Mapping[str, str]) -> VerifiedCallback:
        """Check what the client sent back from checkout against the gateway order id WE stored with the
        attempt (never one the client sends). Raises ``InvalidSignature``."""
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> GatewayEvent:
        """Verify a webhook's signature over the raw body and normalise it. Raises ``InvalidSignature``."""
        ...

    async def refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str, reason: str | None = None
    ) -> GatewayRefund:
        """Refund ``amount`` of a captured payment. ``idempotency_key`` is our refund id: sending the same
        refund again (after a timeout, a crash) never refunds twice."""
        ...

    async def list_orders(self, *, since: datetime, until: datetime, limit: int = 1000) -> list[GatewayOrder]:
        """The gateway's orders / intents created in ``[since, until]``, newest first, at most ``limit``."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP connections the adapter holds."""
        ...


def check_amount(gateway: Gateway, amount: int, currency: str) -> None:
    """Refuse, before calling the gateway, an amount the gateway would refuse (below its minimum charge) or a
    currency it does not take."""
    currency = currency.upper()
    minimum = gateway.minimum_charge.get(currency)
    if minimum is None:
        raise InvalidRequest(
            f"The {gateway.name} gateway does not take {currency}.",
            code="currency_not_supported",
            param="currency",
        )
    if amount < minimum:
        raise InvalidRequest(
            f"The {gateway.name} gateway's minimum charge in {currency} is {minimum} (minor units); "
            f"the amount is {amount}.",
            code="amount_below_minimum",
            param="amount",
            minimum=minimum,
            currency=currency,
        )


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def from_timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def as_int(value: Any) -> int | None:
    """An integer amount from a JSON payload, or None (never a float, never a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
