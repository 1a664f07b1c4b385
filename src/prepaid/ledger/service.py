"""Every movement of credits passes through here, and only here are ledger rows written.

Each movement:
- takes an idempotency key: the same key with the same request answers the transaction already made, with
  another request it is ``idempotency_error``;
- runs in the caller's transaction and never commits;
- locks the wallets it names, in id order (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is
  already held from ``BEGIN IMMEDIATE``), then checks its key, then decides, then writes. Two movements on one
  wallet therefore serialise, and a repeated key sent concurrently finds the first one's transaction;
- consumes lots in order: priority (lower first), then soonest expiry, then oldest; expired lots found on the
  way are swept into ``@expired`` first, so expired credits are never spent;
- returns the transaction with the wallets' balances after it.

Debt: an allowed overdraft (``overdraft_limit``) or a clawback leaves the wallet owing; any later credit repays
the debt first (clawback debt before overdraft debt). ``wallet.balance = sum(lot.remaining) - debt``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.db import utcnow
from prepaid.errors import IdempotencyError, InvalidRequest, NotFound, PermissionDenied
from prepaid.ids import new_id
from prepaid.ledger.errors import (
    AssetMismatch,
    CaptureExceedsHold,
    HoldNotPending,
    InsufficientCredits,
    WalletFrozen,
)
from prepaid.ledger.models import Account, Hold, HoldAllocation, LedgerMeta, Lot, Posting, Transaction
from prepaid.money import CREDIT
from prepaid.pagination import Page, PageParams, paginate

Source = Literal["paid", "promotional", "refund", "adjustment"]
SOURCES: tuple[Source, ...] = ("paid", "promotional", "refund", "adjustment")
# Lower is spent first: promotional credits go before anything bought.
DEFAULT_PRIORITY: dict[str, int] = {"promotional": 10, "adjustment": 20, "refund": 30, "paid": 40}

SYSTEM_ACCOUNTS = {
    "@sales": "sys_sales",
    "@promotions": "sys_promotions",
    "@usage": "sys_usage",
    "@expired": "sys_expired",
    "@refunds": "sys_refunds",
    "@adjustments": "sys_adjustments",
    "@transfers": "sys_transfers",
    "@chargebacks": "sys_chargebacks",
    "@vendor_payouts": "sys_vendor_payouts",
}


class SettingsMismatch(RuntimeError):
    """The database was created with another credit scale than the one configured now."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class WalletBalance:
    wallet_id: str
    asset: str
    available: int
    held: int
    debt: int

    @property
    def balance(self) -> int:
        return self.available + self.held


@dataclass
class Movement:
    """A transaction and the balances of the wallets it touched, after it."""

    transaction: Transaction
    balances: dict[str, WalletBalance] = field(default_factory=dict)
    hold: Hold | None = None
    replayed: bool = False


def _snapshot(wallet: Account) -> WalletBalance:
    return WalletBalance(wallet.id, wallet.asset, wallet.balance, wallet.held, wallet.debt)


