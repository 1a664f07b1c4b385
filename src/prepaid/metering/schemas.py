"""Metering request and answer bodies."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import EmailStr, Field, StringConstraints

from prepaid.ledger.schemas import (
    MAX_AMOUNT,
    WalletId,
    WalletRead,
    _Integer,
)
from prepaid.schemas import Input, Output, Timestamp

# === usage (customers by external id, usage events) ===

MAX_BATCH = 1000
ExternalId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")]
UsageId = Annotated[
    str,
    StringConstraints(strip_whitespace=False, min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$"),
    Field(
        description="The app's own id for this use: unique in the deployment and kept forever. The same id "
        "sent again answers the stored event (replayed) and charges nothing; an event refused for want of "
        "credits is not stored, so its id may be sent again after a top-up."
    ),
]
Count = Annotated[int, Field(ge=0, le=MAX_AMOUNT), _Integer]
Text = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00]*$")]
Phone = Annotated[str, StringConstraints(max_length=32, pattern=r"^[^\x00]*$")]


class CustomerUpdate(Input):
    """Create or update a customer by the app's own id; a field left out is left as it is."""

    name: Text | None = None
    email: EmailStr | None = None
    phone: Phone | None = None


class CustomerBalance(Output):
    """The customer's credits over all their wallets (``balance = available + held``)."""

    asset: str
    balance: int
    available: int
    held: int
    debt: int


class CustomerRead(Output):
    object: Literal["customer"] = "customer"
    id: str
    external_id: str | None
    name: str
    email: str | None
    phone: str | None
    created_at: datetime
    provisioned: bool = Field(
        default=False, description="True when this request created the customer (and granted signup credits)."
    )
    balance: CustomerBalance
    wallets: list[WalletRead]


class UsageCreate(Input):
    """One use of a meter by a customer (a user id or the app's ``external_id``) or on a wallet (exactly one of
    them: otherwise ``400 customer_or_wallet``): a unit meter takes ``quantity``, a model meter token counts."""

    id: UsageId
    customer: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    wallet: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    meter: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    quantity: Count | None = None
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cached_input_tokens: Count | None = None
    timestamp: Timestamp | None = Field(
        default=None,
        description="When the use happened (default: when it is received). Prices are always "
        "those in force when the event is received.",
    )
    metadata: dict[str, Any] | None = None


class UsageBatchCreate(Input):
    events: Annotated[list[UsageCreate], Field(min_length=1, max_length=MAX_BATCH)]


class UsageRead(Output):
    object: Literal["usage"] = "usage"
    id: str
    customer: str
    wallet: str
    meter: str
    quantity: int | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    cost: int
    asset: str
    balance_after: int = Field(description="The wallet's available credits right after this event.")
    transaction: str | None
    batch: str | None
    metadata: dict[str, Any]
    timestamp: datetime
    created_at: datetime
    replayed: bool = False


class UsageError(Output):
    type: str
    code: str
    message: str
    param: str | None = None
    available: int | None = None
    asset: str | None = None


class UsageBatchItem(Output):
    index: int
    id: str
    status: Literal["charged", "duplicate", "refused"]
    usage: UsageRead | None = None
    error: UsageError | None = None


class UsageBatchRead(Output):
    object: Literal["usage_batch"] = "usage_batch"
    id: str
    charged: int
    duplicates: int
    refused: int
    cost: int
    data: list[UsageBatchItem]


class UsageSummaryRow(Output):
    day: date
    meter: str
    events: int
    quantity: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost: int
    asset: str


class UsageSummary(Output):
    object: Literal["usage_summary"] = "usage_summary"
    timezone: str
    data: list[UsageSummaryRow]


# === end usage ===


# === sessions (holds for AI calls, metered sessions) ===

SessionStatus = Literal["active", "ended"]
EndReason = Literal["stopped", "insufficient_credits", "heartbeat_timeout"]
MeterCode = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Seconds = Annotated[int, Field(ge=1, le=86_400), _Integer]


class SessionCreate(Input):
    meter: MeterCode = Field(description="A unit meter priced per second, minute or hour.")
    customer: ExternalId | None = Field(
        default=None, description="A user id or external id (admins and server keys); default the caller."
    )
    wallet: WalletId | None = Field(
        default=None, description="One of the customer's wallets; default theirs."
    )
    interval_seconds: Seconds = Field(default=60, description="How far ahead credits are held.")
    grace_seconds: Seconds = Field(
        default=30, description="The longest silence between heartbeats; at most interval_seconds."
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionHeartbeat(Input):
    metrics: dict[str, Any] | None = None


class SessionStop(Input):
    pass


class SessionRead(Output):
    object: Literal["session"] = "session"
    id: str
    user_id: str
    wallet_id: str
    meter: str
    unit: str
    price: int
    per: int
    asset: str
    interval_seconds: int
    grace_seconds: int
    status: SessionStatus
    end_reason: EndReason | None
    held: int
    charged: int
    released: int
    heartbeats: int
    metrics: dict[str, Any] | None
    metadata: dict[str, Any]
    started_at: datetime
    last_heartbeat_at: datetime
    covered_until: datetime | None
    billed_until: datetime | None
    ended_at: datetime | None

    @classmethod
    def of(cls, session: Any) -> SessionRead:
        return cls(
            id=session.id,
            user_id=session.user_id,
            wallet_id=session.wallet_id,
            meter=session.meter_code,
            unit=session.unit,
            price=session.price,
            per=session.per,
            asset=session.asset,
            interval_seconds=session.interval_seconds,
            grace_seconds=session.grace_seconds,
            status=session.status,
            end_reason=session.end_reason,
            held=session.held,
            charged=session.charged,
            released=session.released,
            heartbeats=session.heartbeats,
            metrics=session.metrics,
            metadata=session.metadata_,
            started_at=session.started_at,
            last_heartbeat_at=session.last_heartbeat_at,
            covered_until=session.covered_until,
            billed_until=session.billed_until,
            ended_at=session.ended_at,
        )


# === end sessions ===
