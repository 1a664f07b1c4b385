"""Orders over HTTP: what a buyer sends to create, verify, retry and cancel one, and what they get back.

Money amounts are integers in the currency's minor unit (paise, cents) beside ``currency``; credits are in the
credit asset's smallest unit beside ``asset``. The client never sends a price: it comes from the quote.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from prepaid.catalog.schemas import Code, CouponCode, Currency, Quantity
from prepaid.ledger.schemas import Amount, Reason
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
    checkout_url: str | None = Field(
        default=None,
        description="A signed page of this server that opens the gateway's checkout, for a buyer who is not "
        "signed in (a bot sends it over chat); it expires with the order.",
    )
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


# ---------------------------------------------------------------- refunds

RefundStatusName = Literal["created", "pending", "processed", "failed"]
ClawbackPolicy = Literal["available", "negative", "none"]


class RefundCreate(Input):
    """An admin's refund of an order's payment. ``amount`` (minor units of the order's currency) defaults to
    all that is left of the payment. ``clawback`` says what happens to the credits the money bought (in
    proportion to the money refunded, bonus included): ``available`` takes back at most what the wallet has,
    ``negative`` takes all of them and leaves debt for what was spent, ``none`` takes nothing."""

    amount: Amount | None = None
    reason: Reason | None = None
    clawback: ClawbackPolicy


class RefundRead(Output):
    object: Literal["refund"] = "refund"
    id: str
    order_id: str
    kind: Literal["admin", "duplicate_payment"]
    status: RefundStatusName
    gateway: str
    payment_id: str
    gateway_refund_id: str | None
    amount: int
    currency: str
    reason: str | None
    clawback: ClawbackPolicy
    asset: str
    credits: int = Field(description="Credits the refund takes back in proportion to the money refunded.")
    credits_held: int = Field(description="Credits reserved when the refund was created.")
    credits_taken: int = Field(description="Credits actually taken back when it was processed.")
    failure_reason: str | None
    send_attempts: int
    last_error: str | None
    created_by: str | None
    created_at: datetime
    processed_at: datetime | None
    failed_at: datetime | None

    @classmethod
    def of(cls, refund: Any) -> RefundRead:
        return cls.model_validate(refund)


# ---------------------------------------------------------------- disputes

DisputeCategory = Literal["not_credited", "wrong_amount", "duplicate_charge", "refund_request", "other"]
DisputeStatusName = Literal["open", "resolved", "rejected", "won", "lost"]
DisputeKind = Literal["customer", "chargeback"]
# Text a person writes: not blank, no NUL (PostgreSQL refuses it in text).
MessageText = Annotated[
    str, StringConstraints(min_length=1, max_length=5000, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]
NoteText = Annotated[
    str, StringConstraints(min_length=1, max_length=2000, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]
OverrideReason = Annotated[
    str, StringConstraints(min_length=1, max_length=500, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]


class DisputeCreate(Input):
    """A dispute on one of your orders: what went wrong (``category``) and a first ``message``. Admins and
    server keys with ``orders:write`` may raise one on any customer's order."""

    order: Reference
    category: DisputeCategory
    message: MessageText


class DisputeMessageCreate(Input):
    message: MessageText


class DisputeResolve(Input):
    """An admin's decision, once: ``grant_credits`` (``not_credited``: the order is fulfilled, send no
    ``amount``; any other category: ``amount`` credits as goodwill), ``refund`` (``amount`` in the order's
    currency, default all that is left of the payment, with a ``clawback`` policy) or ``reject``. Granting
    when the gateway shows no captured payment needs ``override: true`` and an ``override_reason``."""

    resolution: Literal["grant_credits", "refund", "reject"]
    note: NoteText
    amount: Amount | None = None
    clawback: Literal["available", "negative", "none"] = "available"
    override: bool = False
    override_reason: OverrideReason | None = None


class DisputeMessageRead(Output):
    object: Literal["dispute_message"] = "dispute_message"
    id: str
    author_id: str | None
    author_role: Literal["customer", "admin", "system"]
    body: str
    created_at: datetime


class GatewayPaymentRead(Output):
    payment_id: str
    status: str
    amount: int
    currency: str
    raw_status: str
    method: str | None
    card_brand: str | None
    card_last4: str | None
    failure_reason: str | None
    amount_refunded: int


class GatewayViewRead(Output):
    """The gateway's live view of one attempt of the order (admins only), or why it could not be had."""

    attempt: str
    gateway: str
    gateway_order_id: str
    status: str | None
    amount: int | None
    currency: str | None
    amount_paid: int | None
    payments: list[GatewayPaymentRead]
    error: str | None


class DisputeRead(Output):
    object: Literal["dispute"] = "dispute"
    id: str
    order_id: str
    user_id: str
    kind: DisputeKind
    category: str
    status: DisputeStatusName
    gateway: str | None
    gateway_dispute_id: str | None
    gateway_status: str | None
    amount: int | None = Field(description="Chargebacks: the money disputed, in ``currency``'s minor unit.")
    currency: str | None
    reason: str | None
    asset: str
    held_credits: int = Field(description="Chargebacks: credits held until the gateway decides.")
    resolution: str | None
    resolution_note: str | None
    resolved_by: str | None
    granted_credits: int
    grant_transaction_id: str | None
    refund_id: str | None
    override_reason: str | None
    messages: list[DisputeMessageRead] | None = Field(
        default=None, description="The thread, oldest first (on GET /v1/disputes/{id} and the actions)."
    )
    gateway_views: list[GatewayViewRead] | None = Field(
        default=None, description="Admins: the gateway's live view of the order's payment (GET by id)."
    )
    created_at: datetime
    updated_at: datetime
    resolved_at: datetime | None
