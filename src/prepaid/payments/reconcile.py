"""Reconciliation: the gateway's own view of orders beside ours.

- The runner's ``reconcile`` job asks the gateway about attempts still unpaid ``PREPAID_RECONCILE_AFTER``
  (5 minutes) after they were opened, on orders that are ``created``, ``pending`` or ``expired``, and settles
  them through the orders service's own path (``service.apply_gateway_view``: a captured payment goes through
  ``fulfil``, a failed one through ``record_failure``). That is the "paid but no credits" case: a lost webhook,
  a buyer who closed the tab before the return page. Each attempt is asked again with a backoff (doubling, at
  most an hour apart) until its order is settled or a day has passed (the quote's validity). Claims are
  committed (with ``SKIP LOCKED`` on PostgreSQL) before the gateway is asked, so several processes never ask
  about the same attempt at once, and no database lock is held during the call.
- ``compare_gateway_orders`` lists the gateway's orders (``Gateway.list_orders``) in a window beside the orders
  and attempts we hold for them, with mismatches named (``GET /v1/admin/gateway_orders``, ``prepaid
  reconcile``). It only reads: settling is the job's (and the command's) work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.db import Database, utcnow
from prepaid.deps import Admin, SettingsDep, get_database
from prepaid.errors import InvalidRequest
from prepaid.observability import log
from prepaid.payments import service
from prepaid.payments.gateways import Gateway, GatewayError, GatewayOrder
from prepaid.payments.models import PaymentAttempt, PaymentOrder, PaymentReconciliation
from prepaid.runner import JobFunction
from prepaid.schemas import Output, Timestamp
from prepaid.settings import Settings

RECONCILABLE = ("created", "pending", "expired")
WINDOW = service.QUOTE_VALIDITY  # after a day nobody pays for the order any more: stop asking
BACKOFF_MAX = timedelta(hours=1)
CLAIM_LEASE = timedelta(minutes=2)  # a claimed attempt is not taken by another process meanwhile
BATCH = 20


# ---------------------------------------------------------------- settling pending orders (job and command)


@dataclass(frozen=True)
class Due:
    attempt_id: str
    order_id: str
    gateway: str
    gateway_order_id: str


@dataclass(frozen=True)
class Settled:
    """What asking the gateway did for one attempt: ``result`` is the order's status after, or ``error: ...``."""

    attempt_id: str
    order_id: str
    gateway: str
    before: str
    result: str


def _backoff(settings: Settings, checks: int) -> timedelta:
    base = max(settings.reconcile_after, 60)
    return min(timedelta(seconds=base * 2 ** min(checks, 16)), BACKOFF_MAX)


async def claim_due(
    session: AsyncSession, *, now: datetime, settings: Settings, limit: int = BATCH
) -> list[Due]:
    """Attempts to ask about now (opened at the gateway, still unpaid, old enough, not asked about recently),
    claimed for ``CLAIM_LEASE``: the claim is committed with the caller's transaction."""
    opened_before = now - timedelta(seconds=settings.reconcile_after)
    rows = (
        await session.execute(
            select(PaymentAttempt, PaymentReconciliation)
            .join(PaymentOrder, PaymentOrder.id == PaymentAttempt.order_id)
            .outerjoin(PaymentReconciliation, PaymentReconciliation.attempt_id == PaymentAttempt.id)
            .where(
                PaymentOrder.status.in_(RECONCILABLE),
                PaymentAttempt.status.in_(("created", "pending")),
                PaymentAttempt.gateway_order_id.is_not(None),
                PaymentAttempt.created_at <= opened_before,
                PaymentAttempt.created_at >= now - WINDOW,
                or_(PaymentReconciliation.attempt_id.is_(None), PaymentReconciliation.next_check_at <= now),
            )
            .order_by(PaymentAttempt.id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=PaymentAttempt)
        )
    ).all()
    due = []
    for attempt, check in rows:
        if check is None:
            session.add(
                PaymentReconciliation(
                    attempt_id=attempt.id,
                    order_id=attempt.order_id,
                    checks=0,
                    next_check_at=now + CLAIM_LEASE,
                )
            )
        else:
            check.next_check_at = now + CLAIM_LEASE
        assert attempt.gateway_order_id is not None
        due.append(Due(attempt.id, attempt.order_id, attempt.gateway, attempt.gateway_order_id))
    return due


