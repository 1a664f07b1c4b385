"""Low-balance alerts: a wallet's ``low_balance_threshold`` (set with ``PATCH /v1/wallets/{id}``), an alert
(``notify`` kind ``low_balance``: in-app and email) fired once when the wallet's available credits fall below
it, re-armed when they reach it again.

``check(session, wallet_ids=...)`` runs in the transaction that changed the balances: metering calls it after
its own charges, holds and captures (usage, sessions, AI holds). Balances the ledger changes elsewhere (the
ledger API's debits and holds, grants, purchases, refunds) are caught by the runner job ``scan_job``, which
checks every wallet that has a threshold, in pages by id. The state row is written by a conditional ``UPDATE``
(``below`` false -> true), so of two transactions that see the same crossing only one fires.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.db import Database, utcnow
from prepaid.ledger.models import Account
from prepaid.metering.models import LowBalanceAlert
from prepaid.notify import realtime
from prepaid.notify import service as notify_service
from prepaid.settings import Settings

SCAN_PAGE = 500


async def _ensure_rows(session: AsyncSession, wallet_ids: Sequence[str]) -> None:
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    rows = [{"wallet_id": wallet_id, "below": False, "fired": 0} for wallet_id in wallet_ids]
    await session.execute(insert(LowBalanceAlert).values(rows).on_conflict_do_nothing())


async def balances_changed(session: AsyncSession, *, wallet_ids: Iterable[str]) -> int:
    """Metering's hook after it moved credits: the threshold check (``balance.updated`` itself comes from the
    ledger's record of every movement). Answers how many low-balance alerts fired."""
    return await check(session, wallet_ids=wallet_ids)


def _states(ids: Sequence[str]) -> Any:
    """Each wallet with a threshold among ``ids``, its available credits, and whether its alert fired."""
    return (
        select(
            Account.id,
            Account.user_id,
            Account.balance,
            Account.low_balance_threshold,
            Account.asset,
            LowBalanceAlert.below,
        )
        .outerjoin(LowBalanceAlert, LowBalanceAlert.wallet_id == Account.id)
        .where(Account.id.in_(ids), Account.low_balance_threshold.is_not(None))
        .order_by(Account.id)
    )


def _moved(row: Any) -> bool:
    """Whether the wallet crossed its threshold since its alert state was written."""
    return bool(row.balance < row.low_balance_threshold) != bool(row.below)


async def check(session: AsyncSession, *, wallet_ids: Iterable[str]) -> int:
    """Fires the alert of each wallet that is now below its threshold and was not; re-arms each that is at or
    above it again. Writes only on a crossing. Answers how many alerts fired."""
    ids = sorted(set(wallet_ids))
    if not ids:
        return 0
    crossings = [row for row in (await session.execute(_states(ids))).all() if _moved(row)]
    if not crossings:
        return 0
    await _ensure_rows(session, [row.id for row in crossings])
    now = utcnow()
    fired = 0
    for wallet in crossings:
        if wallet.balance < wallet.low_balance_threshold:
            # Conditional: of two transactions that see the same crossing, one updates the row and fires.
            crossed = await session.execute(
                update(LowBalanceAlert)
                .where(LowBalanceAlert.wallet_id == wallet.id, LowBalanceAlert.below.is_(False))
                .values(below=True, fired_at=now, fired=LowBalanceAlert.fired + 1)
                .execution_options(synchronize_session=False)
            )
            if crossed.rowcount == 1 and wallet.user_id is not None:  # type: ignore[attr-defined]
                fired += 1
                facts = {
                    "wallet_id": wallet.id,
                    "balance": wallet.balance,
                    "threshold": wallet.low_balance_threshold,
                    "asset": wallet.asset,
                }
                await realtime.emit(session, user_id=wallet.user_id, type="wallet.low_balance", data=facts)
                await notify_service.notify(session, user_id=wallet.user_id, kind="low_balance", data=facts)
        else:
            await session.execute(
                update(LowBalanceAlert)
                .where(LowBalanceAlert.wallet_id == wallet.id, LowBalanceAlert.below.is_(True))
                .values(below=False, rearmed_at=now)
                .execution_options(synchronize_session=False)
            )
    return fired


async def crossed_wallets(
    session: AsyncSession, *, after: str = "", limit: int = SCAN_PAGE
) -> tuple[list[str], str | None]:
    """One page of wallets with a threshold, by id after ``after``: those that crossed it since their alert
    state was written, and the last id seen (None at the end). Reads only."""
    ids = (
        await session.scalars(
            select(Account.id)
            .where(Account.low_balance_threshold.is_not(None), Account.id > after)
            .order_by(Account.id)
            .limit(limit)
        )
    ).all()
    if not ids:
        return [], None
    rows = (await session.execute(_states(ids))).all()
    return [row.id for row in rows if _moved(row)], ids[-1]


async def scan_job(db: Database, _settings: Settings) -> int:
    """The runner job: every wallet with a threshold is read, a page at a time; only the pages with a crossing
    open a write transaction (which checks again, under the conditional update)."""
    fired, after = 0, ""
    while True:
        async with db.transaction(write=False) as session:
            crossed, last = await crossed_wallets(session, after=after)
        if crossed:
            async with db.transaction() as session:
                fired += await check(session, wallet_ids=crossed)
        if last is None:
            return fired
        after = last
