"""Metering models."""

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
    PrimaryKeyConstraint,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from prepaid.db import Base, JSONType, UTCDateTime, utcnow

# === usage (customers by external id, usage events) ===


class UsageEvent(Base):
    """One charged use of a meter. ``event_id`` is the app's own id for it, unique in the deployment and kept
    forever (a repeat answers the stored event); ``id`` (``usg_``) orders the list. A refused event (not enough
    credits, unknown meter) is never stored, so its ``event_id`` can be sent again. Events of one batch on one
    wallet share one ledger transaction (``transaction_id``); a single event has its own. ``cost`` is what was
    charged, priced at the catalog's price when the event was received; ``balance_after`` the wallet's
    ``available`` right after this event's charge."""

    __tablename__ = "metering_usage"
    __table_args__ = (
        Index("ix_metering_usage_wallet_id_id", "wallet_id", "id"),
        Index("ix_metering_usage_user_id_id", "user_id", "id"),
        Index("ix_metering_usage_occurred_at", "occurred_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    # No foreign keys here, on purpose: on PostgreSQL a foreign key check takes FOR KEY SHARE on the wallet row,
    # which two requests claiming events on one wallet would each hold while waiting for the other's
    # FOR UPDATE (the ledger's wallet lock): a deadlock. Both ids come from rows the request has just read.
    user_id: Mapped[str] = mapped_column(String(32))
    wallet_id: Mapped[str] = mapped_column(String(32))
    meter_code: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int | None] = mapped_column(BigInteger)
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost: Mapped[int] = mapped_column(BigInteger)
    asset: Mapped[str] = mapped_column(String(16))
    balance_after: Mapped[int] = mapped_column(BigInteger)
    transaction_id: Mapped[str | None] = mapped_column(String(32))
    batch_id: Mapped[str | None] = mapped_column(String(32))
    api_key_id: Mapped[str | None] = mapped_column(String(32))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# === end usage ===


# === sessions (metered sessions, low-balance alerts) ===


class MeteredSession(Base):
    """A metered session (``ses_``): a customer's wallet charged by the second for a meter whose unit is a
    second, minute or hour. The rate is a snapshot taken at start (``price`` credit minor units per ``per``
    units of ``unit_seconds`` seconds). ``held`` credits are reserved one interval ahead in ledger holds
    (``metering_session_hold``); ``covered_until`` is how far they pay for (None: a free meter). Ended sessions
    carry ``end_reason``, ``billed_until`` (where billing stopped), ``charged`` and ``released``."""

    __tablename__ = "metering_session"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'ended')", name="status"),
        CheckConstraint(
            "end_reason IS NULL OR end_reason IN ('stopped', 'insufficient_credits', 'heartbeat_timeout')",
            name="end_reason",
        ),
        CheckConstraint("held >= 0 AND charged >= 0 AND charged <= held", name="amounts"),
        CheckConstraint("price >= 0 AND per >= 1 AND unit_seconds >= 1", name="rate"),
        Index("ix_metering_session_user_id_id", "user_id", "id"),
        Index("ix_metering_session_status_due_at", "status", "due_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_user.id"))
    wallet_id: Mapped[str] = mapped_column(ForeignKey("ledger_account.id"))
    meter_code: Mapped[str] = mapped_column(String(64))
    unit: Mapped[str] = mapped_column(String(16))
    price: Mapped[int] = mapped_column(BigInteger)
    per: Mapped[int] = mapped_column(BigInteger)
    unit_seconds: Mapped[int] = mapped_column(Integer)
    asset: Mapped[str] = mapped_column(String(16))
    interval_seconds: Mapped[int] = mapped_column(Integer)
    grace_seconds: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active")
    end_reason: Mapped[str | None] = mapped_column(String(32))
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    holds: Mapped[int] = mapped_column(Integer, default=0)
    charged: Mapped[int] = mapped_column(BigInteger, default=0)
    released: Mapped[int] = mapped_column(BigInteger, default=0)
    heartbeats: Mapped[int] = mapped_column(Integer, default=0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    covered_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the server ends it here unless a heartbeat comes
    billed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class MeteredSessionHold(Base):
    """The ledger holds of a session, in the order they were made (``seq`` from 1)."""

    __tablename__ = "metering_session_hold"
    __table_args__ = (PrimaryKeyConstraint("session_id", "seq"),)

    session_id: Mapped[str] = mapped_column(ForeignKey("metering_session.id"))
    seq: Mapped[int] = mapped_column(Integer)
    hold_id: Mapped[str] = mapped_column(String(32))
    amount: Mapped[int] = mapped_column(BigInteger)


class LowBalanceAlert(Base):
    """A wallet's low-balance alert state: ``below`` once the alert fired (available under the threshold),
    back to False (re-armed) when available reaches the threshold again."""

    __tablename__ = "metering_low_balance"

    wallet_id: Mapped[str] = mapped_column(ForeignKey("ledger_account.id"), primary_key=True)
    below: Mapped[bool] = mapped_column(Boolean, default=False)
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rearmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    fired: Mapped[int] = mapped_column(Integer, default=0)


# === end sessions ===