async def settle_attempt(
    db: Database, gateways: Mapping[str, Gateway], settings: Settings, due: Due
) -> Settled:
    """Ask the gateway about one claimed attempt (no transaction open meanwhile), apply its answer through the
    orders service, and schedule the next question."""
    async with db.transaction(write=False) as session:
        before = (await service.get_order(session, due.order_id)).status
    gateway = gateways.get(due.gateway)
    result: str
    if gateway is None:
        result = f"error: the {due.gateway} gateway is not enabled here"
    else:
        try:
            view = await gateway.fetch_payment(due.gateway_order_id)
        except GatewayError as error:
            result = f"error: {error.message}"
        else:
            async with db.transaction() as session:
                order = await service.apply_gateway_view(
                    session, attempt_id=due.attempt_id, view=view, now=utcnow()
                )
                result = order.status
    now = utcnow()
    async with db.transaction() as session:
        check = await session.get(PaymentReconciliation, due.attempt_id, populate_existing=True)
        if check is not None:
            check.checks += 1
            check.last_checked_at = now
            check.next_check_at = now + _backoff(settings, check.checks - 1)
            check.last_result = result[:500]
    if result != before:
        log.info(
            "order_reconciled", order_id=due.order_id, attempt=due.attempt_id, before=before, after=result
        )
    return Settled(due.attempt_id, due.order_id, due.gateway, before, result)


async def reconcile_pending(
    db: Database,
    gateways: Mapping[str, Gateway],
    settings: Settings,
    *,
    limit: int = BATCH,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[Settled], None] | None = None,
) -> list[Settled]:
    """Claim the attempts due and settle each; one attempt's failure does not stop the others."""
    async with db.transaction() as session:
        due = await claim_due(session, now=utcnow(), settings=settings, limit=limit)
    if on_start is not None:
        on_start(len(due))
    settled = []
    for item in due:
        try:
            outcome = await settle_attempt(db, gateways, settings, item)
        except Exception as error:  # logged; the claim lapses and the attempt is asked about again
            log.warning("reconcile_failed", attempt=item.attempt_id, error_type=type(error).__name__)
            outcome = Settled(
                item.attempt_id, item.order_id, item.gateway, "?", f"error: {type(error).__name__}"
            )
        settled.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return settled


def reconcile_job(gateways: Mapping[str, Gateway]) -> JobFunction:
    """The runner's job: settle what is due, a batch per run."""

    async def run(db: Database, settings: Settings) -> int:
        return len(await reconcile_pending(db, gateways, settings))

    return run


# ---------------------------------------------------------------- the gateway's orders beside ours

Mismatch = Literal[
    "not_ours",
    "paid_not_credited",
    "credited_not_paid",
    "amount_mismatch",
    "duplicate_payment",
    "flagged",
    "missing_at_gateway",
]


class GatewayOrderCompared(Output):
    """One gateway order (or one of our attempts the gateway did not list) and our order for it.
    ``mismatches`` is empty when both sides agree."""

    object: Literal["gateway_order"] = "gateway_order"
    gateway: str
    gateway_order_id: str
    reference: str | None
    gateway_status: str | None
    amount: int | None
    currency: str | None
    amount_paid: int | None
    captured_payments: list[str]
    created_at: datetime | None
    order_id: str | None
    attempt_id: str | None
    order_status: str | None
    order_amount: int | None
    order_currency: str | None
    mismatches: list[Mismatch]


class GatewayOrderList(Output):
    object: Literal["list"] = "list"
    data: list[GatewayOrderCompared]
    has_more: bool


def _compare(
    view: GatewayOrder | None, attempt: PaymentAttempt | None, order: PaymentOrder | None
) -> list[Mismatch]:
    found: list[Mismatch] = []
    if view is None:
        return ["missing_at_gateway"]
    if attempt is None or order is None:
        return ["not_ours"]
    captured = view.captured_payments
    if view.paid and order.status in service.UNPAID:
        found.append("paid_not_credited")
    if order.status in service.GRANTED and attempt.payment_id is not None and not view.paid:
        found.append("credited_not_paid")
    if any(p.amount != order.amount or p.currency.upper() != order.currency for p in captured) or (
        view.amount != attempt.amount or view.currency.upper() != attempt.currency
    ):
        found.append("amount_mismatch")
    if len(captured) > 1:
        found.append("duplicate_payment")
    if order.flag_reason:
        found.append("flagged")
    return found