def request_hash(operation: str, **params: Any) -> str:
    payload = json.dumps({"op": operation, **params}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


# ---------------------------------------------------------------- set-up


async def ensure_credit_scale(session: AsyncSession, *, scale: int) -> None:
    """Write the scale when the database is new; refuse a different one afterwards."""
    stored = await session.get(LedgerMeta, "credit_scale")
    if stored is None:
        session.add(LedgerMeta(key="credit_scale", value=str(scale)))
        await session.flush()  # a concurrent first start fails here rather than storing two scales
        return
    if int(stored.value) != scale:
        raise SettingsMismatch(
            f"This database keeps credits at scale {stored.value} (PREPAID_CREDIT_SCALE={stored.value}); "
            f"the server is configured with {scale}. Changing the scale would rescale every balance: "
            f"set PREPAID_CREDIT_SCALE={stored.value}."
        )


async def open_wallet(
    session: AsyncSession,
    *,
    user_id: str,
    name: str = "",
    is_default: bool = False,
    asset: str = CREDIT,
    low_balance_threshold: int | None = None,
) -> Account:
    hold_account = Account(id=new_id("acc"), kind="hold", user_id=user_id, name=f"{name} (held)", asset=asset)
    wallet = Account(
        id=new_id("wal"),
        kind="wallet",
        user_id=user_id,
        hold_account_id=hold_account.id,
        name=name,
        asset=asset,
        is_default=is_default,
        balance=0,
        held=0,
        debt=0,
        clawback_debt=0,
        overdraft_limit=0,
        low_balance_threshold=low_balance_threshold,
        frozen=False,
    )
    session.add_all([hold_account, wallet])
    await session.flush()  # fills defaults (timestamps) for the answer
    return wallet


async def create_wallet(
    session: AsyncSession,
    *,
    user_id: str,
    name: str,
    low_balance_threshold: int | None = None,
    actor: audit_service.Actor | None = None,
) -> Account:
    """A named extra wallet (one per AI agent, say). With ``actor`` (an admin opening it for a customer) the
    audit log records it."""
    wallet = await open_wallet(
        session, user_id=user_id, name=name, low_balance_threshold=low_balance_threshold
    )
    if actor is not None:
        await audit_service.record(
            session,
            actor=actor,
            action="wallet.create",
            object_type="wallet",
            object_id=wallet.id,
            before=None,
            after={"user_id": user_id, **_wallet_settings(wallet)},
        )
    return wallet


def _wallet_settings(wallet: Account) -> dict[str, Any]:
    return {
        "name": wallet.name,
        "low_balance_threshold": wallet.low_balance_threshold,
        "overdraft_limit": wallet.overdraft_limit,
        "frozen": wallet.frozen,
    }


async def update_wallet(
    session: AsyncSession,
    *,
    wallet_id: str,
    as_admin: bool,
    actor: audit_service.Actor | None,
    name: str | None = None,
    low_balance_threshold: int | None = None,
    clear_low_balance_threshold: bool = False,
    overdraft_limit: int | None = None,
    frozen: bool | None = None,
) -> Account:
    """The owner's settings (name, low-balance threshold) and the admin's (overdraft limit, frozen). The
    wallet is locked first: a lower overdraft limit must still cover what the wallet already owes. With
    ``actor`` a change is recorded in the audit log."""
    for field_name, value in (("overdraft_limit", overdraft_limit), ("frozen", frozen)):
        if value is not None and not as_admin:
            raise PermissionDenied(
                f"Only admins can change a wallet's {field_name}.", code="admin_required", param=field_name
            )
    wallet = (await _lock_wallets(session, [wallet_id]))[wallet_id]
    if overdraft_limit is not None and wallet.balance < -(overdraft_limit + wallet.clawback_debt):
        raise InvalidRequest(
            f"The wallet is {-wallet.balance} below zero; the overdraft limit cannot be set under what it "
            "already uses.",
            code="overdraft_limit_too_low",
            param="overdraft_limit",
        )
    before = _wallet_settings(wallet)
    if name is not None:
        wallet.name = name
    if low_balance_threshold is not None or clear_low_balance_threshold:
        wallet.low_balance_threshold = low_balance_threshold
    if overdraft_limit is not None:
        wallet.overdraft_limit = overdraft_limit
    if frozen is not None:
        wallet.frozen = frozen
    after = _wallet_settings(wallet)
    if actor is not None and after != before:
        await audit_service.record(
            session,
            actor=actor,
            action="wallet.update",
            object_type="wallet",
            object_id=wallet.id,
            before=before,
            after=after,
        )
    return wallet


# ---------------------------------------------------------------- reads


async def get_wallet(session: AsyncSession, wallet_id: str) -> Account:
    wallet = await session.get(Account, wallet_id)
    if wallet is None or wallet.kind != "wallet":
        raise NotFound(f"No wallet {wallet_id}.", param="wallet_id")
    return wallet


async def default_wallet(session: AsyncSession, *, user_id: str) -> Account:
    wallet = await session.scalar(
        select(Account).where(
            Account.user_id == user_id, Account.kind == "wallet", Account.is_default.is_(True)
        )
    )
    if wallet is None:
        raise NotFound("This customer has no default wallet.", param="customer")
    return wallet


async def list_wallets(session: AsyncSession, *, user_id: str, params: PageParams) -> Page[Account]:
    stmt = select(Account).where(Account.user_id == user_id, Account.kind == "wallet")
    return await paginate(session, stmt, Account.id, params)


async def list_transactions(
    session: AsyncSession,
    *,
    wallet: Account,
    params: PageParams,
    kind: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Page[Transaction]:
    accounts = [wallet.id, wallet.hold_account_id]
    touching = select(Posting.transaction_id).where(Posting.account_id.in_(accounts))
    stmt: Select[Transaction] = select(Transaction).where(Transaction.id.in_(touching))
    if kind:
        stmt = stmt.where(Transaction.kind == kind)
    if created_after:
        stmt = stmt.where(Transaction.created_at >= created_after)
    if created_before:
        stmt = stmt.where(Transaction.created_at < created_before)
    return await paginate(session, stmt, Transaction.id, params)


async def list_lots(session: AsyncSession, *, wallet_id: str, params: PageParams) -> Page[Lot]:
    return await paginate(session, select(Lot).where(Lot.wallet_id == wallet_id), Lot.id, params)


async def get_transaction(session: AsyncSession, transaction_id: str) -> Transaction:
    transaction = await session.get(Transaction, transaction_id)
    if transaction is None:
        raise NotFound(f"No transaction {transaction_id}.", param="transaction_id")
    return transaction


async def postings_of(session: AsyncSession, transaction_id: str) -> list[Posting]:
    return list(
        await session.scalars(
            select(Posting).where(Posting.transaction_id == transaction_id).order_by(Posting.id)
        )
    )


async def transaction_wallet_ids(session: AsyncSession, transaction_id: str) -> set[str]:
    """The wallets a transaction touched (a hold account counts as its wallet)."""
    account_ids = set(
        await session.scalars(select(Posting.account_id).where(Posting.transaction_id == transaction_id))
    )
    wallets = await session.scalars(
        select(Account.id).where(
            Account.kind == "wallet",
            or_(Account.id.in_(account_ids), Account.hold_account_id.in_(account_ids)),
        )
    )
    return set(wallets)


async def get_hold(session: AsyncSession, hold_id: str) -> Hold:
    hold = await session.get(Hold, hold_id)
    if hold is None:
        raise NotFound(f"No hold {hold_id}.", param="hold_id")
    return hold


async def lot_parts(
    session: AsyncSession, *, wallet_ids: Sequence[str], now: datetime | None = None
) -> dict[str, dict[str, int]]:
    """What each wallet's live lots (credits left, not expired) hold, by source; every source is present.

    The parts add up to ``available + debt`` once expired lots are swept: credits reserved by pending holds
    are out of their lots until the hold is captured or released."""
    parts: dict[str, dict[str, int]] = {wallet_id: dict.fromkeys(SOURCES, 0) for wallet_id in wallet_ids}
    if not parts:
        return parts
    now = now or utcnow()
    rows = await session.execute(
        select(Lot.wallet_id, Lot.source, func.sum(Lot.remaining))
        .where(
            Lot.wallet_id.in_(list(parts)),
            Lot.remaining > 0,
            or_(Lot.expires_at.is_(None), Lot.expires_at > now),
        )
        .group_by(Lot.wallet_id, Lot.source)
    )
    for wallet_id, source, total in rows:
        parts[wallet_id][source] = int(total or 0)
    return parts


async def postings_by_transaction(
    session: AsyncSession, *, transaction_ids: Sequence[str]
) -> dict[str, list[Posting]]:
    """The postings of several transactions, in the order they were written, in one query."""
    found: dict[str, list[Posting]] = {transaction_id: [] for transaction_id in transaction_ids}
    if found:
        rows = await session.scalars(
            select(Posting).where(Posting.transaction_id.in_(list(found))).order_by(Posting.id)
        )
        for posting in rows:
            found[posting.transaction_id].append(posting)
    return found


# ---------------------------------------------------------------- the machinery


async def _lock_wallets(session: AsyncSession, wallet_ids: Iterable[str]) -> dict[str, Account]:
    ids = sorted(set(wallet_ids))
    rows = await session.scalars(
        select(Account)
        .where(Account.id.in_(ids), Account.kind == "wallet")
        .order_by(Account.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    wallets = {wallet.id: wallet for wallet in rows}
    missing = [wallet_id for wallet_id in ids if wallet_id not in wallets]
    if missing:
        raise NotFound(f"No wallet {missing[0]}.", param="wallet_id")
    return wallets


async def _replay(
    session: AsyncSession, *, idempotency_key: str, digest: str, wallets: Iterable[Account]
) -> Movement | None:
    existing = await session.scalar(select(Transaction).where(Transaction.idempotency_key == idempotency_key))
    if existing is None:
        return None
    if existing.request_hash != digest:
        raise IdempotencyError(
            "This idempotency key was already used for a different movement.", param="idempotency_key"
        )
    # Fresh from the database: a capture or release may have loaded this hold before the wallet's lock.
    hold = await session.scalar(
        select(Hold)
        .where(or_(Hold.hold_transaction_id == existing.id, Hold.resolve_transaction_id == existing.id))
        .execution_options(populate_existing=True)
    )
    return Movement(existing, {w.id: _snapshot(w) for w in wallets}, hold=hold, replayed=True)


def _require_positive(amount: int, param: str = "amount") -> None:
    if amount <= 0:
        raise InvalidRequest("The amount must be a positive integer.", code="invalid_amount", param=param)


def _require_active(wallet: Account, param: str = "wallet_id") -> None:
    if wallet.frozen:
        raise WalletFrozen(f"Wallet {wallet.id} is frozen.", param=param)


async def _live_lots(session: AsyncSession, wallet: Account) -> list[Lot]:
    """The wallet's lots with credits left, in spending order (the wallet is locked, so they cannot move)."""
    rows = await session.scalars(
        select(Lot)
        .where(Lot.wallet_id == wallet.id, Lot.remaining > 0)
        .order_by(Lot.priority, Lot.expires_at.is_(None), Lot.expires_at, Lot.id)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def _spendable_lots(session: AsyncSession, wallet: Account, now: datetime) -> list[Lot]:
    lots = await _live_lots(session, wallet)
    expired = [lot for lot in lots if lot.expires_at is not None and lot.expires_at <= now]
    for lot in expired:
        await _expire_lot(session, wallet=wallet, lot=lot)
    return [lot for lot in lots if lot.remaining > 0]


def _take(lots: Sequence[Lot], amount: int) -> tuple[list[tuple[Lot, int]], int]:
    """Takes up to ``amount`` from the lots in order; returns what was taken from which lot, and the shortfall."""
    taken: list[tuple[Lot, int]] = []
    left = amount
    for lot in lots:
        if left == 0:
            break
        part = min(lot.remaining, left)
        if part:
            lot.remaining -= part
            taken.append((lot, part))
            left -= part
    return taken, left


def _add_debt(wallet: Account, amount: int, *, clawback: bool) -> None:
    wallet.debt += amount
    if clawback:
        wallet.clawback_debt += amount


def _repay_debt(wallet: Account, amount: int) -> int:
    """Repays debt from an incoming ``amount``; returns the part repaid (clawback debt goes first)."""
    repaid = min(amount, wallet.debt)
    wallet.debt -= repaid
    wallet.clawback_debt -= min(repaid, wallet.clawback_debt)
    return repaid


def _cancel_overdraft(
    session: AsyncSession,
    *,
    wallet: Account,
    amount: int,
    transaction_id: str,
    moves: list[list[Any]],
    clawback: bool = False,
) -> int:
    """Credits taken on overdraft come back (a released hold, a reversed spend): they cancel the debt they
    made; if a grant repaid that debt meanwhile, the wallet gets them back as a ``refund`` lot. Returns the
    debt cancelled. A reversed clawback cancels clawback debt (``clawback=True``), anything else overdraft
    debt first."""
    cancelled = min(amount, wallet.debt)
    wallet.debt -= cancelled
    if clawback:
        wallet.clawback_debt = max(0, wallet.clawback_debt - cancelled)
    wallet.clawback_debt = min(wallet.clawback_debt, wallet.debt)
    if amount > cancelled:
        lot = _open_lot(
            session,
            wallet=wallet,
            transaction_id=transaction_id,
            amount=amount - cancelled,
            source="refund",
            priority=None,
            expires_at=None,
        )
        moves.append([lot.id, amount - cancelled])
    return cancelled


def _open_lot(
    session: AsyncSession,
    *,
    wallet: Account,
    transaction_id: str,
    amount: int,
    source: str,
    priority: int | None,
    expires_at: datetime | None,
) -> Lot:
    lot = Lot(
        id=new_id("lot"),
        wallet_id=wallet.id,
        transaction_id=transaction_id,
        asset=wallet.asset,
        source=source,
        priority=DEFAULT_PRIORITY[source] if priority is None else priority,
        amount=amount,
        remaining=amount,
        expires_at=expires_at,
    )
    session.add(lot)
    return lot


def _new_transaction(
    session: AsyncSession,
    *,
    kind: str,
    idempotency_key: str,
    digest: str,
    legs: Sequence[tuple[str, str, int]],
    reference: tuple[str | None, str | None] = (None, None),
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
    reverses_id: str | None = None,
) -> Transaction:
    """Writes the transaction and its postings. ``legs`` are (account id, asset, signed amount) and must sum
    to zero per asset (PostgreSQL checks it again at commit); no legs at all records only the key."""
    sums: dict[str, int] = {}
    for _account, asset, amount in legs:
        sums[asset] = sums.get(asset, 0) + amount
    if any(sums.values()) or len(legs) == 1:
        raise AssertionError(f"unbalanced transaction {kind}: {legs}")
    transaction = Transaction(
        id=new_id("txn"),
        kind=kind,
        idempotency_key=idempotency_key,
        request_hash=digest,
        reference_type=reference[0],
        reference_id=reference[1],
        reverses_id=reverses_id,
        memo=memo,
        metadata_=metadata or {},
        actor_user_id=actor_user_id,
        lot_moves=[],
        debt_change=0,
        created_at=utcnow(),
    )
    session.add(transaction)
    session.add_all(
        Posting(transaction_id=transaction.id, account_id=account, asset=asset, amount=amount)
        for account, asset, amount in legs
        if amount != 0
    )
    return transaction


def _system(code: str) -> str:
    try:
        return SYSTEM_ACCOUNTS[code]
    except KeyError:
        raise InvalidRequest(f"Unknown system account {code}.", code="unknown_account") from None


async def _expire_lot(session: AsyncSession, *, wallet: Account, lot: Lot) -> Transaction:
    amount = lot.remaining
    transaction = _new_transaction(
        session,
        kind="expire",
        # A lot can be swept more than once (a released hold returns credits to an expired lot).
        idempotency_key=f"lot:{lot.id}:expire:{new_id('txn')}",
        digest=request_hash("expire", lot=lot.id),
        legs=[(wallet.id, wallet.asset, -amount), (_system("@expired"), wallet.asset, amount)],
        reference=("lot", lot.id),
    )
    transaction.lot_moves = [[lot.id, -amount]]
    lot.remaining = 0
    wallet.balance -= amount
    return transaction


# ---------------------------------------------------------------- credits in


async def grant(
    session: AsyncSession,
    *,
    wallet_id: str,
    amount: int,
    idempotency_key: str,
    source: Source = "promotional",
    priority: int | None = None,
    expires_at: datetime | None = None,
    kind: Literal["grant", "purchase", "refund", "adjustment"] = "grant",
    counterparty: str = "@promotions",
    reference: tuple[str | None, str | None] = (None, None),
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
) -> Movement:
    """Credits in: repays debt first, then opens a lot with what is left."""
    _require_positive(amount)
    if source not in SOURCES:
        raise InvalidRequest(f"Unknown source {source}.", code="invalid_source", param="source")
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidRequest("expires_at must be in the future.", code="invalid_expiry", param="expires_at")
    digest = request_hash(
        kind,
        wallet=wallet_id,
        amount=amount,
        source=source,
        priority=priority,
        expires_at=expires_at,
        counterparty=counterparty,
        reference=reference,
    )
    wallets = await _lock_wallets(session, [wallet_id])
    wallet = wallets[wallet_id]
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=[wallet])
    if replay:
        return replay
    transaction = _new_transaction(
        session,
        kind=kind,
        idempotency_key=idempotency_key,
        digest=digest,
        legs=[(_system(counterparty), wallet.asset, -amount), (wallet.id, wallet.asset, amount)],
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
    )
    repaid = _repay_debt(wallet, amount)
    transaction.debt_change = -repaid
    if amount > repaid:
        lot = _open_lot(
            session,
            wallet=wallet,
            transaction_id=transaction.id,
            amount=amount - repaid,
            source=source,
            priority=priority,
            expires_at=expires_at,
        )
        transaction.lot_moves = [[lot.id, amount - repaid]]
    wallet.balance += amount
    return Movement(transaction, {wallet.id: _snapshot(wallet)})


# An admin's grant takes the other side from the system account that matches the credits' source.
GRANT_COUNTERPARTY: dict[str, str] = {
    "promotional": "@promotions",
    "paid": "@sales",
    "refund": "@refunds",
    "adjustment": "@adjustments",
}


async def grant_credits(
    session: AsyncSession,
    *,
    wallet_id: str,
    amount: int,
    idempotency_key: str,
    actor: audit_service.Actor,
    source: Source = "promotional",
    priority: int | None = None,
    expires_at: datetime | None = None,
    memo: str = "",
) -> Movement:
    """An admin allots credits to a wallet (a user's agent wallet, say): a ``grant`` from the system account of
    the source, recorded in the audit log (once: a replay of the same key records nothing)."""
    if source not in GRANT_COUNTERPARTY:
        raise InvalidRequest(f"Unknown source {source}.", code="invalid_source", param="source")
    movement = await grant(
        session,
        wallet_id=wallet_id,
        amount=amount,
        idempotency_key=idempotency_key,
        source=source,
        priority=priority,
        expires_at=expires_at,
        counterparty=GRANT_COUNTERPARTY[source],
        memo=memo,
        actor_user_id=actor.user_id,
    )
    if not movement.replayed:
        after = movement.balances[wallet_id]
        await audit_service.record(
            session,
            actor=actor,
            action="wallet.grant",
            object_type="wallet",
            object_id=wallet_id,
            before=None,
            after={
                "transaction_id": movement.transaction.id,
                "amount": amount,
                "asset": after.asset,
                "source": source,
                "priority": priority,
                "expires_at": expires_at.isoformat() if expires_at else None,
                "reason": memo,
                "available": after.available,
                "debt": after.debt,
            },
        )
    return movement


# ---------------------------------------------------------------- credits out


async def spend(
    session: AsyncSession,
    *,
    wallet_id: str,
    amount: int,
    idempotency_key: str,
    kind: Literal["spend", "adjustment"] = "spend",
    counterparty: str = "@usage",
    reference: tuple[str | None, str | None] = (None, None),
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
) -> Movement:
    """Credits out, down to ``-overdraft_limit`` at most; refused with ``insufficient_credits`` otherwise."""
    _require_positive(amount)
    digest = request_hash(
        kind, wallet=wallet_id, amount=amount, counterparty=counterparty, reference=reference
    )
    wallets = await _lock_wallets(session, [wallet_id])
    wallet = wallets[wallet_id]
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=[wallet])
    if replay:
        return replay
    _require_active(wallet)
    lots = await _spendable_lots(session, wallet, utcnow())
    if wallet.balance - amount < -wallet.overdraft_limit:
        raise InsufficientCredits(available=wallet.balance, asset=wallet.asset, wallet_id=wallet.id)
    transaction = _new_transaction(
        session,
        kind=kind,
        idempotency_key=idempotency_key,
        digest=digest,
        legs=[(wallet.id, wallet.asset, -amount), (_system(counterparty), wallet.asset, amount)],
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
    )
    taken, shortfall = _take(lots, amount)
    _add_debt(wallet, shortfall, clawback=False)
    transaction.lot_moves = [[lot.id, -part] for lot, part in taken]
    transaction.debt_change = shortfall
    wallet.balance -= amount
    return Movement(transaction, {wallet.id: _snapshot(wallet)})


async def clawback(
    session: AsyncSession,
    *,
    wallet_id: str,
    amount: int,
    idempotency_key: str,
    allow_debt: bool,
    counterparty: str = "@refunds",
    kind: Literal["clawback", "adjustment"] = "clawback",
    reference: tuple[str | None, str | None] = (None, None),
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
) -> Movement:
    """Takes credits back (a refund, a lost chargeback, a correction). With ``allow_debt`` it takes all of
    ``amount`` and what the wallet does not have becomes debt, beyond any overdraft limit; without, it takes
    what is available and no more (the answer says how much). Frozen wallets are not spared."""
    _require_positive(amount)
    digest = request_hash(
        kind,
        wallet=wallet_id,
        amount=amount,
        allow_debt=allow_debt,
        counterparty=counterparty,
        reference=reference,
    )
    wallets = await _lock_wallets(session, [wallet_id])
    wallet = wallets[wallet_id]
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=[wallet])
    if replay:
        return replay
    lots = await _spendable_lots(session, wallet, utcnow())
    take = amount if allow_debt else max(0, min(amount, wallet.balance))
    transaction = _new_transaction(
        session,
        kind=kind,
        idempotency_key=idempotency_key,
        digest=digest,
        # Nothing to take still records the key, so a retry answers the same.
        legs=[(wallet.id, wallet.asset, -take), (_system(counterparty), wallet.asset, take)] if take else [],
        reference=reference,
        memo=memo,
        metadata={**(metadata or {}), "requested": amount, "taken": take},
        actor_user_id=actor_user_id,
    )
    taken, shortfall = _take(lots, take)
    _add_debt(wallet, shortfall, clawback=True)
    transaction.lot_moves = [[lot.id, -part] for lot, part in taken]
    transaction.debt_change = shortfall
    wallet.balance -= take
    return Movement(transaction, {wallet.id: _snapshot(wallet)})


async def adjust(
    session: AsyncSession,
    *,
    wallet_id: str,
    amount: int,
    idempotency_key: str,
    memo: str,
    actor_user_id: str | None,
) -> Movement:
    """An admin's correction: positive adds a lot (source ``adjustment``), negative takes credits back even
    into debt."""
    if amount == 0:
        raise InvalidRequest("The amount must not be zero.", code="invalid_amount", param="amount")
    if amount > 0:
        return await grant(
            session,
            wallet_id=wallet_id,
            amount=amount,
            idempotency_key=idempotency_key,
            source="adjustment",
            kind="adjustment",
            counterparty="@adjustments",
            memo=memo,
            actor_user_id=actor_user_id,
        )
    return await clawback(
        session,
        wallet_id=wallet_id,
        amount=-amount,
        idempotency_key=idempotency_key,
        allow_debt=True,
        counterparty="@adjustments",
        kind="adjustment",
        memo=memo,
        actor_user_id=actor_user_id,
    )


# ---------------------------------------------------------------- holds


async def hold(
    session: AsyncSession,
    *,
    wallet_id: str,
    amount: int,
    expires_at: datetime,
    idempotency_key: str,
    reference: tuple[str | None, str | None] = (None, None),
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
) -> Movement:
    """Reserves credits: they leave their lots for the wallet's hold account until captured or released."""
    _require_positive(amount)
    now = utcnow()
    if expires_at <= now:
        raise InvalidRequest("expires_at must be in the future.", code="invalid_expiry", param="expires_at")
    digest = request_hash("hold", wallet=wallet_id, amount=amount, reference=reference)
    wallets = await _lock_wallets(session, [wallet_id])
    wallet = wallets[wallet_id]
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=[wallet])
    if replay:
        return replay
    _require_active(wallet)
    lots = await _spendable_lots(session, wallet, now)
    if wallet.balance - amount < -wallet.overdraft_limit:
        raise InsufficientCredits(available=wallet.balance, asset=wallet.asset, wallet_id=wallet.id)
    assert wallet.hold_account_id is not None
    transaction = _new_transaction(
        session,
        kind="hold",
        idempotency_key=idempotency_key,
        digest=digest,
        legs=[(wallet.id, wallet.asset, -amount), (wallet.hold_account_id, wallet.asset, amount)],
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
    )
    taken, shortfall = _take(lots, amount)
    _add_debt(wallet, shortfall, clawback=False)
    transaction.lot_moves = [[lot.id, -part] for lot, part in taken]
    transaction.debt_change = shortfall
    wallet.balance -= amount
    wallet.held += amount
    new_hold = Hold(
        id=new_id("hold"),
        wallet_id=wallet.id,
        asset=wallet.asset,
        amount=amount,
        captured=0,
        status="pending",
        hold_transaction_id=transaction.id,
        reference_type=reference[0],
        reference_id=reference[1],
        memo=memo,
        metadata_=metadata or {},
        expires_at=expires_at,
        created_at=now,
    )
    session.add(new_hold)
    session.add_all(HoldAllocation(hold_id=new_hold.id, lot_id=lot.id, amount=part) for lot, part in taken)
    if shortfall:
        session.add(HoldAllocation(hold_id=new_hold.id, lot_id=None, amount=shortfall))
    return Movement(transaction, {wallet.id: _snapshot(wallet)}, hold=new_hold)


async def capture(
    session: AsyncSession,
    *,
    hold_id: str,
    amount: int,
    idempotency_key: str,
    counterparty: str = "@usage",
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
) -> Movement:
    """Charges ``amount`` (0 up to the hold) and releases the rest, in one transaction; a hold resolves once."""
    if amount < 0:
        raise InvalidRequest("The amount must not be negative.", code="invalid_amount", param="amount")
    return await _resolve(
        session,
        hold_id=hold_id,
        capture_amount=amount,
        status="captured",
        idempotency_key=idempotency_key,
        counterparty=counterparty,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
    )


async def release(
    session: AsyncSession,
    *,
    hold_id: str,
    idempotency_key: str,
    expired: bool = False,
    memo: str = "",
    actor_user_id: str | None = None,
) -> Movement:
    return await _resolve(
        session,
        hold_id=hold_id,
        capture_amount=0,
        status="expired" if expired else "released",
        idempotency_key=idempotency_key,
        counterparty="@usage",
        memo=memo,
        metadata=None,
        actor_user_id=actor_user_id,
    )


async def _resolve(
    session: AsyncSession,
    *,
    hold_id: str,
    capture_amount: int,
    status: Literal["captured", "released", "expired"],
    idempotency_key: str,
    counterparty: str,
    memo: str,
    metadata: dict[str, Any] | None,
    actor_user_id: str | None,
) -> Movement:
    found = await get_hold(session, hold_id)
    digest = request_hash(status, hold=hold_id, amount=capture_amount, counterparty=counterparty)
    wallets = await _lock_wallets(session, [found.wallet_id])
    wallet = wallets[found.wallet_id]
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=[wallet])
    if replay:
        return replay
    # Re-read under the wallet's lock: a concurrent capture or release may have resolved it meanwhile.
    pending = await session.scalar(
        select(Hold).where(Hold.id == hold_id).execution_options(populate_existing=True)
    )
    assert pending is not None
    if pending.status != "pending":
        raise HoldNotPending(f"Hold {hold_id} is already {pending.status}.", param="hold_id")
    if capture_amount > pending.amount:
        raise CaptureExceedsHold(
            f"Cannot capture {capture_amount}: the hold is for {pending.amount}.", param="amount"
        )
    assert wallet.hold_account_id is not None
    returned = pending.amount - capture_amount
    kind = "capture" if status == "captured" else "release"
    legs = [(wallet.hold_account_id, wallet.asset, -pending.amount)]
    if capture_amount:
        legs.append((_system(counterparty), wallet.asset, capture_amount))
    if returned:
        legs.append((wallet.id, wallet.asset, returned))
    transaction = _new_transaction(
        session,
        kind=kind,
        idempotency_key=idempotency_key,
        digest=digest,
        legs=legs,
        reference=("hold", pending.id),
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
    )
    allocations = list(
        await session.scalars(
            select(HoldAllocation).where(HoldAllocation.hold_id == pending.id).order_by(HoldAllocation.id)
        )
    )
    # The captured part comes from the allocations in the order they were taken; the rest goes back.
    to_capture = capture_amount
    moves: list[list[Any]] = []
    debt_repaid = 0
    for allocation in allocations:
        charged = min(allocation.amount, to_capture)
        to_capture -= charged
        back = allocation.amount - charged
        if not back:
            continue
        if allocation.lot_id is None:
            debt_repaid += back  # an overdraft reservation that is not charged is owed no more
        else:
            lot = await session.get(Lot, allocation.lot_id, populate_existing=True)
            assert lot is not None
            lot.remaining += back
            moves.append([lot.id, back])
    transaction.debt_change = -_cancel_overdraft(
        session, wallet=wallet, amount=debt_repaid, transaction_id=transaction.id, moves=moves
    )
    transaction.lot_moves = moves
    wallet.held -= pending.amount
    wallet.balance += returned
    pending.status = status
    pending.captured = capture_amount
    pending.resolve_transaction_id = transaction.id
    pending.resolved_at = utcnow()
    return Movement(transaction, {wallet.id: _snapshot(wallet)}, hold=pending)


