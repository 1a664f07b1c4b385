"""Metered sessions: a customer's wallet charged by the second while a session runs.

- Start on a meter whose unit is a ``second``, ``minute`` or ``hour`` (a ``unit`` meter); its rate is copied
  onto the session. The first interval (``interval_seconds``) is held at once; a customer who cannot afford it
  is refused with ``insufficient_credits`` and nothing is stored.
- Each heartbeat (at most every ``grace_seconds`` apart) extends the holds so they pay up to one interval past
  the heartbeat; when the wallet cannot pay that much, what it can pay is held and the session runs until the
  holds are used up.
- A session ends by ``stop``, or by the server (``end_due_sessions``, run by the runner and before any
  heartbeat or stop) when the holds run out (``insufficient_credits``, billing ends at ``covered_until``) or
  heartbeats stop (``heartbeat_timeout``, billing ends at the last heartbeat plus the grace). Billing never
  passes ``covered_until``: elapsed time never outruns the holds.
- The charge is the elapsed time (to the microsecond) times the per-second rate (per-minute and per-hour rates
  divided down), rounded up to the credit minor unit once per session, priced by ``catalog.service.meter_cost``
  over a rate expressed per microsecond. It is captured from the holds in the order they were made; the rest
  is released. An ended session is never charged again.

Every change locks the session row first, then the wallet (through the ledger), so a stop, a heartbeat and the
runner job on one session serialise and exactly one of them ends it. The time source is the caller's ``now``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.catalog import service as catalog_service
from prepaid.db import Database, utcnow, wallet_locked
from prepaid.errors import Conflict, InsufficientFunds, InvalidRequest
from prepaid.ids import new_id
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Account
from prepaid.metering import low_balance
from prepaid.metering.models import MeteredSession, MeteredSessionHold
from prepaid.notify import realtime
from prepaid.pagination import Page, PageParams, paginate
from prepaid.settings import Settings

UNIT_SECONDS = {"second": 1, "sec": 1, "s": 1, "minute": 60, "min": 60, "hour": 3600, "h": 3600}
MICROS = 1_000_000
# Session holds outlive any session the runner ends on time; they only need to outlast a stopped runner.
HOLD_LIFETIME = timedelta(days=7)
DEFAULT_INTERVAL = 60
DEFAULT_GRACE = 30
Clock = Callable[[], datetime]


@dataclass(frozen=True)
class _PerMicrosecond:
    """The session's rate as a ``unit`` meter priced per microsecond: ``price`` per ``per x unit x 10^6``."""

    price: int
    per: int
    kind: str = "unit"
    input_price: int | None = None
    output_price: int | None = None
    cached_input_price: int | None = None


def _rate(session: MeteredSession) -> _PerMicrosecond:
    return _PerMicrosecond(price=session.price, per=session.per * session.unit_seconds * MICROS)


