"""Every movement of credits passes through here, and only here are ledger rows written.

Each movement:
- takes an idempotency key: the same key with the same request answers the transaction already made, with
  another request it is ``idempotency_error``;
- runs in the caller's transaction and never commits;
- locks the wallets it names, in id order (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's write lock is
  already held from ``BEGIN IMMEDIATE``), then checks its key, then decides, then writes. Two movements on one
  wallet therefore serialise, and a repeated key sent concurrently finds the first one's transaction. (The hot
  path on PostgreSQL checks the key with the write itself, ``ON CONFLICT DO NOTHING``, and when it refuses: the
  answers are the same, one round trip fewer; see "the hot path" below);
- consumes lots in order: priority (lower first), then soonest expiry, then oldest; expired lots found on the
  way are swept into ``@expired`` first, so expired credits are never spent;
- returns the transaction with the wallets' balances after it.

Debt: an allowed overdraft (``overdraft_limit``) or a clawback leaves the wallet owing; any later credit repays
the debt first (clawback debt before overdraft debt). ``wallet.balance = sum(lot.remaining) - debt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    BigInteger,
    BindParameter,
    Select,
    Table,
    TextClause,
    and_,
    bindparam,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from prepaid.audit import service as audit_service
from prepaid.db import Base, UTCDateTime, utcnow, wallet_gate, wallet_locked
from prepaid.errors import DomainError, IdempotencyError, InvalidRequest, NotFound, PermissionDenied
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


_Model = TypeVar("_Model", bound=Base)


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
    user_id: str | None = field(default=None, compare=False)  # the owner: whose stream hears of it

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
    return WalletBalance(wallet.id, wallet.asset, wallet.balance, wallet.held, wallet.debt, wallet.user_id)


# The wallets this session's movements changed, each with its figures after the movement and the transaction
# (or savepoint) it was made in: ``notify.realtime`` announces them (``balance.updated``) once the transaction
# commits, and forgets those of a transaction or savepoint that rolls back. Every movement records here, so no
# caller can forget to announce one; a replay or a refusal records nothing.
MOVED_WALLETS = "prepaid.ledger.moved_wallets"


def _moved(session: AsyncSession, *balances: WalletBalance) -> None:
    sync = session.sync_session
    transaction = sync.get_nested_transaction() or sync.get_transaction()
    sync.info.setdefault(MOVED_WALLETS, []).extend((transaction, balance) for balance in balances)


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
    """The postings of several transactions, in the order they were written, in one query (none for the
    movements this session just wrote: it has their postings already)."""
    written: dict[str, list[Posting]] = session.info.get(_WRITTEN_POSTINGS, {})
    if transaction_ids and all(transaction_id in written for transaction_id in transaction_ids):
        return {transaction_id: list(written[transaction_id]) for transaction_id in transaction_ids}
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
    wallet_locked(session)
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


def _add_debt(wallet: Account | _Locked, amount: int, *, clawback: bool) -> None:
    wallet.debt += amount
    if clawback:
        wallet.clawback_debt += amount


def _repay_debt(wallet: Account, amount: int) -> int:
    """Repays debt from an incoming ``amount``; returns the part repaid (clawback debt goes first)."""
    repaid = min(amount, wallet.debt)
    wallet.debt -= repaid
    wallet.clawback_debt -= min(repaid, wallet.clawback_debt)
    return repaid


def _cancel_debt(wallet: Account | _Locked, amount: int, *, clawback: bool = False) -> int:
    """Credits taken on overdraft come back: they cancel up to ``amount`` of the wallet's debt (clawback debt
    with ``clawback``, else overdraft debt first); returns the debt cancelled."""
    cancelled = min(amount, wallet.debt)
    wallet.debt -= cancelled
    if clawback:
        wallet.clawback_debt = max(0, wallet.clawback_debt - cancelled)
    wallet.clawback_debt = min(wallet.clawback_debt, wallet.debt)
    return cancelled


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
    cancelled = _cancel_debt(wallet, amount, clawback=clawback)
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
    _moved(session, _snapshot(wallet))
    return transaction


# ---------------------------------------------------------------- the hot path, in Core statements
#
# Spends, holds, clawbacks, captures and releases run as SQLAlchemy Core statements on the session's
# connection instead of through the ORM's unit of work: the wallet's figures are read with its row lock and
# its live lots with a query after the lock (on SQLite, whose write lock is held since BEGIN IMMEDIATE, one
# query reads both and the idempotency key), then the transaction, its postings, the lots, the wallet and the
# hold are written with one statement each (on PostgreSQL all in one statement, a data-modifying CTE). The
# rules are the ones above; only the way rows are read and written differs. ORM objects of these rows that the
# session already holds are updated in place (``set_committed_value``), so the session never shows stale
# figures, and the returned transaction and hold are ordinary persistent ORM objects. Rare paths (an expired
# lot to sweep first, a replay) go through the ORM machinery above.

# The postings a movement wrote, by transaction id, in the session's ``info``: its answer needs them back.
_WRITTEN_POSTINGS = "prepaid.ledger.written_postings"


@event.listens_for(OrmSession, "after_soft_rollback")
def _forget_written_postings(session: OrmSession, _previous: Any) -> None:
    """Rows written in a transaction that rolled back (a savepoint, say) are not there to answer from."""
    session.info.pop(_WRITTEN_POSTINGS, None)


_ACCOUNT: Table = Account.__table__  # type: ignore[assignment]
_TRANSACTION: Table = Transaction.__table__  # type: ignore[assignment]
_POSTING: Table = Posting.__table__  # type: ignore[assignment]
_LOT: Table = Lot.__table__  # type: ignore[assignment]
_HOLD: Table = Hold.__table__  # type: ignore[assignment]
_ALLOCATION: Table = HoldAllocation.__table__  # type: ignore[assignment]

_LOCK_WALLET = (
    select(
        _ACCOUNT.c.id,
        _ACCOUNT.c.asset,
        _ACCOUNT.c.balance,
        _ACCOUNT.c.held,
        _ACCOUNT.c.debt,
        _ACCOUNT.c.clawback_debt,
        _ACCOUNT.c.overdraft_limit,
        _ACCOUNT.c.frozen,
        _ACCOUNT.c.hold_account_id,
        _ACCOUNT.c.user_id,
    )
    .where(_ACCOUNT.c.id == bindparam("wallet_id"), _ACCOUNT.c.kind == "wallet")
    .with_for_update()
)
_KEY_USED = select(_TRANSACTION.c.id, _TRANSACTION.c.request_hash).where(
    _TRANSACTION.c.idempotency_key == bindparam("key")
)
_LIVE_LOTS = (
    select(_LOT.c.id, _LOT.c.remaining, _LOT.c.expires_at)
    .where(_LOT.c.wallet_id == bindparam("wallet_id"), _LOT.c.remaining > 0)
    .order_by(_LOT.c.priority, _LOT.c.expires_at.is_(None), _LOT.c.expires_at, _LOT.c.id)
)
_WALLET_KEY_AND_LOTS = (
    select(
        *_LOCK_WALLET.selected_columns,
        _KEY_USED.with_only_columns(_TRANSACTION.c.id).scalar_subquery().label("used_id"),
        _KEY_USED.with_only_columns(_TRANSACTION.c.request_hash).scalar_subquery().label("used_hash"),
        _LOT.c.id.label("lot_id"),
        _LOT.c.remaining,
        _LOT.c.expires_at,
    )
    .select_from(_ACCOUNT.outerjoin(_LOT, and_(_LOT.c.wallet_id == _ACCOUNT.c.id, _LOT.c.remaining > 0)))
    .where(_ACCOUNT.c.id == bindparam("wallet_id"), _ACCOUNT.c.kind == "wallet")
    .order_by(_LOT.c.priority, _LOT.c.expires_at.is_(None), _LOT.c.expires_at, _LOT.c.id)
)
# The same, for a caller who may act only on one user's wallets: anyone else's wallet is not found.
_LOCK_OWN_WALLET = _LOCK_WALLET.where(_ACCOUNT.c.user_id == bindparam("owner_id"))
_OWN_WALLET_KEY_AND_LOTS = _WALLET_KEY_AND_LOTS.where(_ACCOUNT.c.user_id == bindparam("owner_id"))
# PostgreSQL: the wallet locked, then its figures and live lots read after the lock, in one round trip
# (migration 0016's function; one row per lot, or one row with no lot; no row: not found).
_PG_LOCK_WALLET_AND_LOTS = text("SELECT * FROM ledger_lock_wallet(:wallet_id, :owner_id)").columns(
    *_LOCK_WALLET.selected_columns,
    _LOT.c.id.label("lot_id"),
    _LOT.c.remaining,
    _LOT.c.expires_at,
)
_HOLD_STATE = select(_HOLD.c.wallet_id, _HOLD.c.amount, _HOLD.c.status).where(
    _HOLD.c.id == bindparam("hold_id")
)
_ALLOCATIONS = (
    select(_ALLOCATION.c.lot_id, _ALLOCATION.c.amount)
    .where(_ALLOCATION.c.hold_id == bindparam("hold_id"))
    .order_by(_ALLOCATION.c.id)
)
_MOVE_LOT = (
    update(_LOT)
    .where(_LOT.c.id == bindparam("lot_id"))
    .values(remaining=_LOT.c.remaining + bindparam("delta", type_=BigInteger()))
)


@dataclass
class _Locked:
    """A wallet's figures, read with its row lock held; changed here and written back once."""

    id: str
    asset: str
    balance: int
    held: int
    debt: int
    clawback_debt: int
    overdraft_limit: int
    frozen: bool
    hold_account_id: str | None
    user_id: str | None


