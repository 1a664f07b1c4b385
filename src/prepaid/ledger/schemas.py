"""Ledger request and answer bodies.

Amounts are integers in the asset's smallest unit (the credit's unit is set by ``PREPAID_CREDIT_SCALE``), and
every answer that carries an amount names its ``asset``. Every request that moves credits carries an
``idempotency_key``: the ledger makes the movement exactly once per key (per user), and a retry with the same
key and the same request answers the same transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictBool, StringConstraints

from prepaid.errors import InvalidRequest
from prepaid.ledger.models import Account, Hold, Posting, Transaction
from prepaid.ledger.service import Movement, WalletBalance
from prepaid.schemas import Input, Output, Timestamp

# Far inside BIGINT, and inside the integers a JavaScript client reads exactly (2**53).
MAX_AMOUNT = 10**15
DEFAULT_HOLD_SECONDS = 15 * 60
MAX_HOLD_SECONDS = 30 * 24 * 3600


def _json_integer(value: Any) -> Any:
    """A JSON integer (``5``, or ``5.0``, which JSON Schema also counts as one); never a string or a boolean."""
    if isinstance(value, (str, bool)):
        raise ValueError("expected an integer")
    return value


_Integer = BeforeValidator(_json_integer)
Amount = Annotated[int, Field(gt=0, le=MAX_AMOUNT, description="In the asset's smallest unit."), _Integer]
Limit = Annotated[int, Field(ge=0, le=MAX_AMOUNT), _Integer]
Priority = Annotated[int, Field(ge=0, le=1000, description="Lower is spent first."), _Integer]
IdempotencyKey = Annotated[
    str,
    StringConstraints(strip_whitespace=False, min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$"),
    Field(
        description="Makes the movement exactly once: a retry with the same key and the same request answers "
        "the same transaction; the same key with another request is 400 idempotency_error. Keys are per user."
    ),
]
# Text a person reads back; NUL is refused (PostgreSQL cannot store it).
Reason = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00]*$")]
WalletName = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")
]
WalletId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Source = Literal["paid", "promotional", "refund", "adjustment"]
Kind = Literal[
    "purchase",
    "grant",
    "spend",
    "hold",
    "capture",
    "release",
    "transfer",
    "refund",
    "clawback",
    "expire",
    "adjustment",
    "reversal",
]
HoldStatus = Literal["pending", "captured", "released", "expired"]


# ---------------------------------------------------------------- requests


class WalletCreate(Input):
    name: WalletName
    low_balance_threshold: Limit | None = None


class WalletUpdate(Input):
    """The owner may change ``name`` and ``low_balance_threshold`` (``null`` turns the alert off); only admins
    ``overdraft_limit`` and ``frozen``."""

    name: WalletName | None = None
    low_balance_threshold: Limit | None = None
    overdraft_limit: Limit | None = None
    frozen: StrictBool | None = None


class GrantCreate(Input):
    amount: Amount
    source: Source = "promotional"
    priority: Priority | None = Field(
        default=None, description="Default by source: promotional 10, adjustment 20, refund 30, paid 40."
    )
    expires_at: Timestamp | None = None
    reason: Reason = ""
    idempotency_key: IdempotencyKey


class DebitCreate(Input):
    amount: Amount
    reason: Reason = ""
    idempotency_key: IdempotencyKey


TokenCount = Annotated[int, Field(ge=0, le=MAX_AMOUNT), _Integer]
MeterCode = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class HoldEstimate(Input):
    """The worst case of a model call, priced by its model meter: the prompt (``input_tokens`` uncached and
    ``cached_input_tokens``) and ``max_output_tokens`` of output."""

    meter: MeterCode
    input_tokens: TokenCount
    max_output_tokens: TokenCount
    cached_input_tokens: TokenCount = 0


class CaptureUsage(Input):
    """The real token counts of the call made under a hold from an estimate, priced by the hold's meter."""

    input_tokens: TokenCount
    output_tokens: TokenCount
    cached_input_tokens: TokenCount = 0