# ---------------------------------------------------------------- between wallets


async def transfer(
    session: AsyncSession,
    *,
    from_wallet_id: str,
    to_wallet_id: str,
    amount: int,
    idempotency_key: str,
    memo: str = "",
    metadata: dict[str, Any] | None = None,
    actor_user_id: str | None = None,
) -> Movement:
    """Moves credits from one wallet's lots to another, keeping each lot's source, priority and expiry.
    Transfers never use an overdraft: only credits the source wallet has can move."""
    _require_positive(amount)
    if from_wallet_id == to_wallet_id:
        raise InvalidRequest("A transfer needs two different wallets.", code="same_wallet", param="to_wallet")
    digest = request_hash("transfer", source=from_wallet_id, to=to_wallet_id, amount=amount)
    wallets = await _lock_wallets(session, [from_wallet_id, to_wallet_id])
    source, target = wallets[from_wallet_id], wallets[to_wallet_id]
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=[source, target])
    if replay:
        return replay
    if source.asset != target.asset:
        raise AssetMismatch(
            f"Wallet {source.id} holds {source.asset} and wallet {target.id} holds {target.asset}.",
            param="to_wallet",
        )
    _require_active(source, "from_wallet")
    _require_active(target, "to_wallet")
    lots = await _spendable_lots(session, source, utcnow())
    if source.balance < amount:
        raise InsufficientCredits(available=source.balance, asset=source.asset, wallet_id=source.id)
    transaction = _new_transaction(
        session,
        kind="transfer",
        idempotency_key=idempotency_key,
        digest=digest,
        legs=[(source.id, source.asset, -amount), (target.id, target.asset, amount)],
        reference=("wallet", target.id),
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
    )
    taken, _shortfall = _take(lots, amount)
    moves: list[list[Any]] = [[lot.id, -part] for lot, part in taken]
    repaid = _repay_debt(target, amount)
    to_place = amount - repaid
    for lot, part in taken:
        if to_place == 0:
            break
        placed = min(part, to_place)
        to_place -= placed
        copy = _open_lot(
            session,
            wallet=target,
            transaction_id=transaction.id,
            amount=placed,
            source=lot.source,
            priority=lot.priority,
            expires_at=lot.expires_at,
        )
        moves.append([copy.id, placed])
    transaction.lot_moves = moves
    transaction.debt_change = -repaid
    source.balance -= amount
    target.balance += amount
    return Movement(transaction, {source.id: _snapshot(source), target.id: _snapshot(target)})