@dataclass
class _LotLeft:
    id: str
    remaining: int
    expires_at: datetime | None


@dataclass
class _Writes:
    """Everything one movement writes, gathered before any of it is sent."""

    transaction: dict[str, Any]
    postings: list[dict[str, Any]]
    lot_deltas: list[tuple[str, int]] = field(default_factory=list)  # (lot id, change of remaining)
    new_lots: list[dict[str, Any]] = field(default_factory=list)
    hold: dict[str, Any] | None = None
    allocations: list[dict[str, Any]] = field(default_factory=list)
    hold_update: dict[str, Any] | None = None  # a resolved hold's new status, captured, resolved_at


async def _connection(session: AsyncSession) -> AsyncConnection:
    """The session's connection, with any pending ORM change sent first (Core statements do not autoflush)."""
    if session.new or session.dirty or session.deleted:
        await session.flush()
    return await session.connection()


async def _lock_wallet(conn: AsyncConnection, wallet_id: str, owner_id: str | None = None) -> _Locked:
    """Locks the wallet and reads its figures; with ``owner_id``, only a wallet of that user (else 404)."""
    if owner_id is None:
        row = (await conn.execute(_LOCK_WALLET, {"wallet_id": wallet_id})).first()
    else:
        row = (await conn.execute(_LOCK_OWN_WALLET, {"wallet_id": wallet_id, "owner_id": owner_id})).first()
    if row is None:
        raise NotFound(f"No wallet {wallet_id}.", param="wallet_id")
    return _Locked(*row[:10])


