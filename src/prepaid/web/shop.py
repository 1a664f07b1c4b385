"""The shop's pages: the public price list at ``/`` and buying credits at ``/buy``.

``/`` shows anyone the plans with their prices per currency, the custom-quantity unit prices, the model and
usage meters' prices, the volume discount slabs and the offers live now, read through the catalog service.
``/buy`` (signed in) picks a plan or a custom quantity, a currency and a coupon (typed, or one of the user's
allotted coupons); ``static/buy.js`` asks ``POST /v1/quotes`` for the live quote as the user types and pays
with ``POST /v1/orders`` (with an ``Idempotency-Key``), then sends the browser to the order's checkout page
(``payments/checkout_pages.py``: the sandbox's hosted page, Razorpay Checkout or Stripe Elements), which comes
back to the order's status page. ``/buy/orders/{id}`` and ``/buy/orders/{id}/pay`` lead a signed-in owner to
that status page and to paying (again), so pages that know only the order id can link there.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from prepaid.catalog import service as catalog_service
from prepaid.catalog.models import Meter, Offer
from prepaid.catalog.schemas import percent_text
from prepaid.db import utcnow
from prepaid.deps import Session, SettingsDep
from prepaid.errors import NotFound
from prepaid.money import CURRENCY_MINOR_UNITS
from prepaid.notify.email import format_credits
from prepaid.pagination import PageParams
from prepaid.payments import checkout_pages
from prepaid.payments import service as payments_service
from prepaid.payments.models import PaymentOrder
from prepaid.settings import Settings
from prepaid.web.render import PageUser, message, render, signed_in

router = APIRouter(include_in_schema=False)
MY_COUPONS_SHOWN = 50
OrderPath = Annotated[str, Path(max_length=64)]


@dataclass(frozen=True)
class MeterPrice:
    """A meter's prices for people: model meters per million tokens, unit meters per unit (or per ``per``)."""

    code: str
    name: str
    description: str
    input: str | None = None
    cached_input: str | None = None
    output: str | None = None
    usage: str | None = None


def _per_unit(price: int, per: int, unit: str, scale: int) -> str:
    """``1`` credit (scale 0) per ``10`` calls -> "0.1 credits per call"; one that does not divide evenly into
    four decimals keeps its block: "1 credit per 60 seconds"."""
    each = Decimal(price).scaleb(-scale) / Decimal(per)
    if per == 1 or each == each.quantize(Decimal("0.0001")):
        amount = f"{each.normalize():,f}"
        return f"{amount} {'credit' if each == 1 else 'credits'} per {unit}"
    amount = format_credits(price, scale)
    return f"{amount} {'credit' if amount == '1' else 'credits'} per {per:,} {unit}s"


def meter_price(meter: Meter, scale: int) -> MeterPrice:
    def credits(value: int | None) -> str | None:
        return format_credits(value, scale) if value is not None else None

    if meter.kind == "model":
        return MeterPrice(
            code=meter.code,
            name=meter.name,
            description=meter.description,
            input=credits(meter.input_price),
            cached_input=credits(meter.cached_input_price),
            output=credits(meter.output_price),
        )
    usage = None
    if meter.price is not None and meter.per:
        usage = _per_unit(meter.price, meter.per, meter.unit, scale)
    return MeterPrice(code=meter.code, name=meter.name, description=meter.description, usage=usage)


def offer_text(offer: Offer, scale: int) -> str:
    if offer.kind == "percent_off" and offer.percent_bps is not None:
        what = f"{percent_text(offer.percent_bps)} % off"
    elif offer.bonus_credits:
        what = f"{format_credits(offer.bonus_credits, scale)} bonus credits"
    else:
        what = "A special price"
    scope = ", ".join(offer.plan_codes) if offer.plan_codes is not None else "every plan and custom quantity"
    return f"{what} on {scope}"


async def _catalog(session: Session, settings: SettingsDep) -> dict[str, Any]:
    """What both pages show of the catalog."""
    plans = await catalog_service.list_plans(session)
    units = await catalog_service.list_unit_prices(session)
    currencies = sorted(
        {price.currency for plan in plans for price in plan.prices} | {unit.currency for unit in units}
    )
    return {
        "plans": [
            {
                "code": plan.code,
                "name": plan.name,
                "description": plan.description,
                "credits": plan.credits,
                "bonus_credits": plan.bonus_credits,
                "popular": plan.popular,
                "prices": catalog_service.plan_prices(plan),
            }
            for plan in plans
        ],
        "unit_prices": units,
        "currencies": currencies,
        "slabs": [
            {"min_credits": slab.min_credits, "percent": percent_text(slab.percent_bps)}
            for slab in await catalog_service.discount_slabs(session)
        ],
        "offers": [
            {
                "name": offer.name,
                "description": offer.description,
                "terms": offer_text(offer, settings.credit_scale),
                "ends_at": offer.ends_at,
            }
            for offer in await catalog_service.active_offers(session, utcnow())
        ],
    }


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, session: Session, settings: SettingsDep) -> Response:
    """The price list, for anyone."""
    principal = await signed_in(request, session, settings)
    context = await _catalog(session, settings)
    meters = await catalog_service.list_meters(session)
    context["models"] = [meter_price(m, settings.credit_scale) for m in meters if m.kind == "model"]
    context["usage_meters"] = [meter_price(m, settings.credit_scale) for m in meters if m.kind != "model"]
    return render(request, "shop/home.html", context, settings=settings, principal=principal)


