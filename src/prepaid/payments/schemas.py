"""Orders over HTTP: what a buyer sends to create, verify, retry and cancel one, and what they get back.

Money amounts are integers in the currency's minor unit (paise, cents) beside ``currency``; credits are in the
credit asset's smallest unit beside ``asset``. The client never sends a price: it comes from the quote.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from prepaid.catalog.schemas import Code, CouponCode, Currency, Quantity
from prepaid.payments.models import PaymentAttempt, PaymentOrder
from prepaid.schemas import Input, Output

OrderStatus = Literal[
    "created",
    "pending",
    "paid",
    "fulfilled",
    "failed",
    "expired",
    "cancelled",
    "refunded",
    "partially_refunded",
    "disputed",
    "flagged",
]
GatewayName = Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
CallbackValue = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"^[\x20-\x7e]+$")]
Reference = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class OrderCreate(Input):
    """A plan (by code) or a custom ``quantity`` of whole credits, in ``currency``, with an optional coupon,
    paid through ``gateway`` (default: the first one enabled) into ``wallet`` (default: the buyer's default
    wallet). Admins and server keys with ``orders:write`` may buy for another ``customer`` (user id or external
    id)."""

    plan: Code | None = None
    quantity: Quantity | None = None
    currency: Currency
    coupon: CouponCode | None = None
    wallet: Reference | None = None
    gateway: GatewayName | None = None
    customer: Reference | None = None


class OrderVerify(Input):
    """What the gateway's checkout handed back to the client: Razorpay (and the sandbox) send
    ``razorpay_payment_id``, ``razorpay_order_id`` and ``razorpay_signature``; Stripe's return names
    ``payment_intent`` (with ``payment_intent_client_secret``) or ``session_id``. ``attempt`` picks an earlier
    attempt of the order (default: the newest)."""

    attempt: Reference | None = None
    razorpay_payment_id: CallbackValue | None = None
    razorpay_order_id: CallbackValue | None = None
    razorpay_signature: CallbackValue | None = None
    payment_intent: CallbackValue | None = None
    payment_intent_client_secret: CallbackValue | None = None
    session_id: CallbackValue | None = None

    def fields(self) -> dict[str, str]:
        return {
            name: value
            for name, value in self.model_dump(exclude={"attempt"}).items()
            if isinstance(value, str)
        }


class OrderRetry(Input):
    """Another try at paying a failed or expired order at its quote (default: the same gateway)."""

    gateway: GatewayName | None = None


class CheckoutRead(Output):
    """What the client needs to open the gateway's checkout for the newest attempt: ``client`` carries the
    gateway's own fields (Razorpay: ``key_id``, ``order_id``, ``amount``, ``currency``; Stripe:
    ``client_secret`` and ``publishable_key``, or a ``url``); ``redirect_url`` is set for redirect flows."""

    gateway: str
    attempt: str
    gateway_order_id: str | None
    client: dict[str, Any]
    redirect_url: str | None


class AttemptRead(Output):
    object: Literal["payment_attempt"] = "payment_attempt"
    id: str
    attempt_number: int
    retry_of: str | None
    gateway: str
    gateway_order_id: str | None
    status: str
    amount: int
    currency: str
    payment_id: str | None
    failure_reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, attempt: PaymentAttempt) -> AttemptRead:
        return cls.model_validate(attempt)


class OrderRead(Output):
    object: Literal["order"] = "order"
    id: str
    user_id: str
    wallet_id: str
    status: OrderStatus
    flag_reason: str | None
    currency: str
    amount: int
    asset: str
    credits: int
    bonus_credits: int
    plan: str | None
    quantity: int | None
    coupon: str | None
    quote: dict[str, Any]
    quote_expires_at: datetime
    gateway: str | None
    attempt_count: int
    payment_id: str | None
    amount_paid: int
    payment_method: str | None
    card_brand: str | None
    card_last4: str | None
    failure_reason: str | None
    client_ip: str | None
    user_agent: str | None
    transactions: list[str]
    checkout: CheckoutRead | None
    attempts: list[AttemptRead] | None = Field(
        default=None,
        description="Every attempt, oldest first (on GET /v1/orders/{id} and the order's actions).",
    )
    expires_at: datetime
    created_at: datetime
    paid_at: datetime | None
    fulfilled_at: datetime | None
    failed_at: datetime | None
    expired_at: datetime | None
    cancelled_at: datetime | None
    flagged_at: datetime | None

    @classmethod
    def of(
        cls,
        order: PaymentOrder,
        *,
        latest: PaymentAttempt | None = None,
        attempts: list[PaymentAttempt] | None = None,
    ) -> OrderRead:
        if latest is None and attempts:
            latest = attempts[-1]
        checkout = None
        if (
            latest is not None
            and latest.status in ("created", "pending")
            and order.status
            in (
                "created",
                "pending",
            )
        ):
            checkout = CheckoutRead(
                gateway=latest.gateway,
                attempt=latest.id,
                gateway_order_id=latest.gateway_order_id,
                client=dict(latest.checkout or {}),
                redirect_url=latest.redirect_url,
            )
        return cls(
            id=order.id,
            user_id=order.user_id,
            wallet_id=order.wallet_id,
            status=order.status,
            flag_reason=order.flag_reason,
            currency=order.currency,
            amount=order.amount,
            asset=order.asset,
            credits=order.credits,
            bonus_credits=order.bonus_credits,
            plan=order.plan_code,
            quantity=order.quantity,
            coupon=order.coupon_code,
            quote=dict(order.quote),
            quote_expires_at=order.quote_expires_at,
            gateway=order.gateway,
            attempt_count=order.attempt_count,
            payment_id=order.payment_id,
            amount_paid=order.amount_paid,
            payment_method=order.payment_method,
            card_brand=order.card_brand,
            card_last4=order.card_last4,
            failure_reason=order.failure_reason,
            client_ip=order.client_ip,
            user_agent=order.user_agent,
            transactions=[
                t for t in (order.purchase_transaction_id, order.bonus_transaction_id) if t is not None
            ],
            checkout=checkout,
            attempts=[AttemptRead.of(a) for a in attempts] if attempts is not None else None,
            expires_at=order.expires_at,
            created_at=order.created_at,
            paid_at=order.paid_at,
            fulfilled_at=order.fulfilled_at,
            failed_at=order.failed_at,
            expired_at=order.expired_at,
            cancelled_at=order.cancelled_at,
            flagged_at=order.flagged_at,
        )


class WebhookReceived(Output):
    """The answer to a gateway: the event is stored (``duplicate`` when it had been already)."""

    object: Literal["webhook_receipt"] = "webhook_receipt"
    received: bool = True
    event: str
    duplicate: bool
    processed: bool
