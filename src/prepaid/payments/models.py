"""Orders, their payment attempts, and the inbox of gateway events.

An **order** is one purchase at one quote: what the customer pays (``amount`` in ``currency``'s minor unit) and
what they get (``credits`` bought and ``bonus_credits``, in the credit asset's smallest unit) into ``wallet_id``.
Its status only moves forward (see ``service.STATUS_RANK``). Each try at paying is an **attempt** with the
gateway's own order / intent id; a retry makes a new attempt (``attempt_number``, ``retry_of``). Every webhook is
stored raw in **payment_gateway_event** before it is processed, unique per gateway and event id.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from prepaid.db import Base, JSONType, UTCDateTime, utcnow

ORDER_STATUSES = (
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
)
ATTEMPT_STATUSES = ("created", "pending", "paid", "failed", "cancelled")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class PaymentOrder(Base):
    __tablename__ = "payment_order"
    __table_args__ = (
        CheckConstraint(_one_of("status", ORDER_STATUSES), name="status"),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint("credits > 0 AND bonus_credits >= 0", name="credits_positive"),
        CheckConstraint("attempt_count >= 0", name="attempt_count_non_negative"),
        Index("ix_payment_order_user_id", "user_id"),
        Index("ix_payment_order_status_expires_at", "status", "expires_at"),
        # The admin's stats and order lists read a period of orders by when they were made or fulfilled.
        Index("ix_payment_order_created_at", "created_at"),
        Index("ix_payment_order_fulfilled_at", "fulfilled_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_user.id"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("ledger_account.id"))
    status: Mapped[str] = mapped_column(String(24), default="created")
    flag_reason: Mapped[str | None] = mapped_column(String(500))
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(16))
    credits: Mapped[int] = mapped_column(BigInteger)
    bonus_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    plan_code: Mapped[str | None] = mapped_column(String(64))
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    coupon_code: Mapped[str | None] = mapped_column(String(64))
    coupon_reservation_id: Mapped[str | None] = mapped_column(String(32))
    quote: Mapped[dict[str, Any]] = mapped_column(JSONType)
    quote_expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    gateway: Mapped[str | None] = mapped_column(String(32))
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    payment_id: Mapped[str | None] = mapped_column(String(255))
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    payment_method: Mapped[str | None] = mapped_column(String(64))
    card_brand: Mapped[str | None] = mapped_column(String(64))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    purchase_transaction_id: Mapped[str | None] = mapped_column(String(32))
    bonus_transaction_id: Mapped[str | None] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fulfilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    flagged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentAttempt(Base):
    __tablename__ = "payment_attempt"
    __table_args__ = (
        CheckConstraint(_one_of("status", ATTEMPT_STATUSES), name="status"),
        UniqueConstraint("order_id", "attempt_number"),
        UniqueConstraint("gateway", "gateway_order_id"),
        Index("ix_payment_attempt_updated_at", "updated_at"),  # notifications: the failure-rate alert
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("payment_order.id"))
    gateway: Mapped[str] = mapped_column(String(32))
    gateway_order_id: Mapped[str | None] = mapped_column(String(255))
    attempt_number: Mapped[int] = mapped_column(Integer)
    retry_of: Mapped[str | None] = mapped_column(ForeignKey("payment_attempt.id"))
    status: Mapped[str] = mapped_column(String(16), default="created")
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    payment_id: Mapped[str | None] = mapped_column(String(255))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    # What the client needs to open the gateway's checkout (key id, order id, client secret...), as answered.
    checkout: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    redirect_url: Mapped[str | None] = mapped_column(String(2000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class PaymentGatewayEvent(Base):
    """A webhook as received (``body``: the raw bytes whose signature verified), before and after processing.
    ``processed_at`` is set once it has been applied (or found to need nothing); ``error`` keeps the last
    processing failure, and the runner tries again."""

    __tablename__ = "payment_gateway_event"
    __table_args__ = (
        UniqueConstraint("gateway", "event_id"),
        Index("ix_payment_gateway_event_processed_at", "processed_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    gateway: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(255))
    type: Mapped[str] = mapped_column(String(64))
    raw_type: Mapped[str] = mapped_column(String(128))
    order_id: Mapped[str | None] = mapped_column(String(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    # The event as the adapter normalised it (payment id, amount, currency, card...), to process it again.
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    process_attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(1000))


# ---------------------------------------------------------------- disputes (payments/disputes.py holds the rules)

DISPUTE_KINDS = ("customer", "chargeback")
DISPUTE_CATEGORIES = (
    "not_credited",
    "wrong_amount",
    "duplicate_charge",
    "refund_request",
    "other",
    "chargeback",
)
DISPUTE_STATUSES = ("open", "resolved", "rejected", "won", "lost")


class PaymentDispute(Base):
    """A customer's dispute about an order (``kind`` customer: a category, a message thread, an admin's
    resolution), or a gateway chargeback (``kind`` chargeback: opened by the gateway's webhook, unique per
    gateway dispute id, the order's credits held in ``hold_id`` until won or lost)."""

    __tablename__ = "payment_dispute"
    __table_args__ = (
        CheckConstraint(_one_of("kind", DISPUTE_KINDS), name="kind"),
        CheckConstraint(_one_of("category", DISPUTE_CATEGORIES), name="category"),
        CheckConstraint(_one_of("status", DISPUTE_STATUSES), name="status"),
        CheckConstraint("granted_credits >= 0 AND held_credits >= 0", name="credits_non_negative"),
        UniqueConstraint("gateway", "gateway_dispute_id"),
        Index("ix_payment_dispute_order_id", "order_id"),
        Index("ix_payment_dispute_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("payment_order.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_user.id"))
    kind: Mapped[str] = mapped_column(String(16))
    category: Mapped[str] = mapped_column(String(24))
    status: Mapped[str] = mapped_column(String(16), default="open")
    # chargebacks: the gateway's dispute, its money, its own status and reason
    gateway: Mapped[str | None] = mapped_column(String(32))
    gateway_dispute_id: Mapped[str | None] = mapped_column(String(255))
    gateway_payment_id: Mapped[str | None] = mapped_column(String(255))
    gateway_status: Mapped[str | None] = mapped_column(String(64))
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(500))
    order_status_before: Mapped[str | None] = mapped_column(String(24))
    hold_id: Mapped[str | None] = mapped_column(String(32))
    held_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    clawback_transaction_id: Mapped[str | None] = mapped_column(String(32))
    # the resolution (customer disputes)
    resolution: Mapped[str | None] = mapped_column(String(16))
    resolution_note: Mapped[str | None] = mapped_column(String(2000))
    resolved_by: Mapped[str | None] = mapped_column(ForeignKey("auth_user.id"))
    granted_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    grant_transaction_id: Mapped[str | None] = mapped_column(String(32))
    refund_id: Mapped[str | None] = mapped_column(String(32))
    override_reason: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentDisputeMessage(Base):
    """One message of a dispute's thread: the customer's, an admin's, or the system's (``author_role``)."""

    __tablename__ = "payment_dispute_message"
    __table_args__ = (
        CheckConstraint("author_role IN ('customer', 'admin', 'system')", name="author_role"),
        Index("ix_payment_dispute_message_dispute_id", "dispute_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dispute_id: Mapped[str] = mapped_column(ForeignKey("payment_dispute.id"))
    author_id: Mapped[str | None] = mapped_column(ForeignKey("auth_user.id"))
    author_role: Mapped[str] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(String(5000))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# ---- guest checkout and reconciliation (issue 5: return page, checkout_url, guest checkout, reconciliation)


class PaymentGuestOrder(Base):
    """An order placed by a guest (an email, no login). ``new_account`` says the passwordless account was made
    for this order: only such an account, still without a password, is ever offered a claim link.
    ``notified_at`` is set once the email about the credits (a claim link, or a plain notice) is queued."""

    __tablename__ = "payment_guest_order"
    __table_args__ = (
        Index("ix_payment_guest_order_user_id", "user_id"),
        Index("ix_payment_guest_order_notified_at", "notified_at"),
    )

    order_id: Mapped[str] = mapped_column(ForeignKey("payment_order.id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_user.id"))
    email: Mapped[str] = mapped_column(String(320))
    new_account: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PaymentReconciliation(Base):
    """When the reconciliation job last asked the gateway about an attempt still unpaid, and when it asks
    next (backing off), so a stuck order is not asked about on every run."""

    __tablename__ = "payment_reconciliation"
    __table_args__ = (Index("ix_payment_reconciliation_next_check_at", "next_check_at"),)

    attempt_id: Mapped[str] = mapped_column(ForeignKey("payment_attempt.id"), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("payment_order.id"))
    checks: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_check_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_result: Mapped[str | None] = mapped_column(String(500))


# ---------------------------------------------------------------- refunds (payments/refunds.py holds the rules)

REFUND_STATUSES = ("created", "pending", "processed", "failed")
REFUND_KINDS = ("admin", "duplicate_payment")
CLAWBACK_POLICIES = ("available", "negative", "none")


class PaymentRefund(Base):
    """Money given back for one captured payment of an order. Written and committed (``created``) before the
    gateway is asked; its id is the gateway's idempotency key. ``pending`` once the gateway accepted it and
    has not settled it yet; ``processed`` or ``failed`` for good. ``credits`` is what the refund takes back in
    proportion to the money (kept under the ``none`` policy too, as bookkeeping:
    ``credits_taken`` says what was actually taken); ``credits_held`` what was reserved at creation
    (``hold_id``). ``kind`` ``duplicate_payment`` is the automatic refund of a second captured payment
    (``dedup_key`` makes it once per payment)."""

    __tablename__ = "payment_refund"
    __table_args__ = (
        CheckConstraint(_one_of("status", REFUND_STATUSES), name="status"),
        CheckConstraint(_one_of("kind", REFUND_KINDS), name="kind"),
        CheckConstraint(_one_of("clawback", CLAWBACK_POLICIES), name="clawback"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint(
            "credits >= 0 AND credits_held >= 0 AND credits_taken >= 0", name="credits_non_negative"
        ),
        UniqueConstraint("gateway", "gateway_refund_id"),
        UniqueConstraint("dedup_key"),
        Index("ix_payment_refund_order_id", "order_id"),
        Index("ix_payment_refund_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("payment_order.id"))
    kind: Mapped[str] = mapped_column(String(24), default="admin")
    status: Mapped[str] = mapped_column(String(16), default="created")
    gateway: Mapped[str] = mapped_column(String(32))
    payment_id: Mapped[str] = mapped_column(String(255))
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(500))
    clawback: Mapped[str] = mapped_column(String(16))
    asset: Mapped[str] = mapped_column(String(16))
    credits: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_held: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_taken: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_id: Mapped[str | None] = mapped_column(String(32))
    gateway_refund_id: Mapped[str | None] = mapped_column(String(255))
    dedup_key: Mapped[str | None] = mapped_column(String(300))
    failure_reason: Mapped[str | None] = mapped_column(String(500))
    send_attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(1000))
    created_by: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
