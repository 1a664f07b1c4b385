"""In-app notifications over HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from prepaid.schemas import Output


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
