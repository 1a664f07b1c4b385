"""In-app notifications over HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from prepaid.schemas import Input, Output


class NotificationRead(Output):
    object: Literal["notification"] = "notification"
    id: str
    kind: str = Field(
        description="payment_succeeded, payment_failed, refund_processed, dispute_updated, low_balance; for "
        "admins also order_flagged, chargeback_opened, failure_rate_high"
    )
    title: str
    body: str = Field(description="The message as text, amounts formatted with their currency")
    data: dict[str, Any] = Field(
        description="The facts, as stored: ids, amounts in minor units with their currency, credits in the "
        "credit asset's smallest unit"
    )
    read: bool
    read_at: datetime | None
    created_at: datetime


class NotificationDeleted(Output):
    object: Literal["notification"] = "notification"
    id: str
    deleted: Literal[True] = True


# ---------------------------------------------------------------- outgoing webhooks (notify/webhooks_out.py)


class WebhookEndpointCreate(Input):
    url: str = Field(
        min_length=1, max_length=2000, description="Where events are POSTed (https in production)"
    )
    event_types: list[str] = Field(
        min_length=1,
        max_length=20,
        description="Event types to receive: order.paid, usage.recorded, session.started, session.ended, "
        "wallet.low_balance",
    )
    description: str | None = Field(default=None, max_length=500)


class WebhookEndpointRead(Output):
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    id: str
    url: str
    description: str | None
    event_types: list[str]
    created_at: datetime
    deleted: bool = False


class WebhookEndpointCreated(WebhookEndpointRead):
    secret: str = Field(description="Signs every delivery (Prepaid-Signature); shown only in this answer")


class WebhookDeliveryRead(Output):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: str = Field(
        description="pending, sending, succeeded, failed (after 3 days of retries), cancelled"
    )
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    redelivery_of: str | None
    created_at: datetime
    body: dict[str, Any] = Field(description="The event as sent")