# ---------------------------------------------------------------- corrections


REVERSIBLE = frozenset({"grant", "purchase", "adjustment", "spend"})


async def reverse(
    session: AsyncSession,
    *,
    transaction_id: str,
    idempotency_key: str,
    memo: str = "",
    actor_user_id: str | None = None,
) -> Movement:
    """A new transaction with every posting negated; the lots and the debt it moved move back. Credits a
    reversed grant already spent become clawback debt."""
    original = await get_transaction(session, transaction_id)
    if original.kind not in REVERSIBLE:
        raise InvalidRequest(
            f"A {original.kind} transaction cannot be reversed; resolve it through its own operation.",
            code="not_reversible",
            param="transaction_id",
        )
    legs = [(p.account_id, p.asset, -p.amount) for p in await postings_of(session, original.id)]
    wallet_ids = [account for account, _asset, _amount in legs if not account.startswith("sys_")]
    digest = request_hash("reversal", transaction=transaction_id)
    wallets = await _lock_wallets(session, wallet_ids)
    replay = await _replay(session, idempotency_key=idempotency_key, digest=digest, wallets=wallets.values())
    if replay:
        return replay
    if await session.scalar(select(Transaction.id).where(Transaction.reverses_id == original.id)):
        raise InvalidRequest(
            "This transaction is already reversed.", code="already_reversed", param="transaction_id"
        )
    (wallet,) = wallets.values()
    transaction = _new_transaction(
        session,
        kind="reversal",
        idempotency_key=idempotency_key,
        digest=digest,
        legs=legs,
        reference=(original.reference_type, original.reference_id),
        memo=memo,
        actor_user_id=actor_user_id,
        reverses_id=original.id,
    )
    delta = sum(amount for account, _asset, amount in legs if account == wallet.id)
    moves: list[list[Any]] = []
    shortfall = 0
    for lot_id, moved in original.lot_moves:
        lot = await session.get(Lot, lot_id, populate_existing=True)
        assert lot is not None
        if moved < 0:
            lot.remaining -= moved  # a spend's credits go back to their lot
            moves.append([lot_id, -moved])
        else:
            back = min(moved, lot.remaining)  # a grant's lot gives back what is left of it
            lot.remaining -= back
            shortfall += moved - back
            if back:
                moves.append([lot_id, -back])
    if original.debt_change > 0:  # a spend on overdraft (or a negative adjustment's debt) is no longer owed
        # clawback() records what it took in the metadata; the debt it left is clawback debt.
        _cancel_overdraft(
            session,
            wallet=wallet,
            amount=original.debt_change,
            transaction_id=transaction.id,
            moves=moves,
            clawback="taken" in original.metadata_,
        )
    elif original.debt_change < 0:
        _add_debt(wallet, -original.debt_change, clawback=True)  # the debt that grant repaid is owed again
    if shortfall:
        spendable = await _spendable_lots(session, wallet, utcnow())
        _taken, still_short = _take(spendable, shortfall)
        moves += [[lot.id, -part] for lot, part in _taken]
        _add_debt(wallet, still_short, clawback=True)
    transaction.lot_moves = moves
    wallet.balance += delta
    return Movement(transaction, {wallet.id: _snapshot(wallet)})