def _balance_of(wallet: _Locked) -> WalletBalance:
    return WalletBalance(wallet.id, wallet.asset, wallet.balance, wallet.held, wallet.debt, wallet.user_id)


async def _replay_of(
    session: AsyncSession, conn: AsyncConnection, *, idempotency_key: str, digest: str, wallet: _Locked
) -> Movement | None:
    """The movement already made with this key (looked up after the wallet's lock), or None."""
    found = (await conn.execute(_KEY_USED, {"key": idempotency_key})).first()
    if found is None:
        return None
    return await _replay_found(session, (found.id, found.request_hash), digest=digest, wallet=wallet)


async def _replay_found(
    session: AsyncSession, used: tuple[str, str], *, digest: str, wallet: _Locked
) -> Movement:
    """The movement already made with a key: ``used`` is its transaction's (id, request hash)."""
    transaction_id, used_digest = used
    if used_digest != digest:
        raise IdempotencyError(
            "This idempotency key was already used for a different movement.", param="idempotency_key"
        )
    existing = await session.get(Transaction, transaction_id)
    assert existing is not None
    hold = await session.scalar(
        select(Hold)
        .where(or_(Hold.hold_transaction_id == existing.id, Hold.resolve_transaction_id == existing.id))
        .execution_options(populate_existing=True)
    )
    return Movement(existing, {wallet.id: _balance_of(wallet)}, hold=hold, replayed=True)


async def _read_wallet_key_and_lots(
    conn: AsyncConnection, wallet_id: str, idempotency_key: str, owner_id: str | None = None
) -> tuple[_Locked, tuple[str, str] | None, list[_LotLeft]]:
    """The wallet's figures, the (id, request hash) of the transaction already made with the key if any, and
    the wallet's live lots in spending order, in one query: only where the whole database is locked already
    (SQLite's ``BEGIN IMMEDIATE``), so that nothing can change between the three. With ``owner_id``, only a
    wallet of that user (else 404)."""
    params = {"wallet_id": wallet_id, "key": idempotency_key}
    if owner_id is None:
        rows = (await conn.execute(_WALLET_KEY_AND_LOTS, params)).all()
    else:
        rows = (await conn.execute(_OWN_WALLET_KEY_AND_LOTS, {**params, "owner_id": owner_id})).all()
    if not rows:
        raise NotFound(f"No wallet {wallet_id}.", param="wallet_id")
    first = rows[0]
    wallet = _Locked(*first[:10])
    used = (first.used_id, first.used_hash) if first.used_id is not None else None
    lots = [_LotLeft(row.lot_id, row.remaining, row.expires_at) for row in rows if row.lot_id is not None]
    return wallet, used, lots


async def _lock_wallet_and_lots(
    conn: AsyncConnection, wallet_id: str, owner_id: str | None
) -> tuple[_Locked, list[_LotLeft]]:
    """PostgreSQL: locks the wallet and reads its figures and live lots in spending order, in one round trip
    (``ledger_lock_wallet``: the lots are read by a statement that starts after the lock is granted). With
    ``owner_id``, only a wallet of that user (else 404)."""
    params = {"wallet_id": wallet_id, "owner_id": owner_id}
    rows = (await conn.execute(_PG_LOCK_WALLET_AND_LOTS, params)).all()
    if not rows:
        raise NotFound(f"No wallet {wallet_id}.", param="wallet_id")
    lots = [_LotLeft(row.lot_id, row.remaining, row.expires_at) for row in rows if row.lot_id is not None]
    return _Locked(*rows[0][:10]), lots


async def _read_lots(conn: AsyncConnection, wallet_id: str) -> list[_LotLeft]:
    """The wallet's lots with credits left, in spending order (read after the wallet's lock)."""
    return [_LotLeft(*row) for row in await conn.execute(_LIVE_LOTS, {"wallet_id": wallet_id})]


def _any_expired(lots: Sequence[_LotLeft], now: datetime) -> bool:
    return any(lot.expires_at is not None and lot.expires_at <= now for lot in lots)


async def _sweep_expired(
    session: AsyncSession, conn: AsyncConnection, wallet: _Locked, now: datetime
) -> tuple[_Locked, list[_LotLeft]]:
    """Sweeps the wallet's expired lots into ``@expired`` (rare: the runner sweeps most) through the ORM path,
    then reads the wallet's figures and lots again."""
    locked = await _lock_wallets(session, [wallet.id])  # the lock is held already; this loads the ORM rows
    await _spendable_lots(session, locked[wallet.id], now)
    await session.flush()
    wallet = await _lock_wallet(conn, wallet.id)
    return wallet, await _read_lots(conn, wallet.id)


def _take_from(lots: Sequence[_LotLeft], amount: int) -> tuple[list[tuple[str, int]], int]:
    """Takes up to ``amount`` from the lots in order: (lot id, part) taken, and the shortfall."""
    taken: list[tuple[str, int]] = []
    left = amount
    for lot in lots:
        if left == 0:
            break
        part = min(lot.remaining, left)
        if part:
            taken.append((lot.id, part))
            left -= part
    return taken, left


