from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from prepaid.db import Base, JSONType, UTCDateTime, utcnow


class OutboxMessage(Base):
    """A message written in the same transaction as the change it announces, delivered after commit.

    Status: ``pending`` (due at ``next_attempt_at``) -> ``sending`` (claimed by one runner) -> ``sent``;
    a failed attempt goes back to ``pending`` with backoff until ``failed`` after the last attempt.
    """

    __tablename__ = "notify_outbox"
    __table_args__ = (Index("ix_notify_outbox_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(320))
    template: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Notification(Base):
    """An in-app notification of one user: a ``kind`` (``service.KINDS``) and its facts (``data``: ids and
    integer amounts, formatted when shown). ``dedupe_key``, when set, makes a second notification of the same
    fact for the same user a no-op (``service.notify``)."""

    __tablename__ = "notify_notification"
    __table_args__ = (
        Index("ix_notify_notification_user_id_id", "user_id", "id"),
        UniqueConstraint("user_id", "dedupe_key", name="uq_notify_notification_user_id_dedupe_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(32), ForeignKey("auth_user.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AlertMark(Base):
    """When an admin alert of one ``name`` last fired (the failure-rate alert fires at most once an hour)."""

    __tablename__ = "notify_alert_mark"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime)


# ---------------------------------------------------------------- outgoing webhooks (notify/webhooks_out.py)


class WebhookEndpoint(Base):
    """An app's URL that receives events of the types it subscribed to, signed with its secret (shown once, at
    creation). The secret is kept sealed (``secret_sealed``: AES-GCM under a key derived from
    ``PREPAID_SECRET_KEY`` and the endpoint's id, ``webhooks_out.seal_secret``): the database alone does not
    reveal it. Deleting one sets ``deleted_at``, cancels what was still waiting and forgets the secret (None);
    its deliveries stay in the log."""

    __tablename__ = "notify_webhook_endpoint"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str | None] = mapped_column(String(500))
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookDelivery(Base):
    """One event for one endpoint: an outbox row written in the event's own transaction and sent after commit.

    Status ``pending`` (due at ``next_attempt_at``) -> ``sending`` (claimed) -> ``succeeded`` (a 2xx answer);
    a failed attempt goes back to ``pending`` with exponential backoff until ``give_up_at`` (3 days after the
    event), then ``failed``; ``cancelled`` when its endpoint is deleted. ``body`` is the exact JSON sent on
    every attempt (the signature's timestamp is new each time). A redelivery is a new row (``redelivery_of``)."""

    __tablename__ = "notify_webhook_delivery"
    __table_args__ = (
        Index("ix_notify_webhook_delivery_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_notify_webhook_delivery_endpoint_id_id", "endpoint_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(32), ForeignKey("notify_webhook_endpoint.id"))
    event_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    give_up_at: Mapped[datetime] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    redelivery_of: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