# ---------------------------------------------------------------- jobs


async def _lock_wallet_if_free(session: AsyncSession, wallet_id: str) -> bool:
    """Jobs take a wallet only when no one else holds it; a busy wallet is left for the next run (or is
    swept inline by the movement that holds it). Jobs lock nothing before the wallet, so they never deadlock
    with a movement."""
    locked = await session.scalar(
        select(Account.id).where(Account.id == wallet_id).with_for_update(skip_locked=True)
    )
    return locked is not None


async def expire_due_holds(session: AsyncSession, *, now: datetime, limit: int = 100) -> int:
    """Releases pending holds past ``expires_at`` as ``expired``."""
    due = list(
        await session.execute(
            select(Hold.id, Hold.wallet_id)
            .where(Hold.status == "pending", Hold.expires_at <= now)
            .order_by(Hold.wallet_id, Hold.id)  # oldest first within a wallet, the same on every engine
            .limit(limit)
        )
    )
    done = 0
    for hold_id, wallet_id in due:
        if not await _lock_wallet_if_free(session, wallet_id):
            continue
        try:
            await release(session, hold_id=hold_id, idempotency_key=f"hold:{hold_id}:expire", expired=True)
            done += 1
        except HoldNotPending:
            continue
    return done


async def sweep_expired_lots(session: AsyncSession, *, now: datetime, limit: int = 100) -> int:
    """Moves the unspent part of expired lots into ``@expired``; returns the number of lots swept."""
    wallet_ids = sorted(
        set(
            await session.scalars(
                select(Lot.wallet_id).where(Lot.remaining > 0, Lot.expires_at <= now).limit(limit)
            )
        )
    )
    swept = 0
    for wallet_id in wallet_ids:
        if not await _lock_wallet_if_free(session, wallet_id):
            continue
        wallets = await _lock_wallets(session, [wallet_id])
        lots = await _live_lots(session, wallets[wallet_id])
        for lot in lots:
            if lot.expires_at is not None and lot.expires_at <= now:
                await _expire_lot(session, wallet=wallets[wallet_id], lot=lot)
                swept += 1
    return swept


