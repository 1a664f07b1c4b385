"""Guest checkout (``PREPAID_GUEST_CHECKOUT``, off by default): an order with only an email, no login.

- ``POST /v1/guest_orders`` takes an email and what to buy. The credits go to the default wallet of the account
  with that email; when there is none, a passwordless account is made for it (``new_account``). The answer
  carries the order's ``checkout_url`` (the signed pay link) and ``status_url`` (the signed follow link) and
  nothing about the account: not its id, its wallet nor its balance, so an email that already has an account
  gives the guest no access to it, and the answer is the same whether or not the account existed.
- Once the order is paid, the runner's ``guest_notifications`` job emails the address (outbox): an account made
  by guest checkout and still without a password gets a one-time claim link (``/guest/claim``) to choose one;
  any other account (one that existed, or was claimed since) gets a plain notice that credits were added. That
  is the one email per order: ``payment_succeeded`` is in-app only for a guest's order.
- A guest order whose gateway call fails (502) keeps its passwordless account (see docs/decisions.md): it
  holds nothing and nobody can sign in to it; the next guest order of that email uses it and is offered the
  claim link.
- Only public coupons: an ``assigned`` coupon is refused as unknown, whoever the email belongs to, so a guest
  cannot use a coupon allotted to someone else's account nor learn that it exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request, status
from pydantic import EmailStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth import service as auth_service
from prepaid.auth.models import User
from prepaid.catalog import service as catalog_service
from prepaid.catalog.schemas import Code, CouponCode, Currency, Quantity
from prepaid.db import Database, utcnow
from prepaid.deps import SettingsDep, client_ip, get_database, rate_limit
from prepaid.errors import Conflict, NotFound
from prepaid.money import CURRENCY_MINOR_UNITS, to_display
from prepaid.notify import service as notify_service
from prepaid.payments import checkout_pages, service
from prepaid.payments.gateways import Gateway
from prepaid.payments.models import PaymentGuestOrder, PaymentOrder
from prepaid.payments.schemas import GatewayName, OrderStatus
from prepaid.schemas import Input, Output
from prepaid.settings import Settings

CLAIM_TTL = 7 * 24 * 3600  # a claim link works once, for a week
NOTIFY_BATCH = 50


class GuestOrderCreate(Input):
    """A guest's order: an ``email``, a plan (by code) or a custom ``quantity``, a ``currency``, an optional
    public coupon and gateway."""

    email: EmailStr
    plan: Code | None = None
    quantity: Quantity | None = None
    currency: Currency
    coupon: CouponCode | None = None
    gateway: GatewayName | None = None


class GuestOrderRead(Output):
    """The guest's order: what it costs and grants, and the two signed links (pay, follow)."""

    object: Literal["guest_order"] = "guest_order"
    id: str
    status: OrderStatus
    currency: str
    amount: int
    asset: str
    credits: int
    bonus_credits: int
    gateway: str | None
    checkout_url: str | None
    status_url: str
    expires_at: datetime

    @classmethod
    def of(cls, order: PaymentOrder, *, settings: Settings) -> GuestOrderRead:
        return cls(
            id=order.id,
            status=order.status,
            currency=order.currency,
            amount=order.amount,
            asset=order.asset,
            credits=order.credits,
            bonus_credits=order.bonus_credits,
            gateway=order.gateway,
            checkout_url=(
                checkout_pages.checkout_url(settings, order.id, order.expires_at)
                if order.status in service.OPEN
                else None
            ),
            status_url=checkout_pages.status_url(settings, order.id),
            expires_at=order.expires_at,
        )


# ---------------------------------------------------------------- the rules


async def _buyer(db: Database, email: str) -> tuple[str, bool]:
    """The account for this email (made passwordless when there is none): ``(user id, made now)``."""
    address = auth_service.normalize_email(email)
    for _ in range(2):  # a concurrent guest order for the same new email made it first: use that one
        try:
            async with db.transaction() as session:
                user = await auth_service.get_user_by_email(session, address)
                if user is not None:
                    return user.id, False
                user = await auth_service.create_user(session, email=address, password=None)
                return user.id, True
        except Conflict:
            continue
    raise Conflict("The account for this email is being created; try again.", code="concurrent_conflict")


async def _check_coupon(db: Database, code: str | None) -> None:
    if code is None:
        return
    async with db.transaction(write=False) as session:
        coupon = await catalog_service.get_coupon(session, code)
        if coupon.visibility != "public":
            raise NotFound(f"No coupon {code}.", code="coupon_not_found", param="coupon")


