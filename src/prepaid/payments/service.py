"""Orders, attempts, the webhook inbox and fulfilment: the rules.

- An order is priced by the catalog's quote (``catalog.service.build_quote``), never by the client, and holds
  its coupon use (a reservation) until it is paid, fails, expires or is cancelled.
- ``fulfil`` is the ONE function that grants an order's credits. It locks the order row first, so the verify
  call, the webhook and the jobs racing for one payment serialise on it; the first that sees a captured payment
  grants, the others find the order fulfilled. The grants carry ledger idempotency keys
  (``order:{id}:fulfil`` for the credits bought, ``order:{id}:fulfil:bonus`` for the bonus), so even a bug
  around the status could not grant twice.
- Statuses only move forward (``STATUS_RANK``); the only ways back are the buyer's explicit retry of a failed
  or expired order and cancelling an unpaid one.

Most functions take the session and never commit. The checkout flows (``place_order``, ``retry_order``,
``verify_order``) take the ``Database`` instead: they commit a short transaction before and after each gateway
call, so no database lock (SQLite's write lock above all) is ever held while waiting on the network, and an
order exists before any money can move for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.auth.models import User
from prepaid.catalog import pricing
from prepaid.catalog import service as catalog_service
from prepaid.catalog.schemas import QuoteRead
from prepaid.db import Database, lock_row, utcnow
from prepaid.errors import Conflict, InvalidRequest, NotFound
from prepaid.ids import new_id
from prepaid.ledger import service as ledger_service
from prepaid.money import CREDIT
from prepaid.notify import payment_notices, realtime
from prepaid.observability import log
from prepaid.pagination import Page, PageParams, paginate
from prepaid.payments import refunds
from prepaid.payments.gateways import (
    EventType,
    Gateway,
    GatewayCheckout,
    GatewayError,
    GatewayEvent,
    GatewayOrder,
    GatewayPayment,
    PaymentStatus,
    check_amount,
)
from prepaid.payments.models import PaymentAttempt, PaymentGatewayEvent, PaymentGuestOrder, PaymentOrder
from prepaid.settings import Settings

QUOTE_VALIDITY = timedelta(hours=24)
# Forward only: an order never moves to a lower rank (a late payment.failed never demotes a paid order).
STATUS_RANK = {
    "created": 0,
    "pending": 1,
    "failed": 2,
    "expired": 2,
    "cancelled": 2,
    "paid": 3,
    "flagged": 4,
    "fulfilled": 5,
    "disputed": 6,
    "partially_refunded": 6,
    "refunded": 7,
}
OPEN = frozenset({"created", "pending"})
UNPAID = frozenset({"created", "pending", "failed", "expired", "cancelled"})
RETRYABLE = frozenset({"failed", "expired"})
GRANTED = frozenset({"fulfilled", "disputed", "partially_refunded", "refunded"})
EVENT_MAX_TRIES = 20


def fulfil_key(order_id: str) -> str:
    return f"order:{order_id}:fulfil"


def bonus_key(order_id: str) -> str:
    return f"order:{order_id}:fulfil:bonus"


@dataclass(frozen=True)
class PaymentFacts:
    """A captured payment as a gateway reported it (its API, or a verified webhook)."""

    payment_id: str
    amount: int
    currency: str
    method: str | None = None
    card_brand: str | None = None
    card_last4: str | None = None

    @classmethod
    def of_payment(cls, payment: GatewayPayment) -> PaymentFacts:
        return cls(
            payment_id=payment.payment_id,
            amount=payment.amount,
            currency=payment.currency.upper(),
            method=payment.method,
            card_brand=payment.card_brand,
            card_last4=payment.card_last4,
        )


# ---------------------------------------------------------------- reading


def _not_found(order_id: str) -> NotFound:
    return NotFound(f"No order {order_id}.", param="order_id")


async def get_order(session: AsyncSession, order_id: str) -> PaymentOrder:
    order = await session.get(PaymentOrder, order_id)
    if order is None:
        raise _not_found(order_id)
    return order


async def order_of_attempt(session: AsyncSession, attempt_id: str) -> PaymentOrder:
    """The order a payment attempt belongs to (a gateway's return page knows the attempt, not the order)."""
    attempt = await session.get(PaymentAttempt, attempt_id)
    if attempt is None:
        raise NotFound(f"No payment attempt {attempt_id}.", param="attempt_id")
    return await get_order(session, attempt.order_id)


async def _lock_order(session: AsyncSession, order_id: str) -> PaymentOrder:
    """Every change to an order starts here, with its row locked and read afresh."""
    row = await lock_row(session, PaymentOrder, order_id)
    if row is None:
        raise _not_found(order_id)
    return row


async def attempts_of(session: AsyncSession, order_id: str) -> list[PaymentAttempt]:
    """The order's attempts, oldest first."""
    rows = await session.scalars(
        select(PaymentAttempt)
        .where(PaymentAttempt.order_id == order_id)
        .order_by(PaymentAttempt.attempt_number)
        .execution_options(populate_existing=True)
    )
    return list(rows)


async def latest_attempts(session: AsyncSession, order_ids: Sequence[str]) -> dict[str, PaymentAttempt]:
    if not order_ids:
        return {}
    rows = await session.scalars(
        select(PaymentAttempt)
        .join(PaymentOrder, PaymentOrder.id == PaymentAttempt.order_id)
        .where(
            PaymentAttempt.order_id.in_(list(order_ids)),
            PaymentAttempt.attempt_number == PaymentOrder.attempt_count,
        )
    )
    return {attempt.order_id: attempt for attempt in rows}


async def list_orders(
    session: AsyncSession,
    *,
    params: PageParams,
    user_id: str | None = None,
    status: str | None = None,
    gateway: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    flagged: bool | None = None,
) -> Page[PaymentOrder]:
    """Orders newest first; ``user_id`` None lists everyone's (admins). ``flagged`` keeps (or drops) the orders
    an admin must look at (``flag_reason`` set: status ``flagged``, or a second payment on a granted order)."""
    stmt: Select[Any] = select(PaymentOrder)
    if user_id is not None:
        stmt = stmt.where(PaymentOrder.user_id == user_id)
    if status is not None:
        stmt = stmt.where(PaymentOrder.status == status)
    if gateway is not None:
        stmt = stmt.where(PaymentOrder.gateway == gateway)
    if created_after is not None:
        stmt = stmt.where(PaymentOrder.created_at >= created_after)
    if created_before is not None:
        stmt = stmt.where(PaymentOrder.created_at < created_before)
    if flagged is not None:
        flag = PaymentOrder.flag_reason.is_not(None)
        stmt = stmt.where(flag if flagged else PaymentOrder.flag_reason.is_(None))
    return await paginate(session, stmt, PaymentOrder.id, params)


@dataclass(frozen=True)
class Totals:
    spent: dict[str, int]  # currency -> minor units
    credits: int  # credits bought, bonus included, in the credit asset's smallest unit


async def user_totals(session: AsyncSession, *, user_id: str) -> Totals:
    """What a user paid per currency and the credits (bought and bonus) their fulfilled orders granted."""
    rows = await session.execute(
        select(
            PaymentOrder.currency,
            func.sum(PaymentOrder.amount_paid),
            func.sum(PaymentOrder.credits + PaymentOrder.bonus_credits),
        )
        .where(PaymentOrder.user_id == user_id, PaymentOrder.fulfilled_at.is_not(None))
        .group_by(PaymentOrder.currency)
    )
    spent: dict[str, int] = {}
    credits = 0
    for currency, amount, granted in rows:
        spent[currency] = int(amount or 0)
        credits += int(granted or 0)
    refunded, refunded_credits = await refunds.refunded_totals(session, user_id=user_id)  # refunds
    for currency, amount in refunded.items():
        spent[currency] = spent.get(currency, 0) - amount
    credits -= refunded_credits
    return Totals(spent=dict(sorted(spent.items())), credits=credits)


def _snapshot(order: PaymentOrder) -> dict[str, Any]:
    return {
        "user_id": order.user_id,
        "wallet_id": order.wallet_id,
        "status": order.status,
        "currency": order.currency,
        "amount": order.amount,
        "credits": order.credits,
        "bonus_credits": order.bonus_credits,
        "gateway": order.gateway,
        "attempt_count": order.attempt_count,
    }


async def _audit(
    session: AsyncSession,
    actor: audit_service.Actor | None,
    action: str,
    order: PaymentOrder,
    before: dict[str, Any] | None,
) -> None:
    """An admin's (or a server key's) change to someone's order is in the audit log; a buyer's own is not."""
    if actor is not None:
        await audit_service.record(
            session,
            actor=actor,
            action=action,
            object_type="order",
            object_id=order.id,
            before=before,
            after=_snapshot(order),
        )


# ---------------------------------------------------------------- status changes


def _flag(order: PaymentOrder, reason: str, now: datetime) -> None:
    order.flag_reason = (f"{order.flag_reason}; {reason}" if order.flag_reason else reason)[:500]
    order.flagged_at = order.flagged_at or now
    log.warning("order_flagged", order_id=order.id, reason=reason)


def _record_payment(order: PaymentOrder, payment: PaymentFacts) -> None:
    order.payment_id = payment.payment_id
    order.amount_paid = payment.amount
    order.payment_method = payment.method or order.payment_method
    order.card_brand = payment.card_brand or order.card_brand
    order.card_last4 = payment.card_last4 or order.card_last4


async def _release_coupon(session: AsyncSession, order: PaymentOrder, now: datetime) -> None:
    if order.coupon_reservation_id is not None:
        await catalog_service.release_reservation(session, order.id, now=now)


async def fulfil(
    session: AsyncSession,
    *,
    order_id: str,
    payment: PaymentFacts | None,
    now: datetime,
    attempt_id: str | None = None,
) -> PaymentOrder:
    """Grant the order's credits once, for a captured ``payment`` (None only for a zero total).

    The order is locked first. An order already granted answers as it is (a second, different captured payment
    flags it: the money came in twice). A payment whose amount or currency differs from the order's flags the
    order and grants nothing. A failed, expired or cancelled order that is paid all the same is fulfilled. The
    coupon reservation is redeemed in the same transaction; a coupon that meanwhile ran out of uses (the
    reservation had lapsed) flags the order instead. Credits bought become a ``paid`` lot (from ``@sales``), the
    bonus a ``promotional`` lot (from ``@promotions``)."""
    order = await _lock_order(session, order_id)
    attempt = await session.get(PaymentAttempt, attempt_id) if attempt_id is not None else None
    if attempt is not None and payment is not None:
        attempt.status, attempt.payment_id = "paid", payment.payment_id
    if order.status in GRANTED or order.status == "flagged":
        if payment is not None and payment.payment_id != order.payment_id:
            await _flag_and_tell(
                session,
                order,
                f"duplicate_payment: {payment.payment_id} ({payment.amount} {payment.currency}) was captured "
                f"after {order.payment_id or 'the first payment'}",
                now,
            )
            if order.status in GRANTED:  # refunds: the second payment goes back, once
                await refunds.refund_duplicate_payment(
                    session,
                    order=order,
                    payment_id=payment.payment_id,
                    amount=payment.amount,
                    currency=payment.currency,
                    gateway=attempt.gateway if attempt is not None else None,
                    now=now,
                )
        return order
    if payment is None:
        if order.amount != 0:
            raise InvalidRequest("Only a captured payment fulfils this order.", code="payment_required")
    else:
        _record_payment(order, payment)
        if payment.currency.upper() != order.currency or payment.amount != order.amount:
            order.status = "flagged"
            await _flag_and_tell(
                session,
                order,
                f"amount_mismatch: paid {payment.amount} {payment.currency.upper()}, "
                f"the order is {order.amount} {order.currency}",
                now,
            )
            return order
    order.status, order.paid_at, order.failure_reason = "paid", now, None
    if order.coupon_reservation_id is not None:
        try:
            await catalog_service.redeem_reservation(session, order.id, now=now)
        except (pricing.CouponExhausted, pricing.CouponPerUserLimit) as error:
            order.status = "flagged"
            await _flag_and_tell(session, order, f"coupon_unavailable: {error.message}", now)
            return order
    reference = ("order", order.id)
    metadata = {"order_id": order.id, "payment_id": payment.payment_id if payment else None}
    purchase = await ledger_service.grant(
        session,
        wallet_id=order.wallet_id,
        amount=order.credits,
        idempotency_key=fulfil_key(order.id),
        source="paid",
        kind="purchase",
        counterparty="@sales",
        reference=reference,
        memo=f"Order {order.id}",
        metadata=metadata,
    )
    order.purchase_transaction_id = purchase.transaction.id
    if order.bonus_credits > 0:
        bonus = await ledger_service.grant(
            session,
            wallet_id=order.wallet_id,
            amount=order.bonus_credits,
            idempotency_key=bonus_key(order.id),
            source="promotional",
            kind="grant",
            counterparty="@promotions",
            reference=reference,
            memo=f"Bonus of order {order.id}",
            metadata=metadata,
        )
        order.bonus_transaction_id = bonus.transaction.id
    order.status, order.fulfilled_at = "fulfilled", now
    log.info("order_fulfilled", order_id=order.id, credits=order.credits, bonus_credits=order.bonus_credits)
    await payment_notices.payment_succeeded(session, order)  # notifications: once per order
    await realtime.order_paid(  # realtime and outgoing webhooks: order.paid, balance.updated
        session,
        user_id=order.user_id,
        order_id=order.id,
        wallet_id=order.wallet_id,
        amount=order.amount,
        currency=order.currency,
        credits=order.credits,
        bonus_credits=order.bonus_credits,
    )
    return order


async def record_failure(
    session: AsyncSession, *, attempt_id: str, reason: str | None, now: datetime, cancelled: bool = False
) -> PaymentOrder:
    """A payment of this attempt failed (or the gateway cancelled it). The attempt is failed unless it was
    paid; the order fails only while it is still open and this is its newest attempt (a failure of an older
    attempt says nothing about the newer one), and then its coupon reservation is released."""
    attempt = await session.get(PaymentAttempt, attempt_id, populate_existing=True)
    if attempt is None:
        raise NotFound(f"No attempt {attempt_id}.", param="attempt")
    order = await _lock_order(session, attempt.order_id)
    reason = (reason or ("Cancelled at the gateway." if cancelled else "The payment failed."))[:500]
    if attempt.status in ("created", "pending"):
        attempt.status = "cancelled" if cancelled else "failed"
        attempt.failure_reason = reason
    if order.status in OPEN and attempt.attempt_number == order.attempt_count:
        order.status, order.failure_reason, order.failed_at = "failed", reason, now
        await _release_coupon(session, order, now)
        await payment_notices.payment_failed(session, order, attempt_id=attempt.id)  # notifications
    return order


async def apply_gateway_view(
    session: AsyncSession, *, attempt_id: str, view: GatewayOrder, now: datetime
) -> PaymentOrder:
    """Settle an attempt by the gateway's own view of it: each captured payment goes through ``fulfil`` (the
    first fulfils, another flags the order); a failed or cancelled one with nothing captured fails it."""
    attempt = await session.get(PaymentAttempt, attempt_id, populate_existing=True)
    if attempt is None:
        raise NotFound(f"No attempt {attempt_id}.", param="attempt")
    captured = sorted(
        view.captured_payments, key=lambda p: (p.created_at.timestamp() if p.created_at else 0, p.payment_id)
    )
    order = await _lock_order(session, attempt.order_id)
    for payment in captured:
        order = await fulfil(
            session,
            order_id=order.id,
            payment=PaymentFacts.of_payment(payment),
            now=now,
            attempt_id=attempt.id,
        )
    if not captured and view.status in (PaymentStatus.FAILED, PaymentStatus.CANCELLED):
        reason = view.payment.failure_reason if view.payment is not None else None
        order = await record_failure(
            session,
            attempt_id=attempt.id,
            reason=reason,
            now=now,
            cancelled=view.status is PaymentStatus.CANCELLED,
        )
    elif not captured and attempt.status == "created":
        attempt.status = "pending"
    return order


# ---------------------------------------------------------------- creating and retrying


@dataclass(frozen=True)
class GuestBuyer:
    """A guest checkout's buyer (``payments/guest.py``): the normalised email, and whether the passwordless
    account was made for this order."""

    email: str
    new_account: bool


@dataclass(frozen=True)
class Purchase:
    """What a buyer asked for (the price comes from the quote)."""

    currency: str
    plan_code: str | None = None
    quantity: int | None = None
    coupon_code: str | None = None
    wallet_id: str | None = None
    gateway: str | None = None


def choose_gateway(gateways: Mapping[str, Gateway], settings: Settings, name: str | None) -> Gateway:
    """The gateway named, or the first enabled one (in ``PREPAID_GATEWAYS`` order) this server runs."""
    if name is None:
        for enabled in settings.gateway_names:
            if enabled in gateways:
                return gateways[enabled]
        raise InvalidRequest(
            "No payment gateway is enabled on this server.", code="no_gateway", param="gateway"
        )
    gateway = gateways.get(name)
    if gateway is None:
        enabled_names = ", ".join(n for n in settings.gateway_names if n in gateways) or "none"
        raise InvalidRequest(
            f"The {name} gateway is not enabled here (enabled: {enabled_names}).",
            code="gateway_not_enabled",
            param="gateway",
        )
    return gateway


async def _target_wallet(session: AsyncSession, *, user_id: str, wallet_id: str | None) -> str:
    if wallet_id is None:
        return (await ledger_service.default_wallet(session, user_id=user_id)).id
    try:
        wallet = await ledger_service.get_wallet(session, wallet_id)
    except NotFound:
        wallet = None
    if wallet is None or wallet.user_id != user_id:
        raise NotFound(f"No wallet {wallet_id} of the buyer.", param="wallet")
    if wallet.asset != CREDIT:
        raise InvalidRequest(
            "Orders buy credits: choose a credit wallet.", code="invalid_wallet", param="wallet"
        )
    return wallet.id


async def create_order(
    session: AsyncSession,
    *,
    buyer: User,
    purchase: Purchase,
    gateways: Mapping[str, Gateway],
    settings: Settings,
    now: datetime,
    client_ip: str | None = None,
    user_agent: str | None = None,
    actor: audit_service.Actor | None = None,
    guest: GuestBuyer | None = None,
) -> tuple[PaymentOrder, PaymentAttempt | None]:
    """A new order at the catalog's quote, its coupon reserved until it expires. A zero total is fulfilled at
    once, without a gateway (no attempt). Otherwise the first attempt is made (status ``created``) for the
    chosen gateway after checking its minimum charge; the caller opens it at the gateway after committing.
    ``guest``: a guest checkout's order, recorded as such in the same transaction, before anything (a zero
    total's fulfilment) can tell the buyer about it."""
    wallet_id = await _target_wallet(session, user_id=buyer.id, wallet_id=purchase.wallet_id)
    quote = await catalog_service.build_quote(
        session,
        currency=purchase.currency,
        settings=settings,
        now=now,
        plan_code=purchase.plan_code,
        quantity=purchase.quantity,
        coupon_code=purchase.coupon_code,
        user_id=buyer.id,
    )
    gateway: Gateway | None = None
    if quote.total > 0 or purchase.gateway is not None:
        gateway = choose_gateway(gateways, settings, purchase.gateway)
    if quote.total > 0:
        assert gateway is not None
        check_amount(gateway, quote.total, quote.currency)
    order = PaymentOrder(
        id=new_id("ord"),
        user_id=buyer.id,
        wallet_id=wallet_id,
        status="created",
        currency=quote.currency,
        amount=quote.total,
        asset=CREDIT,
        credits=quote.credits,
        bonus_credits=quote.bonus_credits,
        plan_code=quote.plan_code,
        quantity=quote.quantity,
        coupon_code=quote.coupon_code,
        quote=QuoteRead.of(quote).model_dump(mode="json"),
        quote_expires_at=now + QUOTE_VALIDITY,
        gateway=gateway.name if gateway is not None and quote.total > 0 else None,
        attempt_count=0,
        amount_paid=0,
        client_ip=(client_ip or None) and client_ip[:64],
        user_agent=(user_agent or None) and user_agent[:500],
        expires_at=now + timedelta(seconds=settings.order_ttl),
        created_at=now,
        updated_at=now,
    )
    session.add(order)
    await session.flush()  # the order row exists before the reservation and the grants refer to it
    if guest is not None:  # ---- guest checkout
        session.add(
            PaymentGuestOrder(
                order_id=order.id,
                user_id=buyer.id,
                email=guest.email,
                new_account=guest.new_account,
                created_at=now,
            )
        )
        await session.flush()  # the guest row is there when fulfil decides who emails the buyer
    if quote.coupon_code is not None:
        reservation = await catalog_service.reserve_coupon(
            session,
            code=quote.coupon_code,
            user_id=buyer.id,
            order_id=order.id,
            expires_at=order.expires_at,
            now=now,
        )
        order.coupon_reservation_id = reservation.id
    if quote.total == 0:
        order = await fulfil(session, order_id=order.id, payment=None, now=now)
        await _audit(session, actor, "order.create", order, None)
        return order, None
    assert gateway is not None
    attempt = _new_attempt(session, order, gateway_name=gateway.name, retry_of=None, now=now)
    await _audit(session, actor, "order.create", order, None)
    return order, attempt


def _new_attempt(
    session: AsyncSession, order: PaymentOrder, *, gateway_name: str, retry_of: str | None, now: datetime
) -> PaymentAttempt:
    order.attempt_count += 1
    order.gateway = gateway_name
    attempt = PaymentAttempt(
        id=new_id("att"),
        order_id=order.id,
        gateway=gateway_name,
        attempt_number=order.attempt_count,
        retry_of=retry_of,
        status="created",
        amount=order.amount,
        currency=order.currency,
        checkout={},
        created_at=now,
        updated_at=now,
    )
    session.add(attempt)
    return attempt


async def prepare_retry(
    session: AsyncSession,
    *,
    order_id: str,
    gateway_name: str | None,
    gateways: Mapping[str, Gateway],
    settings: Settings,
    now: datetime,
    actor: audit_service.Actor | None = None,
) -> tuple[PaymentOrder, PaymentAttempt]:
    """A new attempt for a failed or expired order, at the same quote while it is valid (24 h), its coupon
    reserved again (if the coupon still has a use for it) until the new expiry."""
    order = await _lock_order(session, order_id)
    if order.status not in RETRYABLE:
        raise Conflict(
            f"Order {order.id} is {order.status}; only a failed or expired order can be retried.",
            code="order_not_retryable",
            param="order_id",
        )
    if now >= order.quote_expires_at:
        raise Conflict(
            "The order's quote is over 24 hours old; start a new order.",
            code="quote_expired",
            param="order_id",
        )
    gateway = choose_gateway(gateways, settings, gateway_name or order.gateway)
    check_amount(gateway, order.amount, order.currency)
    before = _snapshot(order)
    attempts = await attempts_of(session, order.id)
    previous = attempts[-1] if attempts else None
    order.expires_at = now + timedelta(seconds=settings.order_ttl)
    if order.coupon_code is not None:
        reservation = await catalog_service.reserve_coupon(
            session,
            code=order.coupon_code,
            user_id=order.user_id,
            order_id=order.id,
            expires_at=order.expires_at,
            now=now,
        )
        order.coupon_reservation_id = reservation.id
    attempt = _new_attempt(
        session, order, gateway_name=gateway.name, retry_of=previous.id if previous else None, now=now
    )
    await session.flush()
    await _audit(session, actor, "order.retry", order, before)
    return order, attempt


async def record_checkout(
    session: AsyncSession, *, attempt_id: str, checkout: GatewayCheckout, now: datetime
) -> PaymentOrder:
    """The gateway opened the attempt: keep its order / intent id and what the client needs; the order is now
    ``pending`` (unless a payment already moved it further)."""
    attempt = await session.get(PaymentAttempt, attempt_id, populate_existing=True)
    if attempt is None:
        raise NotFound(f"No attempt {attempt_id}.", param="attempt")
    order = await _lock_order(session, attempt.order_id)
    attempt.gateway_order_id = checkout.gateway_order_id
    attempt.checkout = dict(checkout.client)
    attempt.redirect_url = checkout.redirect_url
    if attempt.status == "created":
        attempt.status = "pending"
    newest = attempt.attempt_number == order.attempt_count
    if newest and (order.status == "created" or order.status in RETRYABLE):
        order.status, order.failure_reason = "pending", None
    return order


async def record_checkout_failure(
    session: AsyncSession, *, attempt_id: str, reason: str, now: datetime
) -> PaymentOrder:
    """The gateway could not open the attempt: it failed; a new order fails with it (the buyer may retry), and
    the coupon reservation goes back."""
    attempt = await session.get(PaymentAttempt, attempt_id, populate_existing=True)
    if attempt is None:
        raise NotFound(f"No attempt {attempt_id}.", param="attempt")
    order = await _lock_order(session, attempt.order_id)
    if attempt.status == "created":
        attempt.status, attempt.failure_reason = "failed", reason[:500]
    if attempt.attempt_number == order.attempt_count and order.status in UNPAID:
        if order.status in OPEN:
            order.status, order.failed_at = "failed", now
        order.failure_reason = reason[:500]
        await _release_coupon(session, order, now)
    return order


async def cancel_order(
    session: AsyncSession, *, order_id: str, now: datetime, actor: audit_service.Actor | None = None
) -> PaymentOrder:
    """The buyer gives up an unpaid order; its coupon use goes back. Cancelling twice answers the same. A
    payment that still arrives for it is fulfilled all the same (the money came in)."""
    order = await _lock_order(session, order_id)
    if order.status == "cancelled":
        return order
    if order.status not in UNPAID:
        raise Conflict(
            f"Order {order.id} is {order.status} and cannot be cancelled.",
            code="order_not_cancellable",
            param="order_id",
        )
    before = _snapshot(order)
    order.status, order.cancelled_at = "cancelled", now
    for attempt in await attempts_of(session, order.id):
        if attempt.status in ("created", "pending"):
            attempt.status = "cancelled"
    await _release_coupon(session, order, now)
    await _audit(session, actor, "order.cancel", order, before)
    return order


async def expire_due_orders(session: AsyncSession, *, now: datetime, limit: int = 100) -> int:
    """Orders still open past ``expires_at`` expire and release their coupon reservation. Rows another process
    holds are skipped (``SKIP LOCKED``) and taken on the next run."""
    due = list(
        await session.scalars(
            select(PaymentOrder)
            .where(PaymentOrder.status.in_(sorted(OPEN)), PaymentOrder.expires_at <= now)
            .order_by(PaymentOrder.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
    )
    for order in due:
        order.status, order.expired_at = "expired", now
        await _release_coupon(session, order, now)
    return len(due)


# ---------------------------------------------------------------- checkout flows (across transactions)


async def open_attempt(
    db: Database,
    gateway: Gateway,
    *,
    order: PaymentOrder,
    attempt: PaymentAttempt,
    customer_email: str | None,
    success_url: str | None = None,
) -> PaymentOrder:
    """Open a committed attempt at the gateway (our attempt id is its reference and idempotency key), then
    record the answer; a gateway error fails the attempt (and a new order) and is raised. ``success_url``
    asks a gateway with a hosted page for that redirect flow (Stripe: a Checkout Session)."""
    description = f"{order.plan_code or 'Credits'}: {order.credits} credits" + (
        f" + {order.bonus_credits} bonus" if order.bonus_credits else ""
    )
    try:
        checkout = await gateway.create_payment(
            reference=attempt.id,
            amount=attempt.amount,
            currency=attempt.currency,
            description=description,
            idempotency_key=attempt.id,
            customer_email=customer_email,
            success_url=success_url,
        )
    except GatewayError as error:
        async with db.transaction() as session:
            await record_checkout_failure(session, attempt_id=attempt.id, reason=error.message, now=utcnow())
        raise
    async with db.transaction() as session:
        return await record_checkout(session, attempt_id=attempt.id, checkout=checkout, now=utcnow())


async def place_order(
    db: Database,
    *,
    buyer_id: str,
    purchase: Purchase,
    gateways: Mapping[str, Gateway],
    settings: Settings,
    client_ip: str | None,
    user_agent: str | None,
    actor: audit_service.Actor | None = None,
    hosted_checkout: bool = False,
    guest: GuestBuyer | None = None,
) -> PaymentOrder:
    """Create the order (committed), then open its first attempt at the gateway. ``hosted_checkout`` (a bot's
    or a guest's order, paid through this server's pages): the gateway returns the buyer to the order's
    return page, and Stripe opens a Checkout Session."""
    async with db.transaction() as session:
        buyer = await session.get(User, buyer_id)
        if buyer is None:
            raise NotFound(f"No customer {buyer_id}.", param="customer")
        email = buyer.email
        order, attempt = await create_order(
            session,
            buyer=buyer,
            purchase=purchase,
            gateways=gateways,
            settings=settings,
            now=utcnow(),
            client_ip=client_ip,
            user_agent=user_agent,
            actor=actor,
            guest=guest,
        )
    if attempt is None:
        return order
    return await open_attempt(
        db,
        gateways[attempt.gateway],
        order=order,
        attempt=attempt,
        customer_email=email,
        success_url=hosted_return_url(settings, attempt) if hosted_checkout else None,  # ---- checkout pages
    )


def hosted_return_url(settings: Settings, attempt: PaymentAttempt) -> str:
    """The attempt's return page (``payments/checkout_pages.py``); Stripe fills in its session id."""
    url = f"{settings.base_url.rstrip('/')}/orders/{attempt.id}/return"
    return url + "?session_id={CHECKOUT_SESSION_ID}" if attempt.gateway == "stripe" else url


async def retry_order(
    db: Database,
    *,
    order_id: str,
    gateway_name: str | None,
    gateways: Mapping[str, Gateway],
    settings: Settings,
    actor: audit_service.Actor | None = None,
) -> PaymentOrder:
    async with db.transaction() as session:
        order, attempt = await prepare_retry(
            session,
            order_id=order_id,
            gateway_name=gateway_name,
            gateways=gateways,
            settings=settings,
            now=utcnow(),
            actor=actor,
        )
        buyer = await session.get(User, order.user_id)
        email = buyer.email if buyer is not None else None
    return await open_attempt(
        db, gateways[attempt.gateway], order=order, attempt=attempt, customer_email=email
    )


async def verify_order(
    db: Database,
    *,
    order_id: str,
    attempt_id: str | None,
    fields: Mapping[str, str],
    gateways: Mapping[str, Gateway],
) -> PaymentOrder:
    """The client came back from checkout. An order already granted (or flagged) answers as it is, unless the
    callback names another payment than the one that paid it (then it is checked, and a second capture flags
    the order). Otherwise
    the callback is checked against the gateway order id WE stored with the attempt (``InvalidSignature``: 400,
    nothing changes), the gateway is asked for the payment (only captured funds fulfil), and the answer is
    applied through ``fulfil``."""
    async with db.transaction(write=False) as session:
        order = await get_order(session, order_id)
        named_payment = fields.get("razorpay_payment_id")
        another_payment = named_payment is not None and named_payment != order.payment_id
        if (order.status in GRANTED or order.status == "flagged") and not another_payment:
            return order
        attempts = await attempts_of(session, order_id)
    attempt = _pick_attempt(attempts, attempt_id, fields)
    if attempt.gateway_order_id is None:
        raise Conflict(
            "This attempt was never opened at the gateway; retry the order.",
            code="attempt_not_open",
            param="attempt",
        )
    gateway = gateways.get(attempt.gateway)
    if gateway is None:
        raise InvalidRequest(
            f"The {attempt.gateway} gateway is not enabled here.", code="gateway_not_enabled", param="gateway"
        )
    gateway.verify_callback(gateway_order_id=attempt.gateway_order_id, fields=fields)
    view = await gateway.fetch_payment(attempt.gateway_order_id)
    async with db.transaction() as session:
        return await apply_gateway_view(session, attempt_id=attempt.id, view=view, now=utcnow())


def _pick_attempt(
    attempts: Sequence[PaymentAttempt], attempt_id: str | None, fields: Mapping[str, str]
) -> PaymentAttempt:
    """The attempt named, else the one whose gateway order id the callback names (an earlier attempt paid
    late), else the newest. Only the choice: the callback is then checked against that attempt's stored id."""
    if attempt_id is None:
        if not attempts:
            raise Conflict("This order has no payment attempt.", code="attempt_not_open", param="attempt")
        named = {fields.get(key) for key in ("razorpay_order_id", "payment_intent", "session_id")} - {None}
        for attempt in reversed(attempts):
            if attempt.gateway_order_id is not None and attempt.gateway_order_id in named:
                return attempt
        return attempts[-1]
    for attempt in attempts:
        if attempt.id == attempt_id:
            return attempt
    raise NotFound(f"No attempt {attempt_id} on this order.", param="attempt")


# ---------------------------------------------------------------- the webhook inbox


async def _attempt_for(
    session: AsyncSession, *, gateway: str, gateway_order_id: str | None, reference: str | None
) -> PaymentAttempt | None:
    """The attempt an event is about: by the gateway's order / intent id we stored, else by our own attempt id
    the gateway echoes (receipt, metadata)."""
    if gateway_order_id:
        found = await session.scalar(
            select(PaymentAttempt).where(
                PaymentAttempt.gateway == gateway, PaymentAttempt.gateway_order_id == gateway_order_id
            )
        )
        if found is not None:
            return found
    if reference:
        found = await session.get(PaymentAttempt, reference)
        if found is not None and found.gateway == gateway:
            return found
    return None


def _event_data(event: GatewayEvent) -> dict[str, Any]:
    return {
        "gateway_order_id": event.gateway_order_id,
        "payment_id": event.payment_id,
        "reference": event.reference,
        "amount": event.amount,
        "currency": event.currency,
        "status": event.status,
        "method": event.method,
        "card_brand": event.card_brand,
        "card_last4": event.card_last4,
        "failure_reason": event.failure_reason,
        "refund_id": event.refund_id,
        "refund_reference": event.refund_reference,
        "dispute_id": event.dispute_id,
        "created_at": event.created_at.isoformat(),
    }


async def _event_by_id(session: AsyncSession, gateway: str, event_id: str) -> PaymentGatewayEvent | None:
    return await session.scalar(
        select(PaymentGatewayEvent).where(
            PaymentGatewayEvent.gateway == gateway, PaymentGatewayEvent.event_id == event_id
        )
    )


async def store_event(
    session: AsyncSession, *, event: GatewayEvent, body: bytes, now: datetime
) -> tuple[PaymentGatewayEvent, bool]:
    """Keep a verified event raw, once per gateway and event id: ``(row, duplicate)``."""
    existing = await _event_by_id(session, event.gateway, event.event_id)
    if existing is not None:
        return existing, True
    attempt = await _attempt_for(
        session, gateway=event.gateway, gateway_order_id=event.gateway_order_id, reference=event.reference
    )
    row = PaymentGatewayEvent(
        id=new_id("evt"),
        gateway=event.gateway,
        event_id=event.event_id[:255],
        type=event.type.value,
        raw_type=event.raw_type[:128],
        order_id=attempt.order_id if attempt is not None else None,
        body=body,
        data=_event_data(event),
        received_at=now,
        process_attempts=0,
    )
    try:
        async with (
            session.begin_nested()
        ):  # the same event delivered twice at once: the second finds the first
            session.add(row)
    except IntegrityError:
        existing = await _event_by_id(session, event.gateway, event.event_id)
        if existing is None:
            raise
        return existing, True
    return row, False


async def process_event(session: AsyncSession, *, event_row_id: str, now: datetime) -> bool:
    """Apply a stored event, once: a captured payment through ``fulfil``, a failed one through
    ``record_failure`` (forward only, so in any order), a refund event through ``refunds.apply_refund_event``,
    a dispute event through ``disputes.apply_chargeback_event``. Events about payments this server did not
    start, and verified events of kinds it does not act on (``other``), are marked processed with a note.
    Answers whether it did the work (False: already processed)."""
    row = await session.scalar(
        select(PaymentGatewayEvent)
        .where(PaymentGatewayEvent.id == event_row_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound(f"No gateway event {event_row_id}.", param="event")
    if row.processed_at is not None:
        return False
    row.process_attempts += 1
    data = row.data or {}
    if row.type in refunds.REFUND_EVENTS:  # refunds: found by our refund id, not by the attempt
        await refunds.apply_refund_event(session, row=row, now=now)
        row.processed_at = now
        return True
    # ---- disputes: a chargeback's events open, win or lose it (payments/disputes.py, which imports this
    # module, hence the import here)
    if row.type.startswith("dispute."):
        from prepaid.payments import disputes

        row.error = await disputes.apply_chargeback_event(session, row=row, now=now)
        row.processed_at = now
        return True
    attempt = await _attempt_for(
        session,
        gateway=row.gateway,
        gateway_order_id=data.get("gateway_order_id"),
        reference=data.get("reference"),
    )
    event_type = row.type
    if attempt is None:
        row.error = "No order of this server matches the event."
    else:
        row.order_id = attempt.order_id
        if event_type == EventType.PAYMENT_CAPTURED.value:
            payment_id, amount, currency = data.get("payment_id"), data.get("amount"), data.get("currency")
            if not (isinstance(payment_id, str) and isinstance(amount, int) and isinstance(currency, str)):
                raise InvalidRequest(
                    "A captured payment without its id, amount or currency.", code="incomplete_event"
                )
            facts = PaymentFacts(
                payment_id=payment_id,
                amount=amount,
                currency=currency.upper(),
                method=data.get("method"),
                card_brand=data.get("card_brand"),
                card_last4=data.get("card_last4"),
            )
            await fulfil(session, order_id=attempt.order_id, payment=facts, now=now, attempt_id=attempt.id)
        elif event_type in (EventType.PAYMENT_FAILED.value, EventType.PAYMENT_CANCELLED.value):
            await record_failure(
                session,
                attempt_id=attempt.id,
                reason=data.get("failure_reason"),
                now=now,
                cancelled=event_type == EventType.PAYMENT_CANCELLED.value,
            )
        elif event_type == EventType.PAYMENT_AUTHORIZED.value:
            if attempt.status == "created":
                attempt.status = "pending"
        elif event_type != EventType.OTHER.value:  # a kind added to EventType and not handled here yet
            row.error = f"Not acted on: {row.raw_type}."
    row.processed_at = now
    return True


async def record_event_error(session: AsyncSession, *, event_row_id: str, error: str) -> None:
    row = await session.get(PaymentGatewayEvent, event_row_id, populate_existing=True)
    if row is not None and row.processed_at is None:
        row.process_attempts += 1
        row.error = error[:1000]


async def unprocessed_events(session: AsyncSession, *, before: datetime, limit: int = 50) -> list[str]:
    """Events stored but not processed (their processing failed, or the process stopped) received before
    ``before``, oldest first, that have not used up their tries."""
    rows = await session.scalars(
        select(PaymentGatewayEvent.id)
        .where(
            PaymentGatewayEvent.processed_at.is_(None),
            PaymentGatewayEvent.received_at <= before,
            PaymentGatewayEvent.process_attempts < EVENT_MAX_TRIES,
        )
        .order_by(PaymentGatewayEvent.id)
        .limit(limit)
    )
    return list(rows)


# ---------------------------------------------------------------- notifications (notify.payment_notices)


async def _flag_and_tell(session: AsyncSession, order: PaymentOrder, reason: str, now: datetime) -> None:
    """Flag the order and tell every admin (in-app and email, once per order and reason)."""
    _flag(order, reason, now)
    await payment_notices.order_flagged(session, order, reason)
