"""What payments tell people: the calls ``payments.service`` makes at the moments that matter, each in the
caller's transaction and under the order's lock, each at most once per fact (a ``dedupe_key``)."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.notify.service import notify, notify_admins
from prepaid.payments.models import PaymentDispute, PaymentGuestOrder, PaymentOrder, PaymentRefund


def order_facts(order: PaymentOrder) -> dict[str, Any]:
    return {
        "order_id": order.id,
        "amount": order.amount,
        "currency": order.currency,
        "credits": order.credits,
        "bonus_credits": order.bonus_credits,
        "wallet_id": order.wallet_id,
    }


async def _by_email(session: AsyncSession, order: PaymentOrder) -> bool:
    """A guest order is emailed by guest checkout itself (a claim link or a notice, never anything that reads as
    access to an account that was there before): here it is told in-app only."""
    return await session.get(PaymentGuestOrder, order.id) is None


async def payment_succeeded(session: AsyncSession, order: PaymentOrder) -> None:
    """The order was fulfilled (its credits granted): once per order, whoever fulfilled it."""
    await notify(
        session,
        user_id=order.user_id,
        kind="payment_succeeded",
        data=order_facts(order),
        dedupe_key=f"payment_succeeded:{order.id}",
        email=await _by_email(session, order),
    )


async def payment_failed(session: AsyncSession, order: PaymentOrder, *, attempt_id: str) -> None:
    """The order's newest attempt failed and the order with it: once per attempt (a retry that fails again is
    told again)."""
    data = {**order_facts(order), "attempt_id": attempt_id, "reason": order.failure_reason}
    await notify(
        session,
        user_id=order.user_id,
        kind="payment_failed",
        data=data,
        dedupe_key=f"payment_failed:{attempt_id}",
        email=await _by_email(session, order),
    )


async def chargeback_opened(
    session: AsyncSession, order: PaymentOrder, *, dispute_id: str, amount: int | None, currency: str | None
) -> None:
    """For the chargeback code to call when the gateway opens one: every admin, once per dispute."""
    data: dict[str, Any] = {"order_id": order.id, "user_id": order.user_id, "dispute_id": dispute_id}
    if amount is not None and currency:
        data |= {"amount": amount, "currency": currency}
    await notify_admins(
        session, kind="chargeback_opened", data=data, dedupe_key=f"chargeback_opened:{dispute_id}"
    )


async def order_flagged(session: AsyncSession, order: PaymentOrder, reason: str) -> None:
    """Every admin is told of a flagged order, once per order and reason (the same duplicate payment reported
    by both the callback and the webhook is one alert)."""
    digest = hashlib.sha256(reason.encode()).hexdigest()[:24]
    data = {**order_facts(order), "user_id": order.user_id, "reason": reason[:500]}
    await notify_admins(
        session, kind="order_flagged", data=data, dedupe_key=f"order_flagged:{order.id}:{digest}"
    )


async def refund_processed(session: AsyncSession, order: PaymentOrder, refund: PaymentRefund) -> None:
    """The gateway returned the money of a refund (an admin's, or a duplicate payment's automatic one): the
    buyer is told once per refund, with the credits it took back."""
    data = {
        "order_id": order.id,
        "refund_id": refund.id,
        "kind": refund.kind,
        "amount": refund.amount,
        "currency": refund.currency,
        "credits": refund.credits_taken,
    }
    await notify(
        session,
        user_id=order.user_id,
        kind="refund_processed",
        data=data,
        dedupe_key=f"refund_processed:{refund.id}",  # emailed to guests too: no guest email says it
    )


async def dispute_updated(
    session: AsyncSession, dispute: PaymentDispute, *, event: str, message: str | None = None
) -> None:
    """The dispute's owner is told of what an admin or the gateway did to it: an admin's message, a resolution,
    a chargeback opened (its credits held) or decided. Once per ``event`` (a message id, ``resolved``,
    ``opened``, ``won``, ``lost``)."""
    data: dict[str, Any] = {
        "dispute_id": dispute.id,
        "order_id": dispute.order_id,
        "kind": dispute.kind,
        "status": dispute.status,
    }
    if dispute.resolution is not None:
        data["resolution"] = dispute.resolution
    if dispute.granted_credits:
        data["credits"] = dispute.granted_credits
    if message:
        data["message"] = message[:1000]
    await notify(
        session,
        user_id=dispute.user_id,
        kind="dispute_updated",
        data=data,
        dedupe_key=f"dispute_updated:{dispute.id}:{event}",
    )