def _transaction_row(
    *,
    kind: str,
    idempotency_key: str,
    digest: str,
    legs: Sequence[tuple[str, str, int]],
    reference: tuple[str | None, str | None],
    memo: str,
    metadata: dict[str, Any] | None,
    actor_user_id: str | None,
    now: datetime,
    transaction_id: str | None = None,
) -> _Writes:
    """The rows of a transaction and its postings (``legs`` as in ``_new_transaction``, checked the same way)."""
    sums: dict[str, int] = {}
    for _account, asset, amount in legs:
        sums[asset] = sums.get(asset, 0) + amount
    if any(sums.values()) or len(legs) == 1:
        raise AssertionError(f"unbalanced transaction {kind}: {legs}")
    transaction_id = transaction_id or new_id("txn")
    return _Writes(
        transaction={
            "id": transaction_id,
            "kind": kind,
            "idempotency_key": idempotency_key,
            "request_hash": digest,
            "reference_type": reference[0],
            "reference_id": reference[1],
            "reverses_id": None,
            "memo": memo,
            "metadata": metadata or {},
            "actor_user_id": actor_user_id,
            "lot_moves": [],
            "debt_change": 0,
            "created_at": now,
        },
        postings=[
            {
                "transaction_id": transaction_id,
                "account_id": account,
                "asset": asset,
                "amount": amount,
                "created_at": now,
            }
            for account, asset, amount in legs
            if amount != 0
        ],
    )


def _lot_row(
    wallet: _Locked, *, transaction_id: str, amount: int, source: str, priority: int | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": new_id("lot"),
        "wallet_id": wallet.id,
        "transaction_id": transaction_id,
        "asset": wallet.asset,
        "source": source,
        "priority": DEFAULT_PRIORITY[source] if priority is None else priority,
        "amount": amount,
        "remaining": amount,
        "expires_at": None,
        "created_at": now,
    }


async def _write(
    session: AsyncSession, conn: AsyncConnection, wallet: _Locked, writes: _Writes, now: datetime
) -> tuple[Transaction, Hold | None] | None:
    """Sends a movement's rows and the wallet's new figures; returns its transaction and hold as ORM objects,
    or None when (on PostgreSQL) its idempotency key turned out to be taken and nothing was written."""
    figures = {
        "balance": wallet.balance,
        "held": wallet.held,
        "debt": wallet.debt,
        "clawback_debt": wallet.clawback_debt,
        "updated_at": now,
    }
    if _late_key_check(conn):
        posting_ids = await _pg_write(conn, wallet, writes, now)
        if posting_ids is None:
            return None
    else:
        await conn.execute(insert(_TRANSACTION), writes.transaction)
        posting_ids = []
        if writes.postings:
            inserted = await conn.execute(
                insert(_POSTING).returning(_POSTING.c.id, sort_by_parameter_order=True), writes.postings
            )
            posting_ids = list(inserted.scalars())
        if writes.new_lots:
            await conn.execute(insert(_LOT), writes.new_lots)
        if writes.lot_deltas:
            await conn.execute(
                _MOVE_LOT, [{"lot_id": lot, "delta": delta} for lot, delta in writes.lot_deltas]
            )
        await conn.execute(update(_ACCOUNT).where(_ACCOUNT.c.id == wallet.id).values(**figures))
        if writes.hold is not None:
            await conn.execute(insert(_HOLD), writes.hold)
        if writes.allocations:
            await conn.execute(insert(_ALLOCATION), writes.allocations)
        if writes.hold_update is not None:
            hold_id = writes.hold_update["id"]
            changes = {key: value for key, value in writes.hold_update.items() if key != "id"}
            await conn.execute(update(_HOLD).where(_HOLD.c.id == hold_id).values(**changes))

    _moved(session, _balance_of(wallet))
    # The ORM objects this session already holds for these rows take the new values, as if reloaded.
    loaded_wallet = _loaded(session, Account, wallet.id)
    if loaded_wallet is not None:
        await _sync_loaded(session, loaded_wallet, figures)
    for lot_id, delta in writes.lot_deltas:
        loaded_lot = _loaded(session, Lot, lot_id)
        if loaded_lot is not None:
            if inspect(loaded_lot).expired_attributes:
                await session.refresh(loaded_lot)
            else:
                set_committed_value(loaded_lot, "remaining", loaded_lot.remaining + delta)
    row = dict(writes.transaction)
    row["metadata_"] = row.pop("metadata")
    transaction = _attach(session, Transaction, row)
    postings = [
        _attach(session, Posting, {"id": posting_id, **posting})
        for posting_id, posting in zip(posting_ids, writes.postings, strict=True)
    ]
    session.info.setdefault(_WRITTEN_POSTINGS, {})[transaction.id] = postings
    hold: Hold | None = None
    if writes.hold is not None:
        row = dict(writes.hold)
        row["metadata_"] = row.pop("metadata")
        hold = _attach(session, Hold, row)
    elif writes.hold_update is not None:
        hold_id = writes.hold_update["id"]
        hold = _loaded(session, Hold, hold_id)
        if hold is None:
            hold = await session.get(Hold, hold_id)
        else:
            changes = {key: value for key, value in writes.hold_update.items() if key != "id"}
            await _sync_loaded(session, hold, changes)
    return transaction, hold


def _late_key_check(conn: AsyncConnection) -> bool:
    """On PostgreSQL the write itself finds a taken idempotency key (``ON CONFLICT DO NOTHING``), so the key is
    looked up only when a movement is refused or its key turns out to be taken; elsewhere it is looked up
    first, under the wallet's lock."""
    return conn.dialect.name == "postgresql"


