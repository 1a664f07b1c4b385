"""Disputes and chargebacks: the rules.

- A **customer dispute** is raised by the buyer on one of their orders (a category and a first message) and
  has a message thread. An admin resolves it once: ``grant_credits``, ``refund`` or ``reject``, with a note.
  Resolving again with the same resolution answers the dispute as it is (nothing is granted twice); another
  resolution is ``409 dispute_closed``.
- Granting for ``not_credited`` IS the order's own ``service.fulfil`` (its ledger keys are the order's), so a
  webhook arriving before or after the resolution can never add to it. Any other grant is a goodwill
  ``adjustment`` keyed ``dispute:{id}:grant``. Both need the gateway's live view to show a captured payment,
  unless the admin passes ``override`` with a reason.
- A **chargeback** is opened by the gateway's dispute webhook (``apply_chargeback_event``): one per gateway
  dispute id, whatever order its events arrive in and however often. Opening it moves a granted order to
  ``disputed`` and holds the order's credits (what the wallet still has of them) until the gateway decides:
  won releases the hold and gives the order its status back; lost captures the hold into ``@chargebacks`` and
  claws back the rest, into debt if the credits were spent. Every ledger movement is keyed by the dispute
  (``dispute:{id}:hold|release|capture|clawback``), so a redelivered or re-processed event moves nothing twice.

Functions take the session and never commit; the gateway's live view is fetched by the caller outside any
transaction (``gateway_views``) and handed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.db import lock_row
from prepaid.errors import Conflict, DomainError, InvalidRequest, NotFound
from prepaid.ids import new_id
from prepaid.ledger import service as ledger_service
from prepaid.notify import payment_notices
from prepaid.observability import log
from prepaid.pagination import Page, PageParams, paginate
from prepaid.payments import refunds, service
from prepaid.payments.gateways import EventType, Gateway, GatewayError, GatewayOrder
from prepaid.payments.models import (
    PaymentAttempt,
    PaymentDispute,
    PaymentDisputeMessage,
    PaymentGatewayEvent,
    PaymentOrder,
)

CUSTOMER_CATEGORIES = ("not_credited", "wrong_amount", "duplicate_charge", "refund_request", "other")
RESOLUTIONS = ("grant_credits", "refund", "reject")
CLOSED = frozenset({"resolved", "rejected", "won", "lost"})
# A chargeback's hold lasts as long as the card networks let a dispute run (with arbitration); should it
# expire all the same, a lost chargeback claws the credits back from the wallet instead.
CHARGEBACK_HOLD_FOR = timedelta(days=540)
# Order statuses a chargeback moves to ``disputed`` (credits were granted and not all taken back).
DISPUTABLE_ORDER = frozenset({"fulfilled", "partially_refunded"})


def _not_found(dispute_id: str) -> NotFound:
    return NotFound(f"No dispute {dispute_id}.", param="dispute_id")


def _snapshot(dispute: PaymentDispute) -> dict[str, Any]:
    return {
        "order_id": dispute.order_id,
        "kind": dispute.kind,
        "category": dispute.category,
        "status": dispute.status,
        "resolution": dispute.resolution,
        "resolution_note": dispute.resolution_note,
        "granted_credits": dispute.granted_credits,
        "grant_transaction_id": dispute.grant_transaction_id,
        "refund_id": dispute.refund_id,
        "override_reason": dispute.override_reason,
    }


async def _audit(
    session: AsyncSession,
    actor: audit_service.Actor | None,
    action: str,
    dispute: PaymentDispute,
    before: dict[str, Any] | None,
) -> None:
    if actor is not None:
        await audit_service.record(
            session,
            actor=actor,
            action=action,
            object_type="dispute",
            object_id=dispute.id,
            before=before,
            after=_snapshot(dispute),
        )


def _message(
    session: AsyncSession,
    dispute: PaymentDispute,
    *,
    body: str,
    role: str,
    author_id: str | None,
    now: datetime,
) -> PaymentDisputeMessage:
    message = PaymentDisputeMessage(
        id=new_id("dsm"),
        dispute_id=dispute.id,
        author_id=author_id,
        author_role=role,
        body=body[:5000],
        created_at=now,
    )
    session.add(message)
    return message


# ---------------------------------------------------------------- reading


async def get_dispute(session: AsyncSession, dispute_id: str) -> PaymentDispute:
    dispute = await session.get(PaymentDispute, dispute_id)
    if dispute is None:
        raise _not_found(dispute_id)
    return dispute


async def _lock_dispute(session: AsyncSession, dispute_id: str) -> PaymentDispute:
    row = await lock_row(session, PaymentDispute, dispute_id)
    if row is None:
        raise _not_found(dispute_id)
    return row


async def messages_of(session: AsyncSession, dispute_id: str) -> list[PaymentDisputeMessage]:
    """The thread, oldest first."""
    rows = await session.scalars(
        select(PaymentDisputeMessage)
        .where(PaymentDisputeMessage.dispute_id == dispute_id)
        .order_by(PaymentDisputeMessage.id)
    )
    return list(rows)


async def list_disputes(
    session: AsyncSession,
    *,
    params: PageParams,
    user_id: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    category: str | None = None,
    order_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Page[PaymentDispute]:
    """Disputes newest first; ``user_id`` None lists everyone's (admins)."""
    stmt: Select[Any] = select(PaymentDispute)
    if user_id is not None:
        stmt = stmt.where(PaymentDispute.user_id == user_id)
    if status is not None:
        stmt = stmt.where(PaymentDispute.status == status)
    if kind is not None:
        stmt = stmt.where(PaymentDispute.kind == kind)
    if category is not None:
        stmt = stmt.where(PaymentDispute.category == category)
    if order_id is not None:
        stmt = stmt.where(PaymentDispute.order_id == order_id)
    if created_after is not None:
        stmt = stmt.where(PaymentDispute.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(PaymentDispute.created_at < created_before)
    return await paginate(session, stmt, PaymentDispute.id, params)


async def open_chargebacks(session: AsyncSession, *, order_id: str) -> list[PaymentDispute]:
    """The order's chargebacks the gateway has not decided yet (no refund may be made meanwhile)."""
    rows = await session.scalars(
        select(PaymentDispute).where(
            PaymentDispute.order_id == order_id,
            PaymentDispute.kind == "chargeback",
            PaymentDispute.status == "open",
        )
    )
    return list(rows)


# ---------------------------------------------------------------- the gateway's live view


@dataclass(frozen=True)
class GatewayView:
    """What the gateway says about one attempt of the order (``view``), or why it could not say (``error``)."""

    attempt_id: str
    gateway: str
    gateway_order_id: str
    view: GatewayOrder | None
    error: str | None = None


async def gateway_views(
    attempts: Sequence[PaymentAttempt], gateways: Mapping[str, Gateway]
) -> list[GatewayView]:
    """Ask each gateway about the order's opened attempts, newest first. Call it outside any transaction: it
    waits on the network. A gateway that fails or is not enabled here is reported, not raised."""
    views: list[GatewayView] = []
    for attempt in sorted(attempts, key=lambda a: a.attempt_number, reverse=True):
        if attempt.gateway_order_id is None:
            continue
        gateway = gateways.get(attempt.gateway)
        if gateway is None:
            error = f"The {attempt.gateway} gateway is not enabled here."
            views.append(GatewayView(attempt.id, attempt.gateway, attempt.gateway_order_id, None, error))
            continue
        try:
            view = await gateway.fetch_payment(attempt.gateway_order_id)
        except GatewayError as failure:
            views.append(
                GatewayView(attempt.id, attempt.gateway, attempt.gateway_order_id, None, failure.message)
            )
            continue
        views.append(GatewayView(attempt.id, attempt.gateway, attempt.gateway_order_id, view))
    return views


# ---------------------------------------------------------------- customer disputes


async def open_dispute(
    session: AsyncSession,
    *,
    order_id: str,
    category: str,
    message: str,
    author_id: str,
    author_role: str,
    owner_id: str | None,
    now: datetime,
    actor: audit_service.Actor | None = None,
) -> PaymentDispute:
    """A dispute on an order, with its first message. With ``owner_id``, another user's order is ``NotFound``
    exactly as a missing one. One customer dispute is open per order at a time (``409 dispute_already_open``
    names it)."""
    if category not in CUSTOMER_CATEGORIES:
        raise InvalidRequest(f"Unknown category {category}.", code="invalid_category", param="category")
    order = await session.get(PaymentOrder, order_id)
    if order is None or (owner_id is not None and order.user_id != owner_id):
        raise NotFound(f"No order {order_id}.", param="order")
    order = await service._lock_order(session, order.id)  # one open dispute per order, even when racing
    existing = await session.scalar(
        select(PaymentDispute.id).where(
            PaymentDispute.order_id == order.id,
            PaymentDispute.kind == "customer",
            PaymentDispute.status == "open",
        )
    )
    if existing is not None:
        raise Conflict(
            f"Order {order.id} already has an open dispute, {existing}: add a message to it.",
            code="dispute_already_open",
            param="order",
            dispute=existing,
        )
    dispute = PaymentDispute(
        id=new_id("dsp"),
        order_id=order.id,
        user_id=order.user_id,
        kind="customer",
        category=category,
        status="open",
        held_credits=0,
        granted_credits=0,
        created_at=now,
        updated_at=now,
    )
    session.add(dispute)
    await session.flush()  # the dispute row exists before its first message refers to it
    _message(session, dispute, body=message, role=author_role, author_id=author_id, now=now)
    await _audit(session, actor, "dispute.create", dispute, None)
    return dispute


async def add_message(
    session: AsyncSession,
    *,
    dispute_id: str,
    body: str,
    author_id: str,
    author_role: str,
    now: datetime,
    actor: audit_service.Actor | None = None,
) -> PaymentDisputeMessage:
    """A message on an open dispute (a closed one is ``409 dispute_closed``)."""
    dispute = await _lock_dispute(session, dispute_id)
    if dispute.status in CLOSED:
        raise Conflict(
            f"Dispute {dispute.id} is {dispute.status}; open a new one if something is still wrong.",
            code="dispute_closed",
            param="dispute_id",
        )
    message = _message(session, dispute, body=body, role=author_role, author_id=author_id, now=now)
    dispute.updated_at = now
    if author_role == "admin":  # notifications: the owner hears of an admin's answer (see decisions.md)
        await payment_notices.dispute_updated(session, dispute, event=message.id, message=message.body)
    if actor is not None:
        await audit_service.record(
            session,
            actor=actor,
            action="dispute.message",
            object_type="dispute",
            object_id=dispute.id,
            before=None,
            after={"message_id": message.id, "body": message.body},
        )
    return message


@dataclass(frozen=True)
class Resolution:
    """What an admin decided: ``grant_credits`` (``amount`` for any category but ``not_credited``), ``refund``
    (``amount`` in money, default all that is left, with a ``clawback`` policy) or ``reject``; ``override`` (with its reason) grants even
    though the gateway does not show a captured payment."""

    action: str
    note: str
    amount: int | None = None
    override: bool = False
    override_reason: str | None = None
    clawback: str = "available"


def _captured(views: Sequence[GatewayView]) -> list[GatewayView]:
    return [v for v in views if v.view is not None and v.view.captured_payments]


def _paid_per_records(order: PaymentOrder) -> bool:
    """A captured payment this server verified already (fulfil recorded it; an admin's override is not one)."""
    return (
        order.payment_id is not None
        and not order.payment_id.startswith("override:")
        and order.amount_paid > 0
    )


async def resolve_dispute(
    session: AsyncSession,
    *,
    dispute_id: str,
    resolution: Resolution,
    views: Sequence[GatewayView],
    resolver_id: str,
    actor: audit_service.Actor,
    now: datetime,
) -> PaymentDispute:
    """Resolve a customer dispute once (see the module's rules). ``views`` is the gateway's live view of the
    order's attempts, fetched just before. A ``refund`` resolution writes the refund (``refund_id``); the caller
    sends it to the gateway after committing (``refunds.send_refund``)."""
    if resolution.action not in RESOLUTIONS:
        raise InvalidRequest(
            f"Unknown resolution {resolution.action}.", code="invalid_resolution", param="resolution"
        )
    if resolution.override and not resolution.override_reason:
        raise InvalidRequest(
            "An override needs its override_reason.", code="override_reason_required", param="override_reason"
        )
    found = await get_dispute(session, dispute_id)
    order = await service._lock_order(
        session, found.order_id
    )  # the order first, as fulfil and chargebacks do
    dispute = await _lock_dispute(session, dispute_id)
    if dispute.kind == "chargeback":
        raise Conflict(
            "A chargeback is decided by the gateway (won or lost), not resolved here.",
            code="chargeback_not_resolvable",
            param="dispute_id",
        )
    if dispute.status in CLOSED:
        if dispute.resolution == resolution.action:
            return dispute  # resolved already, the same way: nothing happens twice
        raise Conflict(
            f"Dispute {dispute.id} is already {dispute.status} ({dispute.resolution}).",
            code="dispute_closed",
            param="dispute_id",
        )
    before = _snapshot(dispute)
    if resolution.action == "grant_credits":
        await _grant(session, dispute=dispute, order=order, resolution=resolution, views=views, now=now)
        dispute.status = "resolved"
    elif resolution.action == "refund":
        # the refund is written (its credits held) in this transaction; the caller sends it after the commit
        refund = await refunds.create_refund(
            session,
            order_id=order.id,
            amount=resolution.amount,
            reason=f"Dispute {dispute.id}: {resolution.note}"[:500],
            clawback=resolution.clawback,
            now=now,
            actor=actor,
        )
        dispute.refund_id = refund.id
        dispute.status = "resolved"
    else:
        dispute.status = "rejected"
    dispute.resolution = resolution.action
    dispute.resolution_note = resolution.note[:2000]
    dispute.resolved_by = resolver_id
    dispute.resolved_at = dispute.updated_at = now
    _message(
        session,
        dispute,
        body=f"{_RESOLVED_AS[resolution.action]}: {resolution.note}",
        role="admin",
        author_id=resolver_id,
        now=now,
    )
    await _audit(session, actor, "dispute.resolve", dispute, before)
    await payment_notices.dispute_updated(  # notifications: the owner, once per dispute
        session, dispute, event="resolved", message=f"{_RESOLVED_AS[resolution.action]}: {resolution.note}"
    )
    return dispute


_RESOLVED_AS = {"grant_credits": "Credits granted", "refund": "Refunded", "reject": "Rejected"}


async def _grant(
    session: AsyncSession,
    *,
    dispute: PaymentDispute,
    order: PaymentOrder,
    resolution: Resolution,
    views: Sequence[GatewayView],
    now: datetime,
) -> None:
    captured = _captured(views)
    if dispute.category == "not_credited" and order.status in service.GRANTED and resolution.amount is None:
        # fulfilled meanwhile (a webhook, the verify call): that was the grant; nothing to add or to check
        dispute.granted_credits = order.credits + order.bonus_credits
        dispute.grant_transaction_id = order.purchase_transaction_id
        return
    if not captured and order.amount > 0 and not _paid_per_records(order):
        if not resolution.override:
            raise Conflict(
                "The gateway does not show a captured payment for this order; to grant all the same, send "
                "override: true with an override_reason.",
                code="payment_not_captured",
                param="override",
            )
        dispute.override_reason = resolution.override_reason
    if dispute.category == "not_credited":
        if resolution.amount is not None:
            raise InvalidRequest(
                "A not_credited dispute is resolved by fulfilling the order (its own credits): send no "
                "amount.",
                code="amount_not_allowed",
                param="amount",
            )
        if captured:
            found = captured[0]
            assert found.view is not None
            order = await service.apply_gateway_view(
                session, attempt_id=found.attempt_id, view=found.view, now=now
            )
        elif order.amount == 0:
            order = await service.fulfil(session, order_id=order.id, payment=None, now=now)
        elif order.status not in service.GRANTED:
            # The admin overrides the gateway: the order is fulfilled as if paid, under its own ledger keys, so
            # a payment captured later finds it granted (and flags it for a look) rather than granting again.
            facts = service.PaymentFacts(
                payment_id=f"override:{dispute.id}",
                amount=order.amount,
                currency=order.currency,
                method="override",
            )
            order = await service.fulfil(session, order_id=order.id, payment=facts, now=now)
        if order.status not in service.GRANTED:
            raise Conflict(
                f"The order could not be fulfilled: it is {order.status}"
                + (f" ({order.flag_reason})" if order.flag_reason else "")
                + ". Grant an amount on another category of dispute, or refund.",
                code="order_not_fulfilled",
                param="resolution",
            )
        dispute.granted_credits = order.credits + order.bonus_credits
        dispute.grant_transaction_id = order.purchase_transaction_id
        return
    if resolution.amount is None:
        raise InvalidRequest("How many credits to grant?", code="amount_required", param="amount")
    movement = await ledger_service.grant(
        session,
        wallet_id=order.wallet_id,
        amount=resolution.amount,
        idempotency_key=f"dispute:{dispute.id}:grant",
        source="adjustment",
        kind="adjustment",
        counterparty="@adjustments",
        reference=("dispute", dispute.id),
        memo=f"Goodwill for dispute {dispute.id} on order {order.id}",
        metadata={"dispute_id": dispute.id, "order_id": order.id, "category": dispute.category},
        actor_user_id=dispute.resolved_by,
    )
    dispute.granted_credits = resolution.amount
    dispute.grant_transaction_id = movement.transaction.id


# ---------------------------------------------------------------- chargebacks (gateway dispute webhooks)


async def _order_for_event(session: AsyncSession, row: PaymentGatewayEvent) -> PaymentOrder | None:
    """The order a dispute event is about: through its attempt (the gateway order / intent id, or our
    reference), else through the payment id the order or an attempt recorded."""
    data = row.data or {}
    attempt = await service._attempt_for(
        session,
        gateway=row.gateway,
        gateway_order_id=data.get("gateway_order_id"),
        reference=data.get("reference"),
    )
    if attempt is not None:
        return await session.get(PaymentOrder, attempt.order_id)
    payment_id = data.get("payment_id")
    if not isinstance(payment_id, str) or not payment_id:
        return None
    order_id = await session.scalar(
        select(PaymentAttempt.order_id)
        .join(PaymentOrder, PaymentOrder.id == PaymentAttempt.order_id)
        .where(
            PaymentAttempt.gateway == row.gateway,
            or_(PaymentAttempt.payment_id == payment_id, PaymentOrder.payment_id == payment_id),
        )
        .limit(1)
    )
    return await session.get(PaymentOrder, order_id) if order_id is not None else None


async def credits_at_stake(
    session: AsyncSession, order: PaymentOrder, amount: int | None, currency: str | None
) -> int:
    """The credits a chargeback of ``amount`` takes back: all the order granted (bonus included) for the whole
    payment, in proportion (rounded up) for part of it; none if the order granted nothing; never more than
    what the payment's refunds (not failed) have not taken back already."""
    if order.purchase_transaction_id is None:
        return 0
    total = order.credits + order.bonus_credits
    if order.payment_id is not None:
        _money, refunded_credits = await refunds._refunded(
            session, order_id=order.id, payment_id=order.payment_id
        )
        left = max(0, total - refunded_credits)
    else:
        left = total
    if amount is None or order.amount <= 0 or (currency or "").upper() != order.currency:
        return left
    if amount >= order.amount:
        return left
    return min(left, -(-total * max(amount, 0) // order.amount))


async def _hold_credits(
    session: AsyncSession, *, dispute: PaymentDispute, order: PaymentOrder, now: datetime
) -> None:
    """Hold what the wallet still has of the credits at stake (none if it has none left: a lost chargeback
    then takes them back as debt)."""
    target = await credits_at_stake(session, order, dispute.amount, dispute.currency)
    if target <= 0:
        return
    wallet = await ledger_service.get_wallet(session, order.wallet_id)
    parts = (await ledger_service.lot_parts(session, wallet_ids=[wallet.id], now=now))[wallet.id]
    amount = min(target, sum(parts.values()) - wallet.debt)
    if amount <= 0:
        return
    try:
        async with session.begin_nested():
            movement = await ledger_service.hold(
                session,
                wallet_id=wallet.id,
                amount=amount,
                expires_at=now + CHARGEBACK_HOLD_FOR,
                idempotency_key=f"dispute:{dispute.id}:hold",
                reference=("dispute", dispute.id),
                memo=f"Chargeback {dispute.gateway_dispute_id} on order {order.id}",
                metadata={"dispute_id": dispute.id, "order_id": order.id},
            )
    except DomainError as error:  # credits gone meanwhile, a frozen wallet: a loss becomes debt instead
        log.warning("chargeback_hold_failed", dispute_id=dispute.id, error=error.code)
        return
    assert movement.hold is not None
    dispute.hold_id, dispute.held_credits = movement.hold.id, amount


async def _release(session: AsyncSession, dispute: PaymentDispute) -> None:
    if dispute.hold_id is None:
        return
    hold = await ledger_service.get_hold(session, dispute.hold_id)
    if hold.status == "pending":
        await ledger_service.release(
            session,
            hold_id=hold.id,
            idempotency_key=f"dispute:{dispute.id}:release",
            memo=f"Chargeback {dispute.gateway_dispute_id} won",
        )


async def _take_back(session: AsyncSession, *, dispute: PaymentDispute, order: PaymentOrder) -> None:
    """A lost chargeback: the hold is captured into ``@chargebacks`` and the rest of the credits at stake is
    clawed back, into debt if they were spent."""
    target = await credits_at_stake(session, order, dispute.amount, dispute.currency)
    taken = 0
    if dispute.hold_id is not None:
        hold = await ledger_service.get_hold(session, dispute.hold_id)
        if hold.status == "pending":
            await ledger_service.capture(
                session,
                hold_id=hold.id,
                amount=hold.amount,
                idempotency_key=f"dispute:{dispute.id}:capture",
                counterparty="@chargebacks",
                memo=f"Chargeback {dispute.gateway_dispute_id} lost",
                metadata={"dispute_id": dispute.id, "order_id": order.id},
            )
            taken = hold.amount
        elif hold.status == "captured":
            taken = hold.captured
    rest = target - taken
    if rest > 0:
        movement = await ledger_service.clawback(
            session,
            wallet_id=order.wallet_id,
            amount=rest,
            idempotency_key=f"dispute:{dispute.id}:clawback",
            allow_debt=True,
            counterparty="@chargebacks",
            reference=("dispute", dispute.id),
            memo=f"Chargeback {dispute.gateway_dispute_id} lost",
            metadata={"dispute_id": dispute.id, "order_id": order.id},
        )
        dispute.clawback_transaction_id = movement.transaction.id


async def apply_chargeback_event(
    session: AsyncSession, *, row: PaymentGatewayEvent, now: datetime
) -> str | None:
    """Apply a stored dispute event (``dispute.opened|updated|won|lost``); answers a note for the event row when
    there was nothing to do. Whatever order the events arrive in, the first one for a gateway dispute opens it
    (a ``won`` or ``lost`` first opens it decided); a decided chargeback takes no further events."""
    data = row.data or {}
    gateway_dispute_id = data.get("dispute_id")
    if not isinstance(gateway_dispute_id, str) or not gateway_dispute_id:
        return "A dispute event without the gateway's dispute id."
    found = await _order_for_event(session, row)
    if found is None:
        return "No order of this server matches the dispute."
    row.order_id = found.id
    order = await service._lock_order(session, found.id)  # serialises every event of this order's disputes
    dispute = await session.scalar(
        select(PaymentDispute)
        .where(PaymentDispute.gateway == row.gateway, PaymentDispute.gateway_dispute_id == gateway_dispute_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    amount, currency = data.get("amount"), data.get("currency")
    if dispute is None:
        dispute = PaymentDispute(
            id=new_id("dsp"),
            order_id=order.id,
            user_id=order.user_id,
            kind="chargeback",
            category="chargeback",
            status="open",
            gateway=row.gateway,
            gateway_dispute_id=gateway_dispute_id[:255],
            gateway_payment_id=(data.get("payment_id") or None) and str(data["payment_id"])[:255],
            amount=amount if isinstance(amount, int) else None,
            currency=currency.upper()[:3] if isinstance(currency, str) else None,
            reason=(data.get("failure_reason") or None) and str(data["failure_reason"])[:500],
            held_credits=0,
            granted_credits=0,
            created_at=now,
            updated_at=now,
        )
        session.add(dispute)
        await session.flush()  # the dispute exists before its hold and message refer to it
        _message(
            session,
            dispute,
            body=f"The customer's bank opened a chargeback ({row.raw_type}"
            + (f", reason {dispute.reason}" if dispute.reason else "")
            + ").",
            role="system",
            author_id=None,
            now=now,
        )
        if order.status in DISPUTABLE_ORDER:
            dispute.order_status_before, order.status = order.status, "disputed"
        elif order.status == "disputed":
            dispute.order_status_before = "disputed"
        if row.type in (EventType.DISPUTE_OPENED.value, EventType.DISPUTE_UPDATED.value):
            await _hold_credits(session, dispute=dispute, order=order, now=now)
        # notifications: every admin once per chargeback; the buyer hears their credits are held
        await payment_notices.chargeback_opened(
            session, order, dispute_id=dispute.id, amount=dispute.amount, currency=dispute.currency
        )
        if dispute.held_credits:
            await payment_notices.dispute_updated(
                session,
                dispute,
                event="opened",
                message="A chargeback was opened on this order: its credits are held until the bank decides.",
            )
    elif dispute.status in CLOSED:
        return f"The chargeback is {dispute.status} already; {row.raw_type} changes nothing."
    if isinstance(data.get("status"), str):
        dispute.gateway_status = str(data["status"])[:64]
    dispute.updated_at = now
    if row.type == EventType.DISPUTE_WON.value:
        await _release(session, dispute)
        dispute.status, dispute.resolved_at = "won", now
        others = [d for d in await open_chargebacks(session, order_id=order.id) if d.id != dispute.id]
        if order.status == "disputed" and not others:
            before = dispute.order_status_before
            order.status = before if before in DISPUTABLE_ORDER else "fulfilled"
        _message(
            session,
            dispute,
            body="The chargeback was won: the credits are free again.",
            role="system",
            author_id=None,
            now=now,
        )
        await payment_notices.dispute_updated(
            session,
            dispute,
            event="won",
            message="The bank closed the chargeback in our favour: the credits held for it are free again.",
        )
    elif row.type == EventType.DISPUTE_LOST.value:
        await _take_back(session, dispute=dispute, order=order)
        dispute.status, dispute.resolved_at = "lost", now
        _message(
            session,
            dispute,
            body="The chargeback was lost: the order's credits were taken back.",
            role="system",
            author_id=None,
            now=now,
        )
        await payment_notices.dispute_updated(
            session,
            dispute,
            event="lost",
            message="The chargeback was lost: the order's credits were taken back.",
        )
    log.info("chargeback_event", dispute_id=dispute.id, raw_type=row.raw_type, status=dispute.status)
    return None