async def place_guest_order(
    db: Database,
    *,
    email: str,
    purchase: service.Purchase,
    gateways: Mapping[str, Gateway],
    settings: Settings,
    client_ip: str | None,
    user_agent: str | None,
) -> PaymentOrder:
    """Create a guest's order into the default wallet of the account for ``email`` and open its payment (the
    return comes back to the order's return page, and a Stripe payment is a Checkout Session)."""
    if not settings.guest_checkout:
        raise NotFound("Guest checkout is not enabled on this server.", code="guest_checkout_disabled")
    await _check_coupon(db, purchase.coupon_code)
    buyer_id, new_account = await _buyer(db, email)
    # The guest row is written with the order (one transaction, before the gateway is asked), so the order is
    # a guest's from the start: fulfil emails nothing of its own (one email per order, the job's), and an
    # order whose gateway call fails is still recorded as made for this account (see ``notify_paid_guests``).
    return await service.place_order(
        db,
        buyer_id=buyer_id,
        purchase=purchase,
        gateways=gateways,
        settings=settings,
        client_ip=client_ip,
        user_agent=user_agent,
        hosted_checkout=True,
        guest=service.GuestBuyer(email=auth_service.normalize_email(email), new_account=new_account),
    )


def _display(order: PaymentOrder, settings: Settings) -> tuple[str, str]:
    digits = CURRENCY_MINOR_UNITS.get(order.currency, 2)
    amount = f"{order.currency} {to_display(order.amount, digits):,.{digits}f}"
    scale = settings.credit_scale
    total = order.credits + order.bonus_credits
    return amount, (f"{to_display(total, scale):,.{scale}f}" if scale else f"{total:,}")


async def _claimable(session: AsyncSession, guest: PaymentGuestOrder, user: User) -> bool:
    """An account is offered a claim link only while it has no password, still has the order's email, and was
    made by guest checkout (for this order, or for an earlier guest order of this email: one whose gateway
    call failed, say, which left the account empty); never an account that existed before."""
    if user.password_hash is not None or user.email != guest.email:
        return False
    if guest.new_account:
        return True
    made_by_guest = await session.scalar(
        select(PaymentGuestOrder.order_id)
        .where(PaymentGuestOrder.user_id == user.id, PaymentGuestOrder.new_account.is_(True))
        .limit(1)
    )
    return made_by_guest is not None


async def notify_paid_guests(db: Database, settings: Settings) -> int:
    """Email each guest whose order was granted, once: a claim link for an account made for the order and
    still without a password, else a notice (never a way into an account that was there before)."""
    now = utcnow()
    async with db.transaction() as session:
        rows = (
            await session.execute(
                select(PaymentGuestOrder, PaymentOrder)
                .join(PaymentOrder, PaymentOrder.id == PaymentGuestOrder.order_id)
                .where(
                    PaymentGuestOrder.notified_at.is_(None),
                    PaymentOrder.status.in_(sorted(service.GRANTED)),
                )
                .order_by(PaymentGuestOrder.order_id)
                .limit(NOTIFY_BATCH)
                .with_for_update(skip_locked=True, of=PaymentGuestOrder)
            )
        ).all()
        for guest, order in rows:
            guest.notified_at = now
            try:
                user = await auth_service.get_user(session, guest.user_id)
            except NotFound:  # the account was deleted meanwhile: nobody to tell
                continue
            if user.email is None or not user.active:
                continue
            amount, credits = _display(order, settings)
            context: dict[str, Any] = {
                "order_id": order.id,
                "amount": amount,
                "credits": credits,
                "status_link": checkout_pages.status_url(settings, order.id, now=now),
            }
            if await _claimable(session, guest, user):
                token = await auth_service.issue_password_link_token(session, user=user, ttl=CLAIM_TTL)
                context |= {
                    "claim_link": f"{settings.base_url.rstrip('/')}/guest/claim?token={token}",
                    "hours": CLAIM_TTL // 3600,
                }
                await notify_service.enqueue_email(
                    session, to=user.email, template="guest_claim", context=context
                )
            else:
                await notify_service.enqueue_email(
                    session, to=user.email, template="guest_credits", context=context
                )
    return len(rows)


# ---------------------------------------------------------------- the route

router = APIRouter(prefix="/v1", tags=["guest checkout"])


@router.post(
    "/guest_orders",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(rate_limit("order_create", per_ip=True))],
    responses={
        404: {"description": "Guest checkout is off (guest_checkout_disabled), or no such plan or coupon"},
        502: {"description": "The gateway could not open the payment (gateway_error)"},
    },
)
async def create_guest_order(
    body: GuestOrderCreate, request: Request, settings: SettingsDep
) -> GuestOrderRead:
    """Buy credits with only an email (``PREPAID_GUEST_CHECKOUT``): pay through ``checkout_url``, follow the
    order at ``status_url``. The credits land in the account for that email; an account made for it is claimed
    through an emailed one-time link once the order is paid."""
    purchase = service.Purchase(
        currency=body.currency,
        plan_code=body.plan,
        quantity=body.quantity,
        coupon_code=body.coupon,
        gateway=body.gateway,
    )
    gateways: dict[str, Gateway] = getattr(request.app.state, "gateways", {})
    db = get_database(request)
    order = await place_guest_order(
        db,
        email=body.email,
        purchase=purchase,
        gateways=gateways,
        settings=settings,
        client_ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )
    return GuestOrderRead.of(order, settings=settings)