def _micros(delta: timedelta) -> int:
    return max(0, (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds)


def cost_of(session: MeteredSession, *, until: datetime) -> int:
    """What the session costs from its start to ``until``: one ceiling over the whole elapsed time."""
    return catalog_service.meter_cost(_rate(session), quantity=_micros(until - session.started_at))


def _covered_until(session: MeteredSession) -> datetime | None:
    """How far ``held`` pays: the last microsecond whose cost (rounded up) is within the holds."""
    if session.price == 0:
        return None
    rate = _rate(session)
    micros = session.held * rate.per // rate.price
    return session.started_at + timedelta(microseconds=micros)


def _due_at(session: MeteredSession) -> datetime:
    timeout = session.last_heartbeat_at + timedelta(seconds=session.grace_seconds)
    covered = session.covered_until
    return timeout if covered is None else min(covered, timeout)


def _due_end(session: MeteredSession, now: datetime) -> tuple[datetime, str] | None:
    """Where billing ends if the server must end the session by ``now``, and why; None while it may run."""
    timeout = session.last_heartbeat_at + timedelta(seconds=session.grace_seconds)
    covered = session.covered_until
    if covered is not None and covered <= now and covered <= timeout:
        return covered, "insufficient_credits"
    if timeout <= now:
        return timeout, "heartbeat_timeout"
    return None


async def _event(session: AsyncSession, metered: MeteredSession, type_: str) -> None:
    """A session event on the owner's stream (and to subscribed webhooks), sent after commit."""

    def at(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    await realtime.emit(
        session,
        user_id=metered.user_id,
        type=type_,
        data={
            "session_id": metered.id,
            "wallet_id": metered.wallet_id,
            "meter": metered.meter_code,
            "status": metered.status,
            "end_reason": metered.end_reason,
            "asset": metered.asset,
            "held": metered.held,
            "charged": metered.charged,
            "released": metered.released,
            "started_at": at(metered.started_at),
            "last_heartbeat_at": at(metered.last_heartbeat_at),
            "covered_until": at(metered.covered_until),
            "billed_until": at(metered.billed_until),
        },
        key=f"session:{metered.id}:{type_}",
    )


# ---------------------------------------------------------------- holds


async def _affordable(session: AsyncSession, wallet_id: str) -> int:
    row = (
        await session.execute(
            select(Account.balance, Account.overdraft_limit, Account.frozen).where(Account.id == wallet_id)
        )
    ).one()
    return 0 if row.frozen else max(0, row.balance + row.overdraft_limit)


async def _hold_more(session: AsyncSession, metered: MeteredSession, amount: int, *, now: datetime) -> bool:
    """One more ledger hold of ``amount`` for the session; False (nothing written) when the wallet cannot."""
    seq = metered.holds + 1
    try:
        movement = await ledger_service.hold(
            session,
            wallet_id=metered.wallet_id,
            amount=amount,
            expires_at=max(now, utcnow()) + HOLD_LIFETIME,
            idempotency_key=f"session:{metered.id}:hold:{seq}",
            reference=("session", metered.id),
            memo=f"Session {metered.id}",
        )
    except InsufficientFunds:
        return False
    except Conflict as error:  # a frozen wallet pays for nothing more; the session runs on what is held
        if error.code != "wallet_frozen":
            raise
        return False
    assert movement.hold is not None
    session.add(MeteredSessionHold(session_id=metered.id, seq=seq, hold_id=movement.hold.id, amount=amount))
    metered.holds = seq
    metered.held += amount
    metered.covered_until = _covered_until(metered)
    metered.due_at = _due_at(metered)
    return True


async def _extend(session: AsyncSession, metered: MeteredSession, *, now: datetime) -> None:
    """Hold enough to pay up to one interval past ``now``, or as much of it as the wallet can pay."""
    if metered.price == 0:
        return
    target = now + timedelta(seconds=metered.interval_seconds)
    extra = cost_of(metered, until=target) - metered.held
    if extra <= 0:
        return
    if await _hold_more(session, metered, extra, now=now):
        return
    # Not enough for the whole interval: hold what the wallet has left (a concurrent spend may take it first).
    partial = min(extra, await _affordable(session, metered.wallet_id))
    if partial > 0:
        await _hold_more(session, metered, partial, now=now)


# ---------------------------------------------------------------- start, heartbeat, stop


async def start_session(
    session: AsyncSession,
    *,
    user_id: str,
    wallet: Account,
    meter_code: str,
    now: datetime,
    interval_seconds: int = DEFAULT_INTERVAL,
    grace_seconds: int = DEFAULT_GRACE,
    metadata: dict[str, Any] | None = None,
) -> MeteredSession:
    if grace_seconds > interval_seconds:
        raise InvalidRequest(
            "grace_seconds cannot exceed interval_seconds: the holds must pay for the grace period.",
            code="invalid_grace",
            param="grace_seconds",
        )
    # The wallet is locked before the session row is written: on PostgreSQL that row's foreign key takes
    # FOR KEY SHARE on the wallet, and two starts that each held it while waiting for the ledger's FOR UPDATE
    # would deadlock. Holding FOR UPDATE first, the key check is the lock holder's own (see docs/decisions.md).
    wallet_locked(session)
    locked = await session.scalar(
        select(Account)
        .where(Account.id == wallet.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    wallet = locked if locked is not None else wallet
    if wallet.frozen:
        raise Conflict(f"The wallet {wallet.id} is frozen.", code="wallet_frozen", param="wallet")
    meter = await catalog_service.get_meter(session, meter_code)
    unit_seconds = UNIT_SECONDS.get(meter.unit.lower())
    if meter.kind != "unit" or unit_seconds is None or meter.price is None or meter.per is None:
        raise InvalidRequest(
            f"The meter {meter_code} is not priced by time (its unit must be second, minute or hour).",
            code="meter_not_timed",
            param="meter",
        )
    if not meter.active or meter.archived_at is not None:
        raise InvalidRequest(f"The meter {meter_code} is not active.", code="meter_inactive", param="meter")
    metered = MeteredSession(
        id=new_id("ses"),
        user_id=user_id,
        wallet_id=wallet.id,
        meter_code=meter.code,
        unit=meter.unit,
        price=meter.price,
        per=meter.per,
        unit_seconds=unit_seconds,
        asset=wallet.asset,
        interval_seconds=interval_seconds,
        grace_seconds=grace_seconds,
        status="active",
        held=0,
        holds=0,
        charged=0,
        released=0,
        heartbeats=0,
        metadata_=metadata or {},
        started_at=now,
        last_heartbeat_at=now,
        covered_until=None,
        due_at=now + timedelta(seconds=grace_seconds),
    )
    session.add(metered)
    await session.flush()  # the hold rows refer to the session
    if metered.price > 0:
        first = cost_of(metered, until=now + timedelta(seconds=interval_seconds))
        if first > 0 and not await _hold_more(session, metered, first, now=now):
            raise InsufficientFunds(
                "Not enough credits for the session's first interval.",
                param="wallet",
                available=await _affordable(session, wallet.id),
                asset=wallet.asset,
                required=first,
            )
    await _event(session, metered, "session.started")
    await low_balance.balances_changed(session, wallet_ids=[wallet.id])
    return metered


async def get_session(session: AsyncSession, session_id: str, *, lock: bool = False) -> MeteredSession | None:
    stmt = select(MeteredSession).where(MeteredSession.id == session_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    found: MeteredSession | None = await session.scalar(stmt)
    return found


async def heartbeat(
    session: AsyncSession, *, metered: MeteredSession, now: datetime, metrics: dict[str, Any] | None = None
) -> MeteredSession:
    """Records a heartbeat and extends the holds. A session the server should have ended already (holds used
    up, or the last heartbeat older than the grace) is ended instead, and answered ended."""
    if metered.status != "active":
        raise Conflict(f"The session {metered.id} has ended.", code="session_ended", param="session_id")
    if await _end_if_due(session, metered, now=now):
        return metered
    if now < metered.last_heartbeat_at:
        now = metered.last_heartbeat_at  # a clock step back never moves billing backwards
    metered.last_heartbeat_at = now
    metered.heartbeats += 1
    if metrics is not None:
        metered.metrics = metrics
    metered.due_at = _due_at(metered)
    await _extend(session, metered, now=now)
    await _event(session, metered, "session.tick")
    await low_balance.balances_changed(session, wallet_ids=[metered.wallet_id])
    return metered


async def stop(session: AsyncSession, *, metered: MeteredSession, now: datetime) -> MeteredSession:
    """Ends the session now (or where the server should already have ended it) and charges it once."""
    if metered.status != "active":
        raise Conflict(f"The session {metered.id} has ended.", code="session_ended", param="session_id")
    if await _end_if_due(session, metered, now=now):
        return metered
    await _end(session, metered, until=max(now, metered.started_at), reason="stopped", now=now)
    return metered


async def _end_if_due(session: AsyncSession, metered: MeteredSession, *, now: datetime) -> bool:
    due = _due_end(metered, now)
    if due is None:
        return False
    await _end(session, metered, until=due[0], reason=due[1], now=now)
    return True


async def _end(
    session: AsyncSession, metered: MeteredSession, *, until: datetime, reason: str, now: datetime
) -> None:
    """Charges the session up to ``until`` (never past its holds) and releases the rest of the holds."""
    if metered.covered_until is not None and until > metered.covered_until:
        until = metered.covered_until
    cost = cost_of(metered, until=until)
    assert cost <= metered.held or metered.price == 0, "billing outran the holds"
    holds = (
        await session.scalars(
            select(MeteredSessionHold)
            .where(MeteredSessionHold.session_id == metered.id)
            .order_by(MeteredSessionHold.seq)
        )
    ).all()
    left = cost
    for part in holds:
        take = min(left, part.amount)
        key = f"session:{metered.id}:end:{part.seq}"
        if take > 0:
            await ledger_service.capture(
                session,
                hold_id=part.hold_id,
                amount=take,
                idempotency_key=key,
                memo=f"Session {metered.id}",
            )
        else:
            await ledger_service.release(session, hold_id=part.hold_id, idempotency_key=key)
        left -= take
    metered.status = "ended"
    metered.end_reason = reason
    metered.billed_until = until
    metered.ended_at = now
    metered.charged = cost
    metered.released = metered.held - cost
    await _event(session, metered, "session.ended")
    await low_balance.balances_changed(session, wallet_ids=[metered.wallet_id])


# ---------------------------------------------------------------- reads and the runner


async def list_sessions(
    session: AsyncSession, *, user_id: str, params: PageParams, status: str | None = None
) -> Page[MeteredSession]:
    stmt = select(MeteredSession).where(MeteredSession.user_id == user_id)
    if status is not None:
        stmt = stmt.where(MeteredSession.status == status)
    return await paginate(session, stmt, MeteredSession.id, params)


async def end_due_sessions(session: AsyncSession, *, now: datetime, limit: int = 100) -> int:
    """Ends the active sessions whose holds ran out or whose heartbeats stopped, as of ``now``."""
    ids = (
        await session.scalars(
            select(MeteredSession.id)
            .where(MeteredSession.status == "active", MeteredSession.due_at <= now)
            .order_by(MeteredSession.due_at)
            .limit(limit)
        )
    ).all()
    ended = 0
    for session_id in ids:
        metered = await get_session(session, session_id, lock=True)
        if metered is None or metered.status != "active":
            continue
        if await _end_if_due(session, metered, now=now):
            ended += 1
    return ended


def enforce_job(clock: Clock) -> Callable[[Database, Settings], Awaitable[int]]:
    """The runner job: ends due sessions, one transaction per run, at ``clock()``."""

    async def job(db: Database, _settings: Settings) -> int:
        async with db.transaction() as session:
            return await end_due_sessions(session, now=clock())

    return job