class HoldCreate(Input):
    """Give exactly one of ``amount`` and ``estimate`` (400 ``amount_or_estimate`` otherwise)."""

    wallet: WalletId
    amount: Amount | None = None
    estimate: HoldEstimate | None = Field(
        default=None, description="Instead of amount: hold what this model call costs at worst."
    )
    expires_in: Annotated[int, Field(ge=1, le=MAX_HOLD_SECONDS), _Integer] | None = Field(
        default=None, description=f"Seconds; give this or expires_at (default {DEFAULT_HOLD_SECONDS})."
    )
    expires_at: Timestamp | None = None
    reason: Reason = ""
    idempotency_key: IdempotencyKey

    def expiry(self, now: datetime) -> datetime:
        """When the hold lapses: ``expires_in`` seconds or ``expires_at``, at most 30 days ahead."""
        if self.expires_in is not None and self.expires_at is not None:
            raise InvalidRequest(
                "Give expires_in or expires_at, not both.", code="conflicting_fields", param="expires_at"
            )
        if self.expires_at is None:
            return now + timedelta(seconds=self.expires_in or DEFAULT_HOLD_SECONDS)
        if self.expires_at > now + timedelta(seconds=MAX_HOLD_SECONDS):
            raise InvalidRequest("A hold lasts at most 30 days.", code="invalid_expiry", param="expires_at")
        return self.expires_at


class CaptureRequest(Input):
    """At most one of ``amount`` and ``usage`` (both: 400 ``amount_or_usage``); neither captures all of it."""

    amount: Amount | None = Field(
        default=None, description="What to charge, up to the hold; the rest is released. Default: all of it."
    )
    usage: CaptureUsage | None = Field(
        default=None,
        description="Instead of amount, for a hold made from an estimate: the real token counts, priced by the "
        "hold's meter; their cost is charged (at most the hold) and the rest released.",
    )
    reason: Reason = ""
    idempotency_key: IdempotencyKey


class ReleaseRequest(Input):
    reason: Reason = ""
    idempotency_key: IdempotencyKey


class TransferCreate(Input):
    from_wallet: WalletId
    to_wallet: WalletId
    amount: Amount
    reason: Reason = ""
    idempotency_key: IdempotencyKey


# ---------------------------------------------------------------- answers


class WalletRead(Output):
    """``balance = available + held``; ``paid``, ``promotional``, ``refund`` and ``adjustment`` are what the
    wallet's live lots hold by source (credits reserved by pending holds are out of their lots)."""

    object: Literal["wallet"] = "wallet"
    id: str
    user_id: str
    name: str
    asset: str
    balance: int
    held: int
    available: int
    debt: int
    paid: int
    promotional: int
    refund: int
    adjustment: int
    overdraft_limit: int
    frozen: bool
    is_default: bool
    low_balance_threshold: int | None
    created_at: datetime

    @classmethod
    def of(cls, wallet: Account, parts: Mapping[str, int]) -> WalletRead:
        assert wallet.user_id is not None
        return cls(
            id=wallet.id,
            user_id=wallet.user_id,
            name=wallet.name,
            asset=wallet.asset,
            balance=wallet.total,
            held=wallet.held,
            available=wallet.available,
            debt=wallet.debt,
            paid=parts.get("paid", 0),
            promotional=parts.get("promotional", 0),
            refund=parts.get("refund", 0),
            adjustment=parts.get("adjustment", 0),
            overdraft_limit=wallet.overdraft_limit,
            frozen=wallet.frozen,
            is_default=wallet.is_default,
            low_balance_threshold=wallet.low_balance_threshold,
            created_at=wallet.created_at,
        )


class WalletBalanceRead(Output):
    object: Literal["wallet_balance"] = "wallet_balance"
    wallet_id: str
    asset: str
    balance: int
    held: int
    available: int
    debt: int

    @classmethod
    def of(cls, balance: WalletBalance) -> WalletBalanceRead:
        return cls(
            wallet_id=balance.wallet_id,
            asset=balance.asset,
            balance=balance.balance,
            held=balance.held,
            available=balance.available,
            debt=balance.debt,
        )