async def _replay_or_refuse(
    session: AsyncSession,
    conn: AsyncConnection,
    error: DomainError,
    *,
    idempotency_key: str,
    digest: str,
    wallet: _Locked,
) -> Movement:
    """A refused movement whose key was already used answers the movement made with it, as it would have had
    the key been looked up first; otherwise the refusal stands."""
    if _late_key_check(conn):
        replay = await _replay_of(
            session, conn, idempotency_key=idempotency_key, digest=digest, wallet=wallet
        )
        if replay:
            return replay
    raise error


async def _replay_after_conflict(
    session: AsyncSession, conn: AsyncConnection, *, idempotency_key: str, digest: str, wallet: _Locked
) -> Movement:
    replay = await _replay_of(session, conn, idempotency_key=idempotency_key, digest=digest, wallet=wallet)
    if replay is None:
        raise AssertionError(f"idempotency key {idempotency_key!r} conflicted but cannot be found")
    return replay


def _loaded(session: AsyncSession, cls: type[_Model], primary_key: str) -> _Model | None:
    found = session.sync_session.identity_map.get(identity_key(cls, primary_key))
    return found if isinstance(found, cls) else None


async def _sync_loaded(session: AsyncSession, instance: Base, values: dict[str, Any]) -> None:
    """An ORM object of a row just written with Core takes the row's new ``values``, as if reloaded; one with
    expired attributes (which would need a query to read) is reloaded instead."""
    if inspect(instance).expired_attributes:
        await session.refresh(instance)
        return
    for key, value in values.items():
        set_committed_value(instance, key, value)


def _attach(session: AsyncSession, cls: type[_Model], values: dict[str, Any]) -> _Model:
    """A row just written (``values`` by attribute name), as a persistent ORM object of the session (no query,
    nothing more to write). The values go straight into the new instance's state, as a load would put them:
    the mapped ``__init__`` fires an attribute event per column, several times the cost on the hot path."""
    instance: _Model = cls.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    make_transient_to_detached(instance)  # every given value committed, anything else unloaded
    session.add(instance)
    return instance


# On PostgreSQL a movement's rows go in one statement: a data-modifying CTE that inserts the transaction (and
# does nothing when its idempotency key is taken: the caller then answers the movement made with it), and only
# then, from its ``RETURNING``, the postings, the lot changes, the wallet's figures and the hold. Every part is
# one statement, so the foreign keys are checked at its end and the deferred zero-sum trigger at commit.
_PG_WRITES: dict[tuple[int, int, int, bool, int, bool], TextClause] = {}


def _pg_writes_statement(shape: tuple[int, int, int, bool, int, bool]) -> TextClause:
    """The CTE for ``shape`` = (postings, lot changes, new lots, new hold, allocations, resolved hold)."""
    cached = _PG_WRITES.get(shape)
    if cached is not None:
        return cached
    postings, lot_deltas, new_lots, new_hold, allocations, resolved = shape
    # Only placeholder names made from counts are put into the text; every value is a bound parameter.
    binds: list[BindParameter[Any]] = [
        bindparam("metadata", type_=JSONB()),
        bindparam("lot_moves", type_=JSONB()),
        bindparam("now", type_=UTCDateTime()),
    ]
    parts = [
        "t AS (INSERT INTO ledger_transaction (id, kind, idempotency_key, request_hash, reference_type, "
        "reference_id, reverses_id, memo, metadata, actor_user_id, lot_moves, debt_change, created_at) "
        "VALUES (:id, :kind, :idempotency_key, :request_hash, :reference_type, :reference_id, NULL, :memo, "
        ":metadata, :actor_user_id, :lot_moves, :debt_change, :now) "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id)",
        "a AS (UPDATE ledger_account SET balance = :balance, held = :held, debt = :debt, "
        "clawback_debt = :clawback_debt, updated_at = :now FROM t WHERE ledger_account.id = :wallet_id "
        "RETURNING ledger_account.id)",
    ]
    if postings:
        rows = ", ".join(
            f"(CAST(:p{n}_account AS VARCHAR), CAST(:p{n}_asset AS VARCHAR), CAST(:p{n}_amount AS BIGINT), {n})"
            for n in range(postings)
        )
        parts.append(
            "p AS (INSERT INTO ledger_posting (transaction_id, account_id, asset, amount, created_at) "  # noqa: S608
            f"SELECT t.id, v.account_id, v.asset, v.amount, :now FROM t CROSS JOIN (VALUES {rows}) "
            "AS v (account_id, asset, amount, n) ORDER BY v.n RETURNING id)"
        )
    if lot_deltas:
        rows = ", ".join(
            f"(CAST(:l{n}_id AS VARCHAR), CAST(:l{n}_delta AS BIGINT))" for n in range(lot_deltas)
        )
        parts.append(
            "l AS (UPDATE ledger_lot SET remaining = ledger_lot.remaining + v.delta "  # noqa: S608
            f"FROM t CROSS JOIN (VALUES {rows}) AS v (id, delta) WHERE ledger_lot.id = v.id "
            "RETURNING ledger_lot.id)"
        )
    if new_lots:
        rows = ", ".join(
            f"(CAST(:n{n}_id AS VARCHAR), CAST(:n{n}_source AS VARCHAR), CAST(:n{n}_priority AS INTEGER), "
            f"CAST(:n{n}_amount AS BIGINT), {n})"
            for n in range(new_lots)
        )
        parts.append(
            "n AS (INSERT INTO ledger_lot (id, wallet_id, transaction_id, asset, source, priority, amount, "  # noqa: S608
            "remaining, expires_at, created_at) SELECT v.id, :wallet_id, t.id, :asset, v.source, v.priority, "
            f"v.amount, v.amount, NULL, :now FROM t CROSS JOIN (VALUES {rows}) "
            "AS v (id, source, priority, amount, n) ORDER BY v.n)"
        )
    if new_hold:
        binds += [
            bindparam("h_metadata", type_=JSONB()),
            bindparam("h_expires_at", type_=UTCDateTime()),
        ]
        parts.append(
            "h AS (INSERT INTO ledger_hold (id, wallet_id, asset, amount, captured, status, hold_transaction_id, "
            "resolve_transaction_id, reference_type, reference_id, memo, metadata, expires_at, created_at, "
            "resolved_at) SELECT :h_id, :wallet_id, :asset, :h_amount, 0, 'pending', t.id, NULL, "
            ":reference_type, :reference_id, :memo, :h_metadata, :h_expires_at, :now, NULL FROM t RETURNING id)"
        )
        if allocations:
            rows = ", ".join(
                f"(CAST(:a{n}_lot AS VARCHAR), CAST(:a{n}_amount AS BIGINT), {n})" for n in range(allocations)
            )
            parts.append(
                "ha AS (INSERT INTO ledger_hold_allocation (hold_id, lot_id, amount) "  # noqa: S608
                f"SELECT h.id, v.lot_id, v.amount FROM h CROSS JOIN (VALUES {rows}) AS v (lot_id, amount, n) "
                "ORDER BY v.n)"
            )
    if resolved:
        parts.append(
            "r AS (UPDATE ledger_hold SET status = :r_status, captured = :r_captured, "
            "resolve_transaction_id = t.id, resolved_at = :now FROM t WHERE ledger_hold.id = :r_id "
            "RETURNING ledger_hold.id)"
        )
    returned = [
        "t.id",
        "(SELECT count(*) FROM a) AS accounts",
        "ARRAY(SELECT p.id FROM p ORDER BY p.id) AS posting_ids" if postings else "NULL AS posting_ids",
        "(SELECT count(*) FROM l) AS lots" if lot_deltas else "0 AS lots",
        "(SELECT count(*) FROM r) AS holds" if resolved else "0 AS holds",
    ]
    statement = text(f"WITH {', '.join(parts)} SELECT {', '.join(returned)} FROM t").bindparams(*binds)  # noqa: S608
    _PG_WRITES[shape] = statement
    return statement


