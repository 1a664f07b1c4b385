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
