"""The double-entry ledger.

Every balance is an account. A customer's wallet is two accounts: the wallet itself (what can be spent) and
its hold account (credits reserved by pending holds), so a hold is an ordinary movement between them. The
wallet row caches both sums: ``available`` (its own postings) and ``held`` (its hold account's postings);
the wallet shows ``balance = available + held``. System accounts (``@sales``, ``@usage``, ...) take the other
side of every movement and keep no cached balance, so no movement ever waits on them.

A wallet's credits live in lots. ``wallet.balance = sum(lot.remaining) - debt`` always holds; a pending hold's
credits are taken out of their lots into hold allocations and go back (release) or out (capture).

The many-to-one relationships below are never loaded (``lazy="raise"``): they are there so the unit of work
inserts a transaction before the postings, lots and holds that refer to it (without a relationship SQLAlchemy
does not order inserts across tables, and the foreign keys are checked at once).
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
    String,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from prepaid.db import Base, JSONType, UTCDateTime, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


class LedgerMeta(Base):
    """Facts fixed when the database was created, such as the credit scale."""

    __tablename__ = "ledger_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class Account(Base):
    __tablename__ = "ledger_account"
    __table_args__ = (
        CheckConstraint("kind IN ('wallet', 'hold', 'system')", name="kind"),
        CheckConstraint("held >= 0", name="held_non_negative"),
        CheckConstraint("debt >= 0", name="debt_non_negative"),
        CheckConstraint("clawback_debt >= 0 AND clawback_debt <= debt", name="clawback_debt_within_debt"),
        CheckConstraint("overdraft_limit >= 0", name="overdraft_limit_non_negative"),
        # Spending never goes below the overdraft limit; only a clawback (clawback_debt) goes further.
        CheckConstraint(
            "kind <> 'wallet' OR balance >= -(overdraft_limit + clawback_debt)",
            name="balance_within_overdraft",
        ),
        Index("ix_ledger_account_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    code: Mapped[str | None] = mapped_column(String(64), unique=True)
    user_id: Mapped[str | None] = mapped_column(ForeignKey("auth_user.id"))
    hold_account_id: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(200), default="")
    asset: Mapped[str] = mapped_column(String(16))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    held: Mapped[int] = mapped_column(BigInteger, default=0)
    debt: Mapped[int] = mapped_column(BigInteger, default=0)
    clawback_debt: Mapped[int] = mapped_column(BigInteger, default=0)
    overdraft_limit: Mapped[int] = mapped_column(BigInteger, default=0)
    low_balance_threshold: Mapped[int | None] = mapped_column(BigInteger)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    @property
    def available(self) -> int:
        return self.balance

    @property
    def total(self) -> int:
        """What the wallet holds, reserved credits included (the design's ``balance``)."""
        return self.balance + self.held


class Transaction(Base):
    """``lot_moves`` records which lots a movement took from or added to (``[[lot_id, amount], ...]``) and
    ``debt_change`` how it moved the wallet's debt, so a reversal can put every credit back where it was."""

    __tablename__ = "ledger_transaction"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('purchase', 'grant', 'spend', 'hold', 'capture', 'release', 'transfer', 'refund', "
            "'clawback', 'expire', 'adjustment', 'reversal')",
            name="kind",
        ),
        Index("ix_ledger_transaction_reference", "reference_type", "reference_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    reference_type: Mapped[str | None] = mapped_column(String(32))
    reference_id: Mapped[str | None] = mapped_column(String(64))
    reverses_id: Mapped[str | None] = mapped_column(ForeignKey("ledger_transaction.id"))
    memo: Mapped[str] = mapped_column(String(500), default="")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    actor_user_id: Mapped[str | None] = mapped_column(String(32))
    lot_moves: Mapped[list[list[Any]]] = mapped_column(JSONType, default=list)
    debt_change: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Posting(Base):
    """One leg of a transaction. Append-only; a correction is a new reversing transaction."""

    __tablename__ = "ledger_posting"
    __table_args__ = (
        CheckConstraint("amount <> 0", name="amount_non_zero"),
        Index("ix_ledger_posting_account_id_id", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transaction.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("ledger_account.id"))
    asset: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    transaction: Mapped[Transaction] = relationship(lazy="raise")
    account: Mapped[Account] = relationship(lazy="raise")


class Lot(Base):
    __tablename__ = "ledger_lot"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("remaining >= 0 AND remaining <= amount", name="remaining_within_amount"),
        CheckConstraint("source IN ('paid', 'promotional', 'refund', 'adjustment')", name="source"),
        Index("ix_ledger_lot_wallet_id_remaining", "wallet_id", "remaining"),
        Index("ix_ledger_lot_expires_at", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    wallet_id: Mapped[str] = mapped_column(ForeignKey("ledger_account.id"))
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transaction.id"))
    asset: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)
    amount: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    transaction: Mapped[Transaction] = relationship(lazy="raise")
    wallet: Mapped[Account] = relationship(lazy="raise")


class Hold(Base):
    __tablename__ = "ledger_hold"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("captured >= 0 AND captured <= amount", name="captured_within_amount"),
        CheckConstraint("status IN ('pending', 'captured', 'released', 'expired')", name="status"),
        Index("ix_ledger_hold_status_expires_at", "status", "expires_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    wallet_id: Mapped[str] = mapped_column(ForeignKey("ledger_account.id"), index=True)
    asset: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    hold_transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transaction.id"))
    resolve_transaction_id: Mapped[str | None] = mapped_column(ForeignKey("ledger_transaction.id"))
    reference_type: Mapped[str | None] = mapped_column(String(32))
    reference_id: Mapped[str | None] = mapped_column(String(64))
    memo: Mapped[str] = mapped_column(String(500), default="")
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    hold_transaction: Mapped[Transaction] = relationship(foreign_keys=[hold_transaction_id], lazy="raise")
    resolve_transaction: Mapped[Transaction | None] = relationship(
        foreign_keys=[resolve_transaction_id], lazy="raise"
    )
    wallet: Mapped[Account] = relationship(lazy="raise")


class HoldAllocation(Base):
    """Which lots a pending hold took its credits from, so a release puts them back where they were."""

    __tablename__ = "ledger_hold_allocation"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    hold_id: Mapped[str] = mapped_column(ForeignKey("ledger_hold.id"), index=True)
    lot_id: Mapped[str | None] = mapped_column(ForeignKey("ledger_lot.id"))  # None: taken on overdraft
    amount: Mapped[int] = mapped_column(BigInteger)

    hold: Mapped[Hold] = relationship(lazy="raise")
    lot: Mapped[Lot | None] = relationship(lazy="raise")