async def _pg_write(
    conn: AsyncConnection, wallet: _Locked, writes: _Writes, now: datetime
) -> list[int] | None:
    """Sends the movement in one statement; returns its postings' ids, or None if its key was taken."""
    row = writes.transaction
    params: dict[str, Any] = {
        "id": row["id"],
        "kind": row["kind"],
        "idempotency_key": row["idempotency_key"],
        "request_hash": row["request_hash"],
        "reference_type": row["reference_type"],
        "reference_id": row["reference_id"],
        "memo": row["memo"],
        "metadata": row["metadata"],
        "actor_user_id": row["actor_user_id"],
        "lot_moves": row["lot_moves"],
        "debt_change": row["debt_change"],
        "now": now,
        "wallet_id": wallet.id,
        "asset": wallet.asset,
        "balance": wallet.balance,
        "held": wallet.held,
        "debt": wallet.debt,
        "clawback_debt": wallet.clawback_debt,
    }
    for n, posting in enumerate(writes.postings):
        params.update(
            {
                f"p{n}_account": posting["account_id"],
                f"p{n}_asset": posting["asset"],
                f"p{n}_amount": posting["amount"],
            }
        )
    for n, (lot_id, delta) in enumerate(writes.lot_deltas):
        params.update({f"l{n}_id": lot_id, f"l{n}_delta": delta})
    for n, lot in enumerate(writes.new_lots):
        params.update(
            {
                f"n{n}_id": lot["id"],
                f"n{n}_source": lot["source"],
                f"n{n}_priority": lot["priority"],
                f"n{n}_amount": lot["amount"],
            }
        )
    if writes.hold is not None:
        hold = writes.hold
        params.update(
            {
                "h_id": hold["id"],
                "h_amount": hold["amount"],
                "h_metadata": hold["metadata"],
                "h_expires_at": hold["expires_at"],
            }
        )
        for n, allocation in enumerate(writes.allocations):
            params.update({f"a{n}_lot": allocation["lot_id"], f"a{n}_amount": allocation["amount"]})
    if writes.hold_update is not None:
        update_ = writes.hold_update
        params.update(
            {"r_id": update_["id"], "r_status": update_["status"], "r_captured": update_["captured"]}
        )
    shape = (
        len(writes.postings),
        len(writes.lot_deltas),
        len(writes.new_lots),
        writes.hold is not None,
        len(writes.allocations) if writes.hold is not None else 0,
        writes.hold_update is not None,
    )
    result = (await conn.execute(_pg_writes_statement(shape), params)).first()
    if result is None:
        return None
    # Every part must have written what it was given; anything else is a bug, and the request rolls back.
    if (result.accounts, result.lots, result.holds) != (
        1,
        len(writes.lot_deltas),
        1 if writes.hold_update is not None else 0,
    ):
        raise AssertionError(f"a movement's rows were not all written: {result}")
    return list(result.posting_ids or [])