# ---------------------------------------------------------------- invariants


@dataclass(frozen=True)
class Breach:
    invariant: str
    subject: str
    detail: str


async def check_invariants(session: AsyncSession) -> list[Breach]:
    """Every invariant of the ledger; an empty list means the books are sound."""
    breaches: list[Breach] = []
    unbalanced = await session.execute(
        select(Posting.transaction_id, Posting.asset, func.sum(Posting.amount))
        .group_by(Posting.transaction_id, Posting.asset)
        .having(func.sum(Posting.amount) != 0)
    )
    for transaction_id, asset, total in unbalanced:
        breaches.append(Breach("zero_sum", transaction_id, f"postings in {asset} sum to {total}, not 0"))
    one_legged = await session.execute(
        select(Posting.transaction_id).group_by(Posting.transaction_id).having(func.count() < 2)
    )
    for (transaction_id,) in one_legged:
        breaches.append(Breach("two_postings", transaction_id, "a transaction with fewer than two postings"))

    sums = dict(
        (
            await session.execute(
                select(Posting.account_id, func.sum(Posting.amount)).group_by(Posting.account_id)
            )
        ).all()
    )
    lot_sums = dict(
        (await session.execute(select(Lot.wallet_id, func.sum(Lot.remaining)).group_by(Lot.wallet_id))).all()
    )
    bad_lots = await session.execute(select(Lot.id).where(or_(Lot.remaining < 0, Lot.remaining > Lot.amount)))
    for (lot_id,) in bad_lots:
        breaches.append(Breach("lot_remaining", lot_id, "remaining is negative or above the lot's amount"))
    pending = dict(
        (
            await session.execute(
                select(Hold.wallet_id, func.sum(Hold.amount))
                .where(Hold.status == "pending")
                .group_by(Hold.wallet_id)
            )
        ).all()
    )
    wallets = await session.scalars(select(Account).where(Account.kind == "wallet").order_by(Account.id))
    for wallet in wallets:
        posted = int(sums.get(wallet.id) or 0)
        if wallet.balance != posted:
            breaches.append(
                Breach(
                    "wallet_balance", wallet.id, f"balance {wallet.balance} but its postings sum to {posted}"
                )
            )
        held_posted = int(sums.get(wallet.hold_account_id or "") or 0)
        if wallet.held != held_posted:
            breaches.append(
                Breach(
                    "wallet_held", wallet.id, f"held {wallet.held} but its hold account sums to {held_posted}"
                )
            )
        lots = int(lot_sums.get(wallet.id) or 0)
        if wallet.balance != lots - wallet.debt:
            breaches.append(
                Breach(
                    "wallet_lots",
                    wallet.id,
                    f"balance {wallet.balance} but lots hold {lots} and debt is {wallet.debt}",
                )
            )
        pending_sum = int(pending.get(wallet.id) or 0)
        if wallet.held != pending_sum:
            breaches.append(
                Breach("holds", wallet.id, f"held {wallet.held} but pending holds add up to {pending_sum}")
            )
        if wallet.balance < -(wallet.overdraft_limit + wallet.clawback_debt):
            breaches.append(
                Breach(
                    "overdraft",
                    wallet.id,
                    f"available {wallet.balance} is below the overdraft limit {wallet.overdraft_limit} "
                    f"and recorded clawbacks {wallet.clawback_debt}",
                )
            )
        if wallet.debt < 0 or wallet.held < 0:
            breaches.append(Breach("non_negative", wallet.id, "negative debt or held"))
    allocation_sums = (
        select(HoldAllocation.hold_id, func.sum(HoldAllocation.amount).label("total"))
        .group_by(HoldAllocation.hold_id)
        .subquery()
    )
    mismatched = await session.execute(
        select(Hold.id, Hold.amount, allocation_sums.c.total)
        .join(allocation_sums, allocation_sums.c.hold_id == Hold.id, isouter=True)
        .where(
            or_(
                and_(
                    Hold.status == "pending",
                    or_(allocation_sums.c.total.is_(None), allocation_sums.c.total != Hold.amount),
                ),
                Hold.captured > Hold.amount,
                and_(Hold.status != "pending", Hold.resolve_transaction_id.is_(None)),
            )
        )
    )
    for hold_id, amount, total in mismatched:
        breaches.append(
            Breach(
                "hold_state",
                hold_id,
                f"hold of {amount}: allocations {total}, or resolved without a transaction",
            )
        )
    return breaches
