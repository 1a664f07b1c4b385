"""The sandbox gateway's own tables: the state of a simulated external payment service.

Nothing outside ``payments/gateways/sandbox*`` reads or writes them; prepaid's orders refer to a sandbox order
only by its id, exactly as they refer to a Razorpay order. Ids are shaped like Razorpay's (``order_sbx_...``,
``pay_sbx_...``, ``rfnd_sbx_...``, ``evt_sbx_...``) so logs and payloads read the same.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from prepaid.db import Base, UTCDateTime, utcnow

ORDER_STATUSES = ("created", "attempted", "paid")
PAYMENT_STATUSES = ("created", "authorized", "captured", "refunded", "failed")
REFUND_STATUSES = ("pending", "processed", "failed")
WEBHOOK_STATUSES = ("pending", "delivered", "abandoned")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


class SandboxOrder(Base):
    """A sandbox order (Razorpay's order entity): one per attempt, found by its receipt (our reference)."""

    __tablename__ = "payment_sandbox_order"
    __table_args__ = (
        CheckConstraint(_in("status", ORDER_STATUSES), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("amount_paid >= 0", name="amount_paid_non_negative"),
        Index("ix_payment_sandbox_order_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    amount_paid: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="created")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    description: Mapped[str] = mapped_column(String(256), default="")
    customer_email: Mapped[str | None] = mapped_column(String(320))
    return_url: Mapped[str | None] = mapped_column(String(2000))
    cancel_url: Mapped[str | None] = mapped_column(String(2000))
    # the per-checkout secret the page's CSRF tokens are derived from (never shown as such)
    checkout_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class SandboxPayment(Base):
    """One try at paying a sandbox order. The card number is never stored: only its network and last 4."""

    __tablename__ = "payment_sandbox_payment"
    __table_args__ = (
        CheckConstraint(_in("status", PAYMENT_STATUSES), name="status"),
        CheckConstraint("method IN ('card', 'upi')", name="method"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("amount_refunded >= 0 AND amount_refunded <= amount", name="refund_within_amount"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("payment_sandbox_order.id"), index=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(16))
    card_network: Mapped[str | None] = mapped_column(String(32))
    card_last4: Mapped[str | None] = mapped_column(String(4))
    vpa: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_reason: Mapped[str | None] = mapped_column(String(64))
    error_description: Mapped[str | None] = mapped_column(String(255))
    amount_refunded: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class SandboxRefund(Base):
    """A refund of a sandbox payment; ``idempotency_key`` (our refund id) makes a retried refund the same one."""

    __tablename__ = "payment_sandbox_refund"
    __table_args__ = (
        CheckConstraint(_in("status", REFUND_STATUSES), name="status"),
        CheckConstraint("amount > 0", name="amount_positive"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    payment_id: Mapped[str] = mapped_column(ForeignKey("payment_sandbox_payment.id"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class SandboxWebhook(Base):
    """One delivery of a signed webhook to this server. ``event_id`` is the ``x-razorpay-event-id``; with
    ``PREPAID_SANDBOX_CHAOS`` one event may have two deliveries. ``body`` is the exact signed text."""

    __tablename__ = "payment_sandbox_webhook"
    __table_args__ = (
        CheckConstraint(_in("status", WEBHOOK_STATUSES), name="status"),
        Index("ix_payment_sandbox_webhook_due", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(40), index=True)
    event: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(40), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(500))
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