class PostingRead(Output):
    account_id: str
    asset: str
    amount: int


class TransactionRead(Output):
    object: Literal["transaction"] = "transaction"
    id: str
    kind: str
    reason: str
    reference_type: str | None
    reference_id: str | None
    reverses_id: str | None
    metadata: dict[str, Any]
    postings: list[PostingRead]
    created_at: datetime

    @classmethod
    def of(cls, transaction: Transaction, postings: Sequence[Posting]) -> TransactionRead:
        return cls(
            id=transaction.id,
            kind=transaction.kind,
            reason=transaction.memo,
            reference_type=transaction.reference_type,
            reference_id=transaction.reference_id,
            reverses_id=transaction.reverses_id,
            metadata=dict(transaction.metadata_ or {}),
            postings=[PostingRead.model_validate(posting) for posting in postings],
            created_at=transaction.created_at,
        )


class LotRead(Output):
    object: Literal["lot"] = "lot"
    id: str
    wallet_id: str
    transaction_id: str
    asset: str
    source: str
    priority: int
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime


class HoldRead(Output):
    object: Literal["hold"] = "hold"
    id: str
    wallet_id: str
    asset: str
    amount: int
    captured: int
    status: HoldStatus
    reason: str
    hold_transaction_id: str
    resolve_transaction_id: str | None
    expires_at: datetime
    created_at: datetime
    resolved_at: datetime | None

    @classmethod
    def of(cls, hold: Hold) -> HoldRead:
        return cls(
            id=hold.id,
            wallet_id=hold.wallet_id,
            asset=hold.asset,
            amount=hold.amount,
            captured=hold.captured,
            status=hold.status,
            reason=hold.memo,
            hold_transaction_id=hold.hold_transaction_id,
            resolve_transaction_id=hold.resolve_transaction_id,
            expires_at=hold.expires_at,
            created_at=hold.created_at,
            resolved_at=hold.resolved_at,
        )


class MovementRead(Output):
    """A movement's transaction and the balances after it. A replay (``replayed: true``, the same
    ``idempotency_key`` again) answers the original transaction with the wallets' balances now."""

    object: Literal["movement"] = "movement"
    transaction: TransactionRead
    wallet: WalletBalanceRead = Field(description="The wallet moved (a transfer's source).")
    to_wallet: WalletBalanceRead | None = Field(
        default=None, description="A transfer's target, when it is one of the caller's wallets."
    )
    hold: HoldRead | None = None
    replayed: bool

    @classmethod
    def of(
        cls,
        movement: Movement,
        postings: Sequence[Posting],
        *,
        wallet_id: str,
        to_wallet_id: str | None = None,
    ) -> MovementRead:
        return cls(
            transaction=TransactionRead.of(movement.transaction, postings),
            wallet=WalletBalanceRead.of(movement.balances[wallet_id]),
            to_wallet=WalletBalanceRead.of(movement.balances[to_wallet_id]) if to_wallet_id else None,
            hold=HoldRead.of(movement.hold) if movement.hold is not None else None,
            replayed=movement.replayed,
        )


class HoldEstimateRead(Output):
    meter: str
    input_tokens: int
    max_output_tokens: int
    cached_input_tokens: int
    cost: int = Field(description="What the worst case costs: the amount held.")


class HoldMovementRead(MovementRead):
    """A new hold; ``estimate`` says how a hold made from an estimate was priced (null for an amount)."""

    estimate: HoldEstimateRead | None = None


class CaptureMovementRead(MovementRead):
    """A capture: what was ``charged`` and what ``released`` back to the wallet. A capture by token counts also
    names the ``meter``, what the counts ``cost``, and what of that cost lay beyond the hold (``uncharged``,
    not taken: a hold is the most the app agreed to spend)."""

    charged: int
    released: int
    meter: str | None = None
    cost: int | None = None
    uncharged: int = 0