async def compare_gateway_orders(
    db: Database,
    gateway: Gateway,
    *,
    since: datetime,
    until: datetime,
    limit: int = 100,
) -> tuple[list[GatewayOrderCompared], bool]:
    """The gateway's orders created in ``[since, until]`` (newest first, at most ``limit``) beside ours, then
    our attempts opened on that gateway in the window that it did not list (only when its list was whole).
    Answers ``(rows, has_more)``."""
    views = await gateway.list_orders(since=since, until=until, limit=limit)
    has_more = len(views) >= limit
    ids = [view.gateway_order_id for view in views]
    references = [view.reference for view in views if view.reference]
    async with db.transaction(write=False) as session:
        attempts = list(
            await session.scalars(
                select(PaymentAttempt).where(
                    PaymentAttempt.gateway == gateway.name,
                    or_(PaymentAttempt.gateway_order_id.in_(ids), PaymentAttempt.id.in_(references)),
                )
            )
        )
        unlisted: list[PaymentAttempt] = []
        if not has_more:
            unlisted = list(
                await session.scalars(
                    select(PaymentAttempt)
                    .where(
                        PaymentAttempt.gateway == gateway.name,
                        PaymentAttempt.gateway_order_id.is_not(None),
                        PaymentAttempt.gateway_order_id.not_in(ids),
                        PaymentAttempt.created_at >= since,
                        PaymentAttempt.created_at <= until,
                    )
                    .order_by(PaymentAttempt.id.desc())
                    .limit(limit)
                )
            )
        order_ids = {attempt.order_id for attempt in [*attempts, *unlisted]}
        orders = {
            order.id: order
            for order in await session.scalars(select(PaymentOrder).where(PaymentOrder.id.in_(order_ids)))
        }
    by_gateway_id = {attempt.gateway_order_id: attempt for attempt in attempts if attempt.gateway_order_id}
    by_reference = {attempt.id: attempt for attempt in attempts}
    rows = []
    for view in views:
        attempt = by_gateway_id.get(view.gateway_order_id) or (
            by_reference.get(view.reference) if view.reference else None
        )
        order = orders.get(attempt.order_id) if attempt is not None else None
        rows.append(_row(gateway.name, view.gateway_order_id, view, attempt, order))
    for attempt in unlisted:
        assert attempt.gateway_order_id is not None
        rows.append(_row(gateway.name, attempt.gateway_order_id, None, attempt, orders.get(attempt.order_id)))
    return rows, has_more


def _row(
    gateway: str,
    gateway_order_id: str,
    view: GatewayOrder | None,
    attempt: PaymentAttempt | None,
    order: PaymentOrder | None,
) -> GatewayOrderCompared:
    return GatewayOrderCompared(
        gateway=gateway,
        gateway_order_id=gateway_order_id,
        reference=view.reference if view is not None else (attempt.id if attempt is not None else None),
        gateway_status=view.status.value if view is not None else None,
        amount=view.amount if view is not None else None,
        currency=view.currency.upper() if view is not None else None,
        amount_paid=view.amount_paid if view is not None else None,
        captured_payments=[p.payment_id for p in view.captured_payments] if view is not None else [],
        created_at=view.created_at if view is not None else None,
        order_id=order.id if order is not None else None,
        attempt_id=attempt.id if attempt is not None else None,
        order_status=order.status if order is not None else None,
        order_amount=order.amount if order is not None else None,
        order_currency=order.currency if order is not None else None,
        mismatches=_compare(view, attempt, order),
    )


def pick_gateway(gateways: Mapping[str, Gateway], settings: Settings, name: str | None) -> Gateway:
    return service.choose_gateway(gateways, settings, name)


def window(since: datetime | None, until: datetime | None, *, now: datetime) -> tuple[datetime, datetime]:
    """The window asked for: by default the last 24 hours; at most 31 days."""
    until = until or now
    since = since or until - timedelta(hours=24)
    if since > until:
        raise InvalidRequest("since must be before until.", code="invalid_window", param="since")
    if until - since > timedelta(days=31):
        raise InvalidRequest("The window is at most 31 days.", code="invalid_window", param="since")
    return since, until


# ---------------------------------------------------------------- admin route

router = APIRouter(prefix="/v1/admin", tags=["reconciliation"])


@router.get(
    "/gateway_orders",
    responses={
        400: {"description": "Unknown gateway, or a bad window"},
        502: {"description": "The gateway could not list its orders (gateway_error)"},
    },
)
async def list_gateway_orders(
    principal: Admin,
    request: Request,
    settings: SettingsDep,
    gateway: Annotated[str | None, Query(max_length=32, description="Default: the first enabled.")] = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> GatewayOrderList:
    """The gateway's own orders created in ``[since, until]`` (default: the last 24 hours), newest first,
    each beside our order for it, with ``mismatches`` named (``paid_not_credited``, ``credited_not_paid``,
    ``amount_mismatch``, ``duplicate_payment``, ``flagged``, ``not_ours``); then our attempts in the window the
    gateway did not list (``missing_at_gateway``). Read only: the reconciliation job settles."""
    gateways: dict[str, Gateway] = getattr(request.app.state, "gateways", {})
    chosen = pick_gateway(gateways, settings, gateway)
    start, end = window(since, until, now=utcnow())
    rows, has_more = await compare_gateway_orders(
        get_database(request), chosen, since=start, until=end, limit=limit
    )
    return GatewayOrderList(data=rows, has_more=has_more)
