"""Refunds: the rules.

A refund gives back money for one captured payment of an order, through the gateway that took it:

1. ``create_refund`` (an admin) or ``refund_duplicate_payment`` (``fulfil``, for a second captured payment on
   a granted order) writes the refund row (``created``) in the caller's transaction, which the caller commits
   BEFORE the gateway is asked: the refund's id is the gateway's idempotency key, so whatever happens next the
   same refund can be sent again and never refunds twice. The credits to take back are held (a ledger hold) in
   that same transaction.
2. ``send_refund`` asks the gateway, holding no database lock (it takes the ``Database``, not a session, and
   commits a short transaction after the answer). ``processed`` settles it, ``pending`` waits for the refund
   webhook, a refusal fails it, a gateway error leaves it ``created`` for the ``refunds`` job to send again.
3. ``settle_processed`` captures the hold (and, under ``negative``, claws back the rest into debt);
   ``settle_failed`` releases the hold. Both run at most once per refund (the refund row is locked, and the
   ledger movements carry keys ``refund:{id}:capture`` / ``:clawback`` / ``:release``).

Credits are taken back in proportion to the money, bonus included, rounded down over the refunds of a payment
taken together (see ``credits_due``): the refund that returns the last of the money takes the last credit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.db import Database, lock_row, utcnow
from prepaid.errors import Conflict, InvalidRequest, NotFound
from prepaid.ids import new_id
from prepaid.ledger import service as ledger_service
from prepaid.ledger.errors import HoldNotPending, InsufficientCredits, WalletFrozen
from prepaid.notify import payment_notices
from prepaid.observability import log
from prepaid.pagination import Page, PageParams, paginate
from prepaid.payments.gateways import (
    EventType,
    Gateway,
    GatewayError,
    GatewayRefund,
    GatewayRefused,
    RefundStatus,
)
from prepaid.payments.models import (
    PaymentAttempt,
    PaymentGatewayEvent,
    PaymentOrder,
    PaymentRefund,
)

# The credits a refund reserves stay reserved until the gateway settles it; a hold must have an end, and this
# one outlasts any gateway's refund processing (Razorpay: days). If it ends first, settling claws back instead.
HOLD_FOR = timedelta(days=365)
# The request sends a new refund itself; the job takes it only if that did not settle it.
FIRST_RETRY_AFTER = timedelta(seconds=30)
RETRY_MAX = timedelta(hours=1)
# An order is refundable once money came in for it: granted (fulfilled, partially refunded, refunded) or
# flagged (paid, nothing granted). "disputed" is refused on its own: a chargeback is open.
REFUNDABLE = frozenset({"fulfilled", "partially_refunded", "refunded", "flagged"})
REFUND_EVENTS = frozenset(
    {EventType.REFUND_CREATED.value, EventType.REFUND_PROCESSED.value, EventType.REFUND_FAILED.value}
)
OPEN = ("created", "pending")


def hold_key(refund_id: str) -> str:
    return f"refund:{refund_id}:hold"


def capture_key(refund_id: str) -> str:
    return f"refund:{refund_id}:capture"


def clawback_key(refund_id: str) -> str:
    return f"refund:{refund_id}:clawback"


def release_key(refund_id: str) -> str:
    return f"refund:{refund_id}:release"


def credits_due(*, granted: int, paid: int, refunded_before: int, credits_before: int, amount: int) -> int:
    """The credits a refund of ``amount`` takes back: ``floor(granted x (refunded_before + amount) / paid)``
    minus what the payment's earlier (not failed) refunds take, never below 0 nor above what is left. So the
    credits taken over all refunds are always the money's share rounded down, and refunding all of the money
    takes all of the credits, bonus included."""
    if paid <= 0 or granted <= 0:
        return 0
    share = granted * min(refunded_before + amount, paid) // paid
    return max(0, min(share - credits_before, granted - credits_before))


def _snapshot(refund: PaymentRefund) -> dict[str, Any]:
    return {
        "order_id": refund.order_id,
        "status": refund.status,
        "amount": refund.amount,
        "currency": refund.currency,
        "reason": refund.reason,
        "clawback": refund.clawback,
        "credits": refund.credits,
        "credits_held": refund.credits_held,
        "payment_id": refund.payment_id,
        "gateway": refund.gateway,
    }


# ---------------------------------------------------------------- reading


async def get_refund(session: AsyncSession, refund_id: str) -> PaymentRefund:
    refund = await session.get(PaymentRefund, refund_id, populate_existing=True)
    if refund is None:
        raise NotFound(f"No refund {refund_id}.", param="refund_id")
    return refund


async def list_refunds(
    session: AsyncSession,
    *,
    params: PageParams,
    order_id: str | None = None,
    user_id: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    gateway: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Page[PaymentRefund]:
    """Refunds newest first, narrowed by any of the filters."""
    stmt: Select[Any] = select(PaymentRefund)
    if order_id is not None:
        stmt = stmt.where(PaymentRefund.order_id == order_id)
    if user_id is not None:
        stmt = stmt.where(
            PaymentRefund.order_id.in_(select(PaymentOrder.id).where(PaymentOrder.user_id == user_id))
        )
    if status is not None:
        stmt = stmt.where(PaymentRefund.status == status)
    if kind is not None:
        stmt = stmt.where(PaymentRefund.kind == kind)
    if gateway is not None:
        stmt = stmt.where(PaymentRefund.gateway == gateway)
    if created_after is not None:
        stmt = stmt.where(PaymentRefund.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(PaymentRefund.created_at < created_before)
    return await paginate(session, stmt, PaymentRefund.id, params)


async def refunded_totals(session: AsyncSession, *, user_id: str) -> tuple[dict[str, int], int]:
    """Money given back per currency, and the credits those refunds took back in proportion (whatever the
    policy: the purchase no longer counts), over the processed refunds of a user's fulfilled orders. The
    automatic refunds of duplicate payments are left out: that money never counted as spent."""
    rows = await session.execute(
        select(PaymentRefund.currency, func.sum(PaymentRefund.amount), func.sum(PaymentRefund.credits))
        .join(PaymentOrder, PaymentOrder.id == PaymentRefund.order_id)
        .where(
            PaymentOrder.user_id == user_id,
            PaymentOrder.fulfilled_at.is_not(None),
            PaymentRefund.kind == "admin",
            PaymentRefund.status == "processed",
        )
        .group_by(PaymentRefund.currency)
    )
    money: dict[str, int] = {}
    credits = 0
    for currency, amount, taken in rows:
        money[currency] = int(amount or 0)
        credits += int(taken or 0)
    return money, credits


async def _lock_order(session: AsyncSession, order_id: str) -> PaymentOrder:
    row = await lock_row(session, PaymentOrder, order_id)
    if row is None:
        raise NotFound(f"No order {order_id}.", param="order_id")
    return row


async def _lock_refund(session: AsyncSession, refund_id: str) -> PaymentRefund:
    row = await lock_row(session, PaymentRefund, refund_id)
    if row is None:
        raise NotFound(f"No refund {refund_id}.", param="refund_id")
    return row


async def _refunded(session: AsyncSession, *, order_id: str, payment_id: str) -> tuple[int, int]:
    """Money and credits of the payment's refunds that have not failed (created, pending or processed)."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(PaymentRefund.amount), 0),
                func.coalesce(func.sum(PaymentRefund.credits), 0),
            ).where(
                PaymentRefund.order_id == order_id,
                PaymentRefund.payment_id == payment_id,
                PaymentRefund.status != "failed",
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def _paying_gateway(session: AsyncSession, order: PaymentOrder, payment_id: str) -> str | None:
    """The gateway of the attempt that took this payment (an order retried on another gateway has several)."""
    gateway = await session.scalar(
        select(PaymentAttempt.gateway)
        .where(PaymentAttempt.order_id == order.id, PaymentAttempt.payment_id == payment_id)
        .order_by(PaymentAttempt.attempt_number.desc())
        .limit(1)
    )
    return gateway or order.gateway


# ---------------------------------------------------------------- creating


async def _hold_credits(
    session: AsyncSession, refund: PaymentRefund, *, wallet_id: str, wanted: int, now: datetime
) -> None:
    """Reserve up to ``wanted`` credits for the refund: what the wallet has available now (a hold never makes
    debt). A frozen wallet is not held (a hold is a movement it refuses); settling claws back then instead."""
    for _ in range(3):
        wallet = await ledger_service.get_wallet(session, wallet_id)
        await session.refresh(wallet)
        amount = min(wanted, max(0, wallet.balance))
        if amount <= 0 or wallet.frozen:
            return
        try:
            movement = await ledger_service.hold(
                session,
                wallet_id=wallet_id,
                amount=amount,
                expires_at=now + HOLD_FOR,
                idempotency_key=hold_key(refund.id),
                reference=("refund", refund.id),
                memo=f"Refund {refund.id} of order {refund.order_id}",
                metadata={"refund_id": refund.id, "order_id": refund.order_id},
            )
        except InsufficientCredits:  # spent meanwhile (between the read and the lock): read again
            continue
        except WalletFrozen:
            return
        assert movement.hold is not None
        refund.hold_id, refund.credits_held = movement.hold.id, amount
        return


async def create_refund(
    session: AsyncSession,
    *,
    order_id: str,
    amount: int | None,
    reason: str | None,
    clawback: str,
    now: datetime,
    actor: audit_service.Actor | None,
) -> PaymentRefund:
    """An admin's refund of an order's payment: all that is left of it (``amount`` None) or part. Refused on
    an order nobody paid, while a chargeback is open (``disputed``), and above what was paid less the earlier
    refunds that have not failed. The refund is ``created`` and the credits to take back are held; the caller
    commits, then sends it (``send_refund``)."""
    order = await _lock_order(session, order_id)
    if order.status == "disputed":
        raise Conflict(
            "A chargeback on this order is open: no refund until it is resolved.",
            code="order_disputed",
            param="order_id",
        )
    if order.status not in REFUNDABLE or order.payment_id is None or order.amount_paid <= 0:
        raise Conflict(
            f"Order {order.id} is {order.status}: only a paid order can be refunded.",
            code="order_not_refundable",
            param="order_id",
        )
    refunded, credits_before = await _refunded(session, order_id=order.id, payment_id=order.payment_id)
    left = order.amount_paid - refunded
    if left <= 0:
        raise Conflict(
            f"Order {order.id} is refunded in full already.", code="order_already_refunded", param="order_id"
        )
    if amount is None:
        amount = left
    if amount > left:
        raise InvalidRequest(
            f"The refund of {amount} is more than what is left of the payment: {left} {order.currency} "
            f"({order.amount_paid} paid, {refunded} refunded or being refunded).",
            code="refund_exceeds_payment",
            param="amount",
            refundable=left,
            currency=order.currency,
        )
    gateway = await _paying_gateway(session, order, order.payment_id)
    if gateway is None:
        raise Conflict(
            "This order was paid without a gateway.", code="order_not_refundable", param="order_id"
        )
    granted = order.credits + order.bonus_credits if order.purchase_transaction_id is not None else 0
    credits = credits_due(
        granted=granted,
        paid=order.amount_paid,
        refunded_before=refunded,
        credits_before=credits_before,
        amount=amount,
    )
    refund = PaymentRefund(
        id=new_id("rfd"),
        order_id=order.id,
        kind="admin",
        status="created",
        gateway=gateway,
        payment_id=order.payment_id,
        amount=amount,
        currency=order.currency,
        reason=(reason or None) and reason[:500],
        clawback=clawback,
        asset=order.asset,
        credits=credits,
        credits_held=0,
        credits_taken=0,
        send_attempts=0,
        next_attempt_at=now + FIRST_RETRY_AFTER,
        created_by=actor.user_id if actor is not None else None,
        created_at=now,
        updated_at=now,
    )
    session.add(refund)
    await session.flush()  # the refund row exists before the hold refers to it
    if clawback != "none" and credits > 0:
        await _hold_credits(session, refund, wallet_id=order.wallet_id, wanted=credits, now=now)
    if actor is not None:
        await audit_service.record(
            session,
            actor=actor,
            action="refund.create",
            object_type="refund",
            object_id=refund.id,
            before=None,
            after=_snapshot(refund),
        )
    log.info("refund_created", refund_id=refund.id, order_id=order.id, amount=amount, credits=credits)
    return refund


async def refund_duplicate_payment(
    session: AsyncSession,
    *,
    order: PaymentOrder,
    payment_id: str,
    amount: int,
    currency: str,
    gateway: str | None,
    now: datetime,
) -> PaymentRefund | None:
    """A second captured payment on a granted order goes back, through the same path as any refund (policy
    ``none``: the credits were granted once, for the first payment). Once per payment; the order (locked by
    the caller) keeps its status and its ``duplicate_payment`` flag. The ``refunds`` job sends it."""
    gateway = gateway or order.gateway
    if gateway is None or amount <= 0:
        return None
    dedup_key = f"duplicate:{gateway}:{payment_id}"[:300]
    existing = await session.scalar(select(PaymentRefund).where(PaymentRefund.dedup_key == dedup_key))
    if existing is not None:
        return existing
    refund = PaymentRefund(
        id=new_id("rfd"),
        order_id=order.id,
        kind="duplicate_payment",
        status="created",
        gateway=gateway,
        payment_id=payment_id,
        amount=amount,
        currency=currency.upper(),
        reason="Duplicate payment: the order was already paid.",
        clawback="none",
        asset=order.asset,
        credits=0,
        credits_held=0,
        credits_taken=0,
        dedup_key=dedup_key,
        send_attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )
    session.add(refund)
    log.warning("duplicate_payment_refund", refund_id=refund.id, order_id=order.id, payment_id=payment_id)
    return refund


# ---------------------------------------------------------------- settling


async def _take_back(session: AsyncSession, refund: PaymentRefund, wallet_id: str) -> int:
    """Capture the refund's hold, then (``negative``: into debt; ``available``: what the wallet has) claw back
    what the hold did not cover. Answers the credits taken."""
    captured = 0
    if refund.hold_id is not None and refund.credits_held > 0:
        try:
            await ledger_service.capture(
                session,
                hold_id=refund.hold_id,
                amount=refund.credits_held,
                idempotency_key=capture_key(refund.id),
                counterparty="@refunds",
                memo=f"Refund {refund.id} of order {refund.order_id}",
                metadata={"refund_id": refund.id, "order_id": refund.order_id},
            )
            captured = refund.credits_held
        except HoldNotPending:  # it expired (or was released): its credits are back in the wallet
            captured = 0
    rest = refund.credits - captured
    if rest <= 0 or refund.clawback == "none":
        return captured
    movement = await ledger_service.clawback(
        session,
        wallet_id=wallet_id,
        amount=rest,
        idempotency_key=clawback_key(refund.id),
        allow_debt=refund.clawback == "negative",
        counterparty="@refunds",
        reference=("refund", refund.id),
        memo=f"Refund {refund.id} of order {refund.order_id}",
        metadata={"refund_id": refund.id, "order_id": refund.order_id},
    )
    taken = movement.transaction.metadata_.get("taken", rest)
    return captured + int(taken)


async def _release(session: AsyncSession, refund: PaymentRefund) -> None:
    if refund.hold_id is None or refund.credits_held <= 0:
        return
    with contextlib.suppress(HoldNotPending):  # expired already: the credits went back then
        await ledger_service.release(
            session,
            hold_id=refund.hold_id,
            idempotency_key=release_key(refund.id),
            memo=f"Refund {refund.id} failed",
        )


async def _order_status_after(session: AsyncSession, order: PaymentOrder) -> None:
    """An order whose payment is refunded in full is ``refunded``, in part ``partially_refunded`` (counting
    processed refunds of the payment that paid it). A disputed order keeps its status: the chargeback decides."""
    if order.payment_id is None or order.status not in REFUNDABLE:
        return
    processed = await session.scalar(
        select(func.coalesce(func.sum(PaymentRefund.amount), 0)).where(
            PaymentRefund.order_id == order.id,
            PaymentRefund.payment_id == order.payment_id,
            PaymentRefund.status == "processed",
        )
    )
    if not processed:
        return
    order.status = "refunded" if int(processed) >= order.amount_paid else "partially_refunded"


async def settle_processed(
    session: AsyncSession, *, refund_id: str, gateway_refund_id: str | None, now: datetime
) -> PaymentRefund:
    """The gateway refunded the money: take the credits back (capture the hold, claw back the rest under the
    policy) and move the order to ``refunded`` / ``partially_refunded``. Once: a settled refund answers as it is."""
    found = await get_refund(session, refund_id)
    order = await _lock_order(session, found.order_id)  # order first, then refund: one lock order everywhere
    refund = await _lock_refund(session, refund_id)
    if refund.status in ("processed", "failed"):
        if refund.status == "failed":
            log.warning("refund_processed_after_failure", refund_id=refund.id)
        return refund
    refund.gateway_refund_id = refund.gateway_refund_id or gateway_refund_id
    refund.credits_taken = await _take_back(session, refund, order.wallet_id)
    refund.status, refund.processed_at, refund.last_error = "processed", now, None
    if refund.kind == "admin":
        await _order_status_after(session, order)
    log.info("refund_processed", refund_id=refund.id, order_id=order.id, credits_taken=refund.credits_taken)
    await payment_notices.refund_processed(session, order, refund)  # notifications: the buyer, once
    return refund


async def settle_failed(
    session: AsyncSession, *, refund_id: str, reason: str, gateway_refund_id: str | None, now: datetime
) -> PaymentRefund:
    """The gateway refused or failed the refund: the held credits go back; the money can be refunded again."""
    found = await get_refund(session, refund_id)
    await _lock_order(session, found.order_id)
    refund = await _lock_refund(session, refund_id)
    if refund.status in ("processed", "failed"):
        return refund
    refund.gateway_refund_id = refund.gateway_refund_id or gateway_refund_id
    await _release(session, refund)
    refund.status, refund.failed_at = "failed", now
    refund.failure_reason = reason[:500]
    log.warning("refund_failed", refund_id=refund.id, order_id=refund.order_id, reason=reason)
    return refund


async def apply_gateway_refund(
    session: AsyncSession, *, refund_id: str, answer: GatewayRefund, now: datetime
) -> PaymentRefund:
    """Settle a refund by what the gateway answered when it was sent."""
    if answer.status is RefundStatus.PROCESSED:
        return await settle_processed(
            session, refund_id=refund_id, gateway_refund_id=answer.refund_id, now=now
        )
    if answer.status is RefundStatus.FAILED:
        return await settle_failed(
            session,
            refund_id=refund_id,
            reason=f"The gateway failed the refund ({answer.raw_status}).",
            gateway_refund_id=answer.refund_id,
            now=now,
        )
    refund = await _lock_refund(session, refund_id)
    if refund.status == "created":
        refund.status = "pending"
    refund.gateway_refund_id = refund.gateway_refund_id or answer.refund_id
    refund.send_attempts += 1
    refund.last_error = None
    return refund


def _backoff(attempts: int) -> timedelta:
    return min(FIRST_RETRY_AFTER * (1 << min(max(0, attempts - 1), 10)), RETRY_MAX)


async def record_send_error(
    session: AsyncSession, *, refund_id: str, error: str, now: datetime
) -> PaymentRefund:
    """The gateway could not be reached (or errored): the refund stays ``created`` and is sent again later,
    with the same idempotency key."""
    refund = await _lock_refund(session, refund_id)
    if refund.status == "created":
        refund.send_attempts += 1
        refund.last_error = error[:1000]
        refund.next_attempt_at = now + _backoff(refund.send_attempts)
    return refund


# ---------------------------------------------------------------- sending (across transactions)


async def send_refund(db: Database, *, refund_id: str, gateways: Mapping[str, Gateway]) -> PaymentRefund:
    """Send a committed ``created`` refund to its gateway (no database lock is held during the call), then
    settle it by the answer in a short transaction. Sending again is harmless: the refund id is the gateway's
    idempotency key."""
    async with db.transaction(write=False) as session:
        refund = await get_refund(session, refund_id)
        if refund.status != "created":
            return refund
        payment_id, amount, currency, reason = (
            refund.payment_id,
            refund.amount,
            refund.currency,
            refund.reason,
        )
        gateway_name = refund.gateway
    gateway = gateways.get(gateway_name)
    if gateway is None:
        async with db.transaction() as session:
            return await record_send_error(
                session,
                refund_id=refund_id,
                error=f"The {gateway_name} gateway is not enabled on this server.",
                now=utcnow(),
            )
    try:
        answer = await gateway.refund(
            payment_id=payment_id, amount=amount, currency=currency, idempotency_key=refund_id, reason=reason
        )
    except GatewayRefused as error:
        async with db.transaction() as session:
            return await settle_failed(
                session, refund_id=refund_id, reason=error.message, gateway_refund_id=None, now=utcnow()
            )
    except GatewayError as error:
        log.warning("refund_send_failed", refund_id=refund_id, error=error.message)
        async with db.transaction() as session:
            return await record_send_error(session, refund_id=refund_id, error=error.message, now=utcnow())
    async with db.transaction() as session:
        return await apply_gateway_refund(session, refund_id=refund_id, answer=answer, now=utcnow())


async def place_refund(
    db: Database,
    *,
    order_id: str,
    amount: int | None,
    reason: str | None,
    clawback: str,
    gateways: Mapping[str, Gateway],
    actor: audit_service.Actor | None,
) -> PaymentRefund:
    """Create the refund (committed, credits held), then send it."""
    async with db.transaction() as session:
        refund = await create_refund(
            session,
            order_id=order_id,
            amount=amount,
            reason=reason,
            clawback=clawback,
            now=utcnow(),
            actor=actor,
        )
        refund_id = refund.id
    return await send_refund(db, refund_id=refund_id, gateways=gateways)


async def due_refunds(session: AsyncSession, *, now: datetime, limit: int = 20) -> list[str]:
    """Claim refunds still ``created`` whose next try is due (``SKIP LOCKED``: another process's claim is
    left to it): each one's next try moves on by the backoff, so a process that dies mid-send leaves it for a
    later run, never for two at once."""
    rows = list(
        await session.scalars(
            select(PaymentRefund)
            .where(PaymentRefund.status == "created", PaymentRefund.next_attempt_at <= now)
            .order_by(PaymentRefund.next_attempt_at, PaymentRefund.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    )
    for refund in rows:
        refund.next_attempt_at = now + _backoff(refund.send_attempts + 1)
    return [refund.id for refund in rows]


# ---------------------------------------------------------------- refund webhooks


@dataclass(frozen=True)
class _EventRefund:
    reference: str | None
    gateway_refund_id: str | None
    status: str | None


async def apply_refund_event(session: AsyncSession, *, row: PaymentGatewayEvent, now: datetime) -> None:
    """A verified ``refund.created`` / ``refund.processed`` / ``refund.failed`` from the inbox: find our refund
    (by the refund id we sent as the idempotency key and in the notes, else the gateway's refund id) and settle
    it. A refund this server did not make (one made in the gateway's dashboard) is noted, not acted on."""
    data = row.data or {}
    event = _EventRefund(
        reference=data.get("refund_reference"),
        gateway_refund_id=data.get("refund_id"),
        status=data.get("status"),
    )
    refund: PaymentRefund | None = None
    if event.reference:
        refund = await session.get(PaymentRefund, event.reference, populate_existing=True)
        if refund is not None and refund.gateway != row.gateway:
            refund = None
    if refund is None and event.gateway_refund_id:
        refund = await session.scalar(
            select(PaymentRefund).where(
                PaymentRefund.gateway == row.gateway,
                PaymentRefund.gateway_refund_id == event.gateway_refund_id,
            )
        )
    if refund is None:
        row.error = f"Not acted on: {row.raw_type} for a refund this server did not make."
        return
    row.order_id = refund.order_id
    if row.type == EventType.REFUND_PROCESSED.value:
        await settle_processed(
            session, refund_id=refund.id, gateway_refund_id=event.gateway_refund_id, now=now
        )
    elif row.type == EventType.REFUND_FAILED.value:
        await settle_failed(
            session,
            refund_id=refund.id,
            reason=f"The gateway reported the refund failed ({event.status or row.raw_type}).",
            gateway_refund_id=event.gateway_refund_id,
            now=now,
        )
    else:
        locked = await _lock_refund(session, refund.id)
        if locked.status == "created":
            locked.status = "pending"
        locked.gateway_refund_id = locked.gateway_refund_id or event.gateway_refund_id