async def _take_out(
    session: AsyncSession,
    *,
    operation: Literal["spend", "hold", "clawback"],
    wallet_id: str,
    amount: int,
    idempotency_key: str,
    digest: str,
    kind: str,
    counterparty: str,
    reference: tuple[str | None, str | None],
    memo: str,
    metadata: dict[str, Any] | None,
    actor_user_id: str | None,
    allow_debt: bool = False,
    expires_at: datetime | None = None,
    owner_id: str | None = None,
    transaction_id: str | None = None,
) -> Movement:
    """Credits out of a wallet's lots: a spend or a hold (down to ``-overdraft_limit`` at most, refused with
    ``insufficient_credits`` otherwise, never on a frozen wallet) or a clawback (all of it into clawback debt
    with ``allow_debt``, else what is available). What the lots lack is debt. With ``owner_id``, a wallet
    that is not that user's is not found (checked by the statement that locks it)."""
    conn = await _connection(session)
    key = {"idempotency_key": idempotency_key, "digest": digest}
    key_checked = not _late_key_check(conn)
    lots: list[_LotLeft]
    if key_checked:
        # SQLite: the write lock is held since BEGIN IMMEDIATE, so the wallet, its key and its lots are read
        # in one query.
        wallet, used, lots = await _read_wallet_key_and_lots(conn, wallet_id, idempotency_key, owner_id)
        if used is not None:
            return await _replay_found(session, used, digest=digest, wallet=wallet)
    else:
        if operation != "clawback":  # a clawback runs in a refund's or dispute's transaction, locks held
            await wallet_gate(session, wallet_id)
        wallet, lots = await _lock_wallet_and_lots(conn, wallet_id, owner_id)
    if operation != "clawback" and wallet.frozen:
        error: DomainError = WalletFrozen(f"Wallet {wallet.id} is frozen.", param="wallet_id")
        return await _replay_or_refuse(session, conn, error, wallet=wallet, **key)
    now = utcnow()
    if _any_expired(lots, now):
        if not key_checked and (replay := await _replay_of(session, conn, wallet=wallet, **key)):
            return replay  # a replay sweeps nothing, wherever the key is looked up
        wallet, lots = await _sweep_expired(session, conn, wallet, now)
    if operation == "clawback":
        take = amount if allow_debt else max(0, min(amount, wallet.balance))
        metadata = {**(metadata or {}), "requested": amount, "taken": take}
    else:
        take = amount
        if wallet.balance - amount < -wallet.overdraft_limit:
            error = InsufficientCredits(available=wallet.balance, asset=wallet.asset, wallet_id=wallet.id)
            return await _replay_or_refuse(session, conn, error, wallet=wallet, **key)
    before = dataclasses.replace(wallet)
    if operation == "hold":
        assert wallet.hold_account_id is not None
        other = wallet.hold_account_id
    else:
        other = _system(counterparty)
    writes = _transaction_row(
        kind=kind,
        idempotency_key=idempotency_key,
        digest=digest,
        # A clawback of nothing still records the key, so a retry answers the same.
        legs=[(wallet.id, wallet.asset, -take), (other, wallet.asset, take)] if take else [],
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
        now=now,
        transaction_id=transaction_id,
    )
    taken, shortfall = _take_from(lots, take)
    _add_debt(wallet, shortfall, clawback=operation == "clawback")
    writes.lot_deltas = [(lot_id, -part) for lot_id, part in taken]
    writes.transaction["lot_moves"] = [[lot_id, -part] for lot_id, part in taken]
    writes.transaction["debt_change"] = shortfall
    wallet.balance -= take
    if operation == "hold":
        assert expires_at is not None
        wallet.held += take
        hold_id = new_id("hold")
        writes.hold = {
            "id": hold_id,
            "wallet_id": wallet.id,
            "asset": wallet.asset,
            "amount": take,
            "captured": 0,
            "status": "pending",
            "hold_transaction_id": writes.transaction["id"],
            "resolve_transaction_id": None,
            "reference_type": reference[0],
            "reference_id": reference[1],
            "memo": memo,
            "metadata": metadata or {},
            "expires_at": expires_at,
            "created_at": now,
            "resolved_at": None,
        }
        # In the order taken: a capture charges them in this order (their ids ascend with it).
        writes.allocations = [
            {"hold_id": hold_id, "lot_id": lot_id, "amount": part} for lot_id, part in taken
        ]
        if shortfall:
            writes.allocations.append({"hold_id": hold_id, "lot_id": None, "amount": shortfall})
    written = await _write(session, conn, wallet, writes, now)
    if written is None:  # the key was taken meanwhile: answer the movement made with it
        return await _replay_after_conflict(session, conn, wallet=before, **key)
    transaction, hold = written
    return Movement(transaction, {wallet.id: _balance_of(wallet)}, hold=hold)


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
    _moved(session, _snapshot(wallet))
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
    owner_id: str | None = None,
    transaction_id: str | None = None,
) -> Movement:
    """Credits out, down to ``-overdraft_limit`` at most; refused with ``insufficient_credits`` otherwise.
    With ``owner_id`` (a caller who may act only on that user's wallets), another user's wallet is
    ``NotFound`` exactly as a missing one, and nothing is written. ``transaction_id`` (``txn_``, made by
    ``ids.new_id``) names the transaction in advance, for rows written before it that point to it (a
    replay of the key answers the earlier transaction, under its own id)."""
    _require_positive(amount)
    digest = request_hash(
        kind, wallet=wallet_id, amount=amount, counterparty=counterparty, reference=reference
    )
    return await _take_out(
        session,
        operation="spend",
        wallet_id=wallet_id,
        amount=amount,
        idempotency_key=idempotency_key,
        digest=digest,
        kind=kind,
        counterparty=counterparty,
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
        owner_id=owner_id,
        transaction_id=transaction_id,
    )


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
    return await _take_out(
        session,
        operation="clawback",
        wallet_id=wallet_id,
        amount=amount,
        idempotency_key=idempotency_key,
        digest=digest,
        kind=kind,
        counterparty=counterparty,
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
        allow_debt=allow_debt,
    )


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
    owner_id: str | None = None,
) -> Movement:
    """Reserves credits: they leave their lots for the wallet's hold account until captured or released.
    With ``owner_id``, another user's wallet is ``NotFound`` exactly as a missing one."""
    _require_positive(amount)
    if expires_at <= utcnow():
        raise InvalidRequest("expires_at must be in the future.", code="invalid_expiry", param="expires_at")
    digest = request_hash("hold", wallet=wallet_id, amount=amount, reference=reference)
    return await _take_out(
        session,
        operation="hold",
        wallet_id=wallet_id,
        amount=amount,
        idempotency_key=idempotency_key,
        digest=digest,
        kind="hold",
        counterparty="",
        reference=reference,
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
        expires_at=expires_at,
        owner_id=owner_id,
    )


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
    conn = await _connection(session)
    # A hold's wallet never changes: when the session holds the hold already (the route that authorised it
    # loaded it), its wallet is known without a query. An expired attribute would need one: read it then.
    loaded = _loaded(session, Hold, hold_id)
    wallet_id: str | None = inspect(loaded).dict.get("wallet_id") if loaded is not None else None
    if wallet_id is None:
        found = (await conn.execute(_HOLD_STATE, {"hold_id": hold_id})).first()
        if found is None:
            raise NotFound(f"No hold {hold_id}.", param="hold_id")
        wallet_id = found.wallet_id
    digest = request_hash(status, hold=hold_id, amount=capture_amount, counterparty=counterparty)
    wallet_locked(session)
    wallet = await _lock_wallet(conn, wallet_id)
    key = {"idempotency_key": idempotency_key, "digest": digest}
    if not _late_key_check(conn) and (replay := await _replay_of(session, conn, wallet=wallet, **key)):
        return replay
    # Read again under the wallet's lock: a concurrent capture or release may have resolved it meanwhile.
    pending = (await conn.execute(_HOLD_STATE, {"hold_id": hold_id})).one()
    if pending.status != "pending":
        error: DomainError = HoldNotPending(f"Hold {hold_id} is already {pending.status}.", param="hold_id")
        return await _replay_or_refuse(session, conn, error, wallet=wallet, **key)
    if capture_amount > pending.amount:
        error = CaptureExceedsHold(
            f"Cannot capture {capture_amount}: the hold is for {pending.amount}.", param="amount"
        )
        return await _replay_or_refuse(session, conn, error, wallet=wallet, **key)
    before = dataclasses.replace(wallet)
    assert wallet.hold_account_id is not None
    returned = pending.amount - capture_amount
    kind = "capture" if status == "captured" else "release"
    legs = [(wallet.hold_account_id, wallet.asset, -pending.amount)]
    if capture_amount:
        legs.append((_system(counterparty), wallet.asset, capture_amount))
    if returned:
        legs.append((wallet.id, wallet.asset, returned))
    now = utcnow()
    writes = _transaction_row(
        kind=kind,
        idempotency_key=idempotency_key,
        digest=digest,
        legs=legs,
        reference=("hold", hold_id),
        memo=memo,
        metadata=metadata,
        actor_user_id=actor_user_id,
        now=now,
    )
    # The captured part comes from the allocations in the order they were taken; the rest goes back.
    to_capture = capture_amount
    moves: list[list[Any]] = []
    debt_repaid = 0
    for lot_id, allocated in await conn.execute(_ALLOCATIONS, {"hold_id": hold_id}):
        charged = min(allocated, to_capture)
        to_capture -= charged
        back = allocated - charged
        if not back:
            continue
        if lot_id is None:
            debt_repaid += back  # an overdraft reservation that is not charged is owed no more
        else:
            writes.lot_deltas.append((lot_id, back))
            moves.append([lot_id, back])
    cancelled = _cancel_debt(wallet, debt_repaid)
    if debt_repaid > cancelled:
        refund = _lot_row(
            wallet,
            transaction_id=writes.transaction["id"],
            amount=debt_repaid - cancelled,
            source="refund",
            priority=None,
            now=now,
        )
        writes.new_lots.append(refund)
        moves.append([refund["id"], refund["amount"]])
    writes.transaction["debt_change"] = -cancelled
    writes.transaction["lot_moves"] = moves
    wallet.held -= pending.amount
    wallet.balance += returned
    writes.hold_update = {
        "id": hold_id,
        "status": status,
        "captured": capture_amount,
        "resolve_transaction_id": writes.transaction["id"],
        "resolved_at": now,
    }
    written = await _write(session, conn, wallet, writes, now)
    if written is None:  # the key was taken meanwhile: answer the movement made with it
        return await _replay_after_conflict(session, conn, wallet=before, **key)
    transaction, resolved = written
    return Movement(transaction, {wallet.id: _balance_of(wallet)}, hold=resolved)


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
    _moved(session, _snapshot(source), _snapshot(target))
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
    _moved(session, _snapshot(wallet))
    return Movement(transaction, {wallet.id: _snapshot(wallet)})


# ---------------------------------------------------------------- jobs


async def _lock_wallet_if_free(session: AsyncSession, wallet_id: str) -> bool:
    """Jobs take a wallet only when no one else holds it; a busy wallet is left for the next run (or is
    swept inline by the movement that holds it). Jobs lock nothing before the wallet, so they never deadlock
    with a movement."""
    wallet_locked(session)
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