# The currency /buy starts with: the first enabled gateway's own (DESIGN: INR for Razorpay, whose flow the
# sandbox follows; USD or EUR for Stripe), when the catalog prices in it.
GATEWAY_HOME_CURRENCY = {"razorpay": "INR", "sandbox": "INR", "stripe": "USD"}


def _home_currency(currencies: list[str], settings: Settings) -> str:
    for gateway in settings.gateway_names:
        home = GATEWAY_HOME_CURRENCY.get(gateway)
        if home in currencies:
            return home
    return currencies[0] if currencies else ""


@router.get("/buy", response_class=HTMLResponse)
async def buy_page(
    request: Request,
    principal: PageUser,
    session: Session,
    settings: SettingsDep,
    plan: Annotated[str | None, Query(max_length=64)] = None,
    quantity: Annotated[str | None, Query(max_length=20)] = None,
    currency: Annotated[str | None, Query(max_length=3)] = None,
    coupon: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Pick what to buy; the quote and the payment are the page's script's (``static/buy.js``)."""
    context = await _catalog(session, settings)
    codes = [item["code"] for item in context["plans"]]
    count = int(quantity) if quantity and quantity.isascii() and quantity.isdigit() else None  # else ignored
    chosen_plan = plan.strip().lower() if plan else None
    if count is not None:
        chosen_plan = None
    elif chosen_plan not in codes:
        chosen_plan = next((item["code"] for item in context["plans"] if item["popular"]), None)
        chosen_plan = chosen_plan or (codes[0] if codes else None)
    currencies = context["currencies"]
    chosen_currency = (currency or "").strip().upper()
    if chosen_currency not in currencies:
        chosen_currency = _home_currency(currencies, settings)
    now = utcnow()
    mine = await catalog_service.my_coupons(
        session, user_id=principal.user.id, now=now, params=PageParams(limit=MY_COUPONS_SHOWN)
    )
    coupons = [
        {"code": item.code, "description": item.description, "ends_at": item.ends_at}
        for item in mine.data
        if item.starts_at is None or item.starts_at <= now
    ]
    units = {
        unit.currency: {"amount": unit.unit_amount, "min": unit.min_quantity, "max": unit.max_quantity}
        for unit in context["unit_prices"]
    }
    context |= {
        "chosen_plan": chosen_plan,
        "quantity": count,
        "chosen_currency": chosen_currency,
        "coupon": (coupon or "").strip(),
        "my_coupons": coupons,
        "units": units,
        "exponents": {code: CURRENCY_MINOR_UNITS.get(code, 2) for code in currencies},
    }
    return render(request, "shop/buy.html", context, settings=settings, principal=principal)


async def _own_order(principal: PageUser, find: Awaitable[PaymentOrder]) -> PaymentOrder | None:
    """The order ``find`` reads, if there is one and it is this user's."""
    try:
        order = await find
    except NotFound:
        return None
    return order if order.user_id == principal.user.id else None


def _no_order(request: Request, settings: SettingsDep, principal: PageUser) -> HTMLResponse:
    return message(
        request,
        settings,
        heading="Not found",
        text="There is no such order in your account.",
        link="/account",
        link_text="Your account",
        status_code=404,
        principal=principal,
    )


@router.get("/buy/attempts/{attempt_id}/pay")
async def attempt_pay(
    request: Request, attempt_id: OrderPath, principal: PageUser, session: Session, settings: SettingsDep
) -> Response:
    """``Try again`` on a gateway's return page, which knows the payment attempt and names no order."""
    order = await _own_order(principal, payments_service.order_of_attempt(session, attempt_id))
    if order is None:
        return _no_order(request, settings, principal)
    return _pay(settings, order)


@router.get("/buy/orders/{order_id}")
async def order_status(
    request: Request, order_id: OrderPath, principal: PageUser, session: Session, settings: SettingsDep
) -> Response:
    """The signed-in owner's way to the order's status page (the page itself is reached by a signed link)."""
    order = await _own_order(principal, payments_service.get_order(session, order_id))
    if order is None:
        return _no_order(request, settings, principal)
    return RedirectResponse(checkout_pages.status_url(settings, order.id), status_code=303)


@router.get("/buy/orders/{order_id}/pay")
async def order_pay(
    request: Request, order_id: OrderPath, principal: PageUser, session: Session, settings: SettingsDep
) -> Response:
    """Pay the owner's order (again): its signed checkout page opens the gateway while the order waits for a
    payment, offers another try once it failed or expired, and shows the status once it is paid."""
    order = await _own_order(principal, payments_service.get_order(session, order_id))
    if order is None:
        return _no_order(request, settings, principal)
    return _pay(settings, order)


def _pay(settings: Settings, order: PaymentOrder) -> RedirectResponse:
    if order.status not in payments_service.UNPAID:
        return RedirectResponse(checkout_pages.status_url(settings, order.id), status_code=303)
    target = checkout_pages.checkout_url(settings, order.id, order.expires_at)
    return RedirectResponse(target, status_code=303)
