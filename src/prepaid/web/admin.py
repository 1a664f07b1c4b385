"""The admin panel's operations half: the dashboard (figures over a period, charts drawn on the server), users
(roles, activation, wallets: grant credits, freeze), orders (filters, detail, refund), the gateway's orders
beside ours, disputes (the gateway's view, the thread, reply, resolve) and the audit log.

Pages read through the domains' services; forms post here with the session's CSRF token and either redirect
(303, with a fixed ``notice`` key: no text from the query is ever shown) or show the page again with each error
next to its field, having changed nothing. Refunds and dispute resolutions talk to the gateway: their forms
resolve the admin in a read-only transaction and the services open their own short write transactions (on
SQLite the request must hold no write lock then).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Collection, Sequence
from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import AfterValidator, BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.auth.models import User
from prepaid.db import Database, utcnow
from prepaid.deps import ReadSession, Session, SettingsDep, get_database
from prepaid.errors import DomainError, InvalidRequest, NotFound
from prepaid.ledger import access
from prepaid.ledger import service as ledger_service
from prepaid.ledger.schemas import GrantCreate
from prepaid.money import CURRENCY_MINOR_UNITS
from prepaid.notify.email import format_credits, format_money
from prepaid.pagination import Page, PageParams
from prepaid.payments import disputes, reconcile, refunds
from prepaid.payments import service as payments_service
from prepaid.payments.gateways import Gateway, GatewayError
from prepaid.payments.models import CLAWBACK_POLICIES, DISPUTE_STATUSES, ORDER_STATUSES, PaymentOrder
from prepaid.payments.schemas import DisputeMessageCreate, DisputeResolve, RefundCreate
from prepaid.settings import Settings
from prepaid.web import charts, stats
from prepaid.web.render import (
    FieldErrors,
    FormAdmin,
    PageAdmin,
    PageInterrupt,
    Pager,
    domain_errors,
    message,
    page_params,
    pager,
    refused,
    render,
    session_csrf_ok,
    signed_in,
    to_login,
    validation_errors,
)

router = APIRouter(prefix="/admin", include_in_schema=False)
PAGE_SIZE = 25


def _without_nul(text: str | None) -> str | None:
    """PostgreSQL refuses a NUL character in any text it is sent: a query with one would be a server error."""
    return text.replace("\x00", "") if text else text


IdPath = Annotated[str, Path(max_length=64), AfterValidator(_without_nul)]
QueryText = Annotated[str, Query(max_length=200), AfterValidator(_without_nul)]
DayText = Annotated[str, Query(max_length=40), AfterValidator(_without_nul)]
FromDay = Annotated[str, Query(alias="from", max_length=40), AfterValidator(_without_nul)]
Text = Annotated[str, Form(max_length=1000), AfterValidator(_without_nul)]
Cursor = Annotated[str | None, Query(max_length=64), AfterValidator(_without_nul)]
NOTICES = {
    "roles": "Roles saved.",
    "activated": "The account is active.",
    "deactivated": "The account is deactivated and signed out everywhere.",
    "granted": "Credits granted.",
    "frozen": "The wallet is frozen.",
    "unfrozen": "The wallet is unfrozen.",
    "refunded": "Refund made.",
    "replied": "Reply sent.",
    "resolved": "Dispute resolved.",
}
RESOLUTION_LABELS = (("grant_credits", "Grant credits"), ("refund", "Refund"), ("reject", "Reject"))
CLAWBACK_LABELS = (
    ("available", "Take back what is left (available)"),
    ("negative", "Take back all, leaving debt (negative)"),
    ("none", "Take back nothing (none)"),
)
SOURCE_LABELS = (
    ("promotional", "Promotional"),
    ("paid", "Paid"),
    ("adjustment", "Adjustment"),
    ("refund", "Refund"),
)


# ---------------------------------------------------------------- shared pieces


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    principal: auth_service.Principal,
    settings: Settings,
    status_code: int | None = None,
) -> Response:
    """The page; without ``status_code``, 400 when the context holds errors, else 200."""
    notice = NOTICES.get(request.query_params.get("notice", ""))
    if status_code is None:
        status_code = 400 if context.get("errors") else 200
    return render(
        request,
        name,
        {"notice": notice, **context},
        settings=settings,
        principal=principal,
        status_code=status_code,
    )


def _done(path: str, notice: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?notice={notice}", status_code=303)


def _params(starting_after: str | None, ending_before: str | None) -> PageParams:
    return page_params(starting_after, ending_before, PAGE_SIZE)


def _pager(request: Request, page: Page[Any], starting_after: str | None, ending_before: str | None) -> Pager:
    """Links to the newer and the older page, keeping the other query parameters."""
    kept = {
        k: v
        for k, v in request.query_params.items()
        if k not in ("starting_after", "ending_before", "notice")
    }
    return pager(kept, page, _params(starting_after, ending_before), path=request.url.path)


def _first_errors(model: type[BaseModel], values: dict[str, Any]) -> tuple[Any, FieldErrors]:
    try:
        return model.model_validate(values), {}
    except ValidationError as error:
        return None, validation_errors(error)


_UNITS = re.compile(r"([0-9]{1,30})(?:\.([0-9]*))?|\.([0-9]+)")


def parse_units(text: str, digits: int) -> int:
    """``"12.5"`` with 2 digits -> 1250, in integer arithmetic (no float, no rounding): ASCII digits with an
    optional point and thousands commas; more decimals than the unit has, a sign, an exponent or more than 30
    digits before the point is a ValueError."""
    found = _UNITS.fullmatch(text.strip().replace(",", ""))
    if found is None and _UNITS.fullmatch(text.strip().replace(",", "").removeprefix("-")):
        raise ValueError("Enter an amount above zero.")
    if found is None:
        raise ValueError("Enter a number, such as 250 or 99.50.")
    whole, fraction = found.group(1) or "0", (found.group(2) or found.group(3) or "").rstrip("0")
    if len(fraction) > digits:
        raise ValueError(f"Use at most {digits} decimal places." if digits else "Use a whole number.")
    return int(whole + fraction.ljust(digits, "0"))


def _error_at(error: DomainError, fields: Collection[str], **renamed: str) -> FieldErrors:
    """The service's refusal next to the form's field it names (``renamed``: the API's parameter -> the form's
    field), else at the top of the form."""
    param = renamed.get(error.param or "", error.param or "")
    return {param if param in fields else "form": error.message}


def _day_start(day: date | None, zone: ZoneInfo) -> datetime | None:
    """The first instant of ``day`` in ``zone`` (UTC), clamped at the calendar's edge."""
    return stats.Period(day, day, zone).start if day else None


def _day_end(day: date | None, zone: ZoneInfo) -> datetime | None:
    """The first instant after ``day`` in ``zone`` (UTC), clamped at the calendar's edge."""
    return stats.Period(day, day, zone).end if day else None


def _parse_day(text: str, field: str, errors: FieldErrors) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        errors[field] = "Enter a date as YYYY-MM-DD."
        return None


def _gateways(request: Request) -> dict[str, Gateway]:
    gateways: dict[str, Gateway] = getattr(request.app.state, "gateways", {})
    return gateways


async def _gateway_form_admin(
    request: Request, session: ReadSession, settings: SettingsDep, csrf_token: Text = ""
) -> auth_service.Principal:
    """An admin's form post for work that calls a gateway: resolved in a read-only transaction, so the
    services may open their own write transactions (and the gateway is never waited on holding a lock)."""
    principal = await signed_in(request, session, settings)
    if principal is None:
        raise PageInterrupt(to_login(request))
    if "admin" not in principal.user.roles:
        raise PageInterrupt(
            message(
                request,
                settings,
                heading="Admins only",
                text="This page is for the shop's admins.",
                status_code=403,
                principal=principal,
            )
        )
    if not session_csrf_ok(principal, csrf_token):
        raise PageInterrupt(refused(request, settings, principal))
    return principal


GatewayFormAdmin = Annotated[auth_service.Principal, Depends(_gateway_form_admin)]


def _not_found(
    request: Request, settings: Settings, principal: auth_service.Principal, what: str
) -> Response:
    return message(
        request,
        settings,
        heading="Not found",
        text=f"There is no such {what}.",
        status_code=404,
        principal=principal,
        link="/admin",
        link_text="Back to the dashboard",
    )


# ---------------------------------------------------------------- dashboard


def _money_format(currency: str) -> Callable[[int], str]:
    def format_value(value: int) -> str:
        return format_money(value, currency)

    return format_value


def _dashboard_charts(figures: stats.Stats, scale: int) -> dict[str, Any]:
    days = [day.strftime("%d %b") for day in figures.period.days]  # short: the axis labels must not overlap
    index = {day: position for position, day in enumerate(figures.period.days)}
    revenue = []
    for currency in figures.currencies:
        net = [0] * len(days)
        for row in figures.revenue:
            if row.currency == currency:
                net[index[row.day]] += row.net
        revenue.append(
            {
                "currency": currency,
                "svg": charts.stacked_bars(
                    days,
                    {"Net revenue": net},
                    title=f"Revenue per day in {currency}, net of refunds and lost chargebacks",
                    format_value=_money_format(currency),
                ),
                "total": sum(net),
            }
        )

    def credit_chart(names: Sequence[str], title: str) -> dict[str, Any]:
        series = {name.capitalize(): [getattr(row, name) for row in figures.credits] for name in names}
        return {
            "svg": charts.stacked_bars(
                days, series, title=title, format_value=lambda value: format_credits(value, scale)
            ),
            "legend": charts.legend(list(series)),
            "totals": {name: sum(values) for name, values in series.items()},
        }

    statuses = [row for row in figures.orders_by_status if row.count]
    orders = charts.stacked_bars(
        [row.status for row in statuses],
        {"Orders": [row.count for row in statuses]},
        title="Orders by status",
    )
    top = []
    for currency in sorted({row.currency for row in figures.top_customers}):
        rows = [row for row in figures.top_customers if row.currency == currency]
        top.append(
            {
                "currency": currency,
                "rows": rows,
                "svg": charts.stacked_bars(
                    [row.name or row.email or row.user_id for row in rows],
                    {"Paid": [row.paid for row in rows]},
                    title=f"Top customers in {currency}",
                    format_value=_money_format(currency),
                ),
            }
        )
    return {
        "revenue": revenue,
        "credits_in": credit_chart(("sold", "granted"), "Credits sold and granted per day"),
        "credits_out": credit_chart(("spent", "expired"), "Credits spent and expired per day"),
        "orders": orders,
        "top": top,
    }


@router.get("")
async def dashboard(
    request: Request,
    principal: PageAdmin,
    session: Session,
    settings: SettingsDep,
    from_: FromDay = "",
    to: DayText = "",
) -> Response:
    errors: FieldErrors = {}
    first, last = _parse_day(from_, "from", errors), _parse_day(to, "to", errors)
    zone = stats.report_zone(settings.report_tz)
    chosen = None
    if not errors:
        try:
            chosen = stats.period(first, last, zone=zone, now=utcnow())
        except InvalidRequest as error:
            errors = domain_errors(error)
    if chosen is None:
        chosen = stats.period(None, None, zone=zone, now=utcnow())
    figures = await stats.compute_stats(session, period=chosen)
    context = {
        "section": "dashboard",
        "errors": errors,
        "values": {
            "from": from_ if errors else chosen.first.isoformat(),
            "to": to if errors else chosen.last.isoformat(),
        },
        "figures": figures,
        "charts": _dashboard_charts(figures, settings.credit_scale),
    }
    return _page(request, "admin/dashboard.html", context, principal=principal, settings=settings)


# ---------------------------------------------------------------- users


@router.get("/users")
async def users_page(
    request: Request,
    principal: PageAdmin,
    session: Session,
    settings: SettingsDep,
    q: QueryText = "",
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    found = await auth_service.list_users(
        session, params=_params(starting_after, ending_before), search=q.strip() or None
    )
    context = {
        "section": "users",
        "q": q,
        "users": found.data,
        "pager": _pager(request, found, starting_after, ending_before),
    }
    return _page(request, "admin/users.html", context, principal=principal, settings=settings)


async def _user_context(session: AsyncSession, user: User) -> dict[str, Any]:
    wallets = (await ledger_service.list_wallets(session, user_id=user.id, params=PageParams(limit=100))).data
    parts = await ledger_service.lot_parts(session, wallet_ids=[wallet.id for wallet in wallets])
    totals = await payments_service.user_totals(session, user_id=user.id)
    orders = await payments_service.list_orders(session, params=PageParams(limit=10), user_id=user.id)
    return {
        "section": "users",
        "person": user,
        "wallets": [(wallet, parts[wallet.id]) for wallet in wallets],
        "totals": totals,
        "orders": orders.data,
        "sources": SOURCE_LABELS,
    }


async def _user_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: auth_service.Principal,
    user_id: str,
    *,
    errors: FieldErrors | None = None,
    grant: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    try:
        user = await auth_service.get_user(session, user_id)
    except NotFound:
        return _not_found(request, settings, principal, "user")
    context = await _user_context(session, user)
    context["errors"] = errors or {}
    context["grant"] = grant or {"source": "promotional", "grant_key": secrets.token_urlsafe(16)}
    return _page(
        request, "admin/user.html", context, principal=principal, settings=settings, status_code=status_code
    )


@router.get("/users/{user_id}")
async def user_page(
    request: Request, user_id: IdPath, principal: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _user_page(request, session, settings, principal, user_id)


@router.post("/users/{user_id}/roles")
async def user_roles_submit(
    request: Request,
    user_id: IdPath,
    principal: FormAdmin,
    session: Session,
    settings: SettingsDep,
    admin: Text = "",
) -> Response:
    try:
        async with session.begin_nested():  # an error undoes all of it; the page is shown again
            user = await auth_service.get_user(session, user_id)
            roles = [role for role in user.roles if role != "admin"] + (["admin"] if admin else [])
            await auth_service.admin_update_user(
                session, actor=principal, user_id=user_id, roles=roles, active=None, name=None
            )
    except DomainError as error:
        errors = _error_at(error, ("admin",), roles="admin")
        return await _user_page(
            request, session, settings, principal, user_id, errors=errors, status_code=error.status
        )
    return _done(f"/admin/users/{user_id}", "roles")


@router.post("/users/{user_id}/active")
async def user_active_submit(
    request: Request,
    user_id: IdPath,
    principal: FormAdmin,
    session: Session,
    settings: SettingsDep,
    active: Text = "",
) -> Response:
    if active not in ("true", "false"):
        return await _user_page(
            request,
            session,
            settings,
            principal,
            user_id,
            errors={"active": "Choose activate or deactivate."},
            status_code=400,
        )
    try:
        async with session.begin_nested():
            await auth_service.admin_update_user(
                session, actor=principal, user_id=user_id, roles=None, active=active == "true", name=None
            )
    except DomainError as error:
        errors = _error_at(error, ("active",))
        return await _user_page(
            request, session, settings, principal, user_id, errors=errors, status_code=error.status
        )
    return _done(f"/admin/users/{user_id}", "activated" if active == "true" else "deactivated")


@router.post("/users/{user_id}/grants")
async def user_grant_submit(
    request: Request,
    user_id: IdPath,
    principal: FormAdmin,
    session: Session,
    settings: SettingsDep,
    wallet: Text = "",
    amount: Text = "",
    source: Text = "promotional",
    expires_on: Text = "",
    reason: Text = "",
    grant_key: Text = "",
) -> Response:
    """Credits into one of the user's wallets, through the grant the API's ``POST /v1/wallets/{id}/grants``
    makes. ``grant_key`` (drawn when the form was shown) makes a double submit grant once."""
    form = {
        "wallet": wallet,
        "amount": amount,
        "source": source,
        "expires_on": expires_on,
        "reason": reason,
        "grant_key": grant_key,
    }
    errors: FieldErrors = {}
    units = 0
    try:
        units = parse_units(amount, settings.credit_scale)
    except ValueError as error:
        errors["amount"] = "Enter the credits to grant." if not amount.strip() else str(error)
    expires_at = None
    day = _parse_day(expires_on, "expires_on", errors)
    if day is not None:
        expires_at = _day_end(day, stats.report_zone(settings.report_tz))
    body, problems = _first_errors(
        GrantCreate,
        {
            "amount": units,
            "source": source,
            "expires_at": expires_at,
            "reason": reason,
            "idempotency_key": grant_key or "-",
        },
    )
    for field, text in problems.items():
        errors.setdefault({"expires_at": "expires_on", "idempotency_key": "form"}.get(field, field), text)
    target = None
    if not errors:
        try:
            target = await ledger_service.get_wallet(session, wallet)
        except NotFound:
            target = None
        if target is None or target.user_id != user_id:
            errors["wallet"] = "Choose one of this user's wallets."
    if errors or body is None or target is None:
        return await _user_page(
            request, session, settings, principal, user_id, errors=errors, grant=form, status_code=400
        )
    try:
        async with session.begin_nested():
            await ledger_service.grant_credits(
                session,
                wallet_id=target.id,
                amount=body.amount,
                idempotency_key=access.ledger_key(principal, f"admin-panel:{body.idempotency_key}"),
                actor=principal.audit_actor,
                source=body.source,
                expires_at=body.expires_at,
                memo=body.reason,
            )
    except DomainError as error:
        errors = _error_at(error, form, expires_at="expires_on")
        return await _user_page(
            request,
            session,
            settings,
            principal,
            user_id,
            errors=errors,
            grant=form,
            status_code=error.status,
        )
    return _done(f"/admin/users/{user_id}", "granted")  # the ledger announces balance.updated itself


@router.post("/users/{user_id}/wallets/{wallet_id}/frozen")
async def wallet_frozen_submit(
    request: Request,
    user_id: IdPath,
    wallet_id: IdPath,
    principal: FormAdmin,
    session: Session,
    settings: SettingsDep,
    frozen: Text = "",
) -> Response:
    """Freeze or unfreeze, through the update ``PATCH /v1/wallets/{id}`` makes."""
    errors: FieldErrors = {}
    try:
        wallet = await ledger_service.get_wallet(session, wallet_id)
    except NotFound:
        wallet = None
    if wallet is None or wallet.user_id != user_id:
        errors["form"] = "This user has no such wallet."
    elif frozen not in ("true", "false"):
        errors["form"] = "Choose to freeze or unfreeze the wallet."
    if errors:
        return await _user_page(
            request, session, settings, principal, user_id, errors=errors, status_code=400
        )
    await ledger_service.update_wallet(
        session, wallet_id=wallet_id, as_admin=True, actor=principal.audit_actor, frozen=frozen == "true"
    )
    return _done(f"/admin/users/{user_id}", "frozen" if frozen == "true" else "unfrozen")


# ---------------------------------------------------------------- orders


@router.get("/orders")
async def orders_page(
    request: Request,
    principal: PageAdmin,
    session: Session,
    settings: SettingsDep,
    status: QueryText = "",
    user: QueryText = "",
    from_: FromDay = "",
    to: DayText = "",
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    errors: FieldErrors = {}
    if status and status not in ORDER_STATUSES:
        errors["status"] = "Choose a status from the list."
    user_id: str | None = None
    if user.strip():
        wanted = user.strip()
        found_user = await auth_service.get_user_by_email(session, wanted) if "@" in wanted else None
        if found_user is None and "@" not in wanted:
            try:
                found_user = await auth_service.get_user(session, wanted)
            except NotFound:
                found_user = None
        if found_user is None:
            errors["user"] = "No user with this email or id."
        else:
            user_id = found_user.id
    first, last = _parse_day(from_, "from", errors), _parse_day(to, "to", errors)
    if first and last and first > last:
        errors["from"] = "From must not be after to."
    zone = stats.report_zone(settings.report_tz)
    orders: list[PaymentOrder] = []
    links = Pager()
    buyers: dict[str, User] = {}
    if not errors:
        found = await payments_service.list_orders(
            session,
            params=_params(starting_after, ending_before),
            user_id=user_id,
            status=status or None,
            created_after=_day_start(first, zone),
            created_before=_day_end(last, zone),
        )
        orders, links = found.data, _pager(request, found, starting_after, ending_before)
        buyers = await auth_service.users_by_id(session, (order.user_id for order in orders))
    context = {
        "section": "orders",
        "errors": errors,
        "values": {"status": status, "user": user, "from": from_, "to": to},
        "statuses": ORDER_STATUSES,
        "orders": orders,
        "buyers": buyers,
        "pager": links,
    }
    return _page(request, "admin/orders.html", context, principal=principal, settings=settings)


async def _order_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: auth_service.Principal,
    order_id: str,
    *,
    errors: FieldErrors | None = None,
    refund: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    try:
        order = await payments_service.get_order(session, order_id)
    except NotFound:
        return _not_found(request, settings, principal, "order")
    made = (await refunds.list_refunds(session, params=PageParams(limit=100), order_id=order.id)).data
    context = {
        "section": "orders",
        "order": order,
        "buyer": await auth_service.get_user(session, order.user_id),
        "attempts": await payments_service.attempts_of(session, order.id),
        "refunds": made,
        "disputes": (
            await disputes.list_disputes(session, params=PageParams(limit=100), order_id=order.id)
        ).data,
        # what the refund service takes: a paid order with money left (a failed refund gave nothing back)
        "refundable": order.status in refunds.REFUNDABLE
        and order.amount_paid > sum(r.amount for r in made if r.kind == "admin" and r.status != "failed"),
        "digits": CURRENCY_MINOR_UNITS.get(order.currency, 2),
        "clawbacks": CLAWBACK_LABELS,
        "errors": errors or {},
        "refund": refund or {"clawback": "available"},
    }
    return _page(
        request, "admin/order.html", context, principal=principal, settings=settings, status_code=status_code
    )


@router.get("/orders/{order_id}")
async def order_page(
    request: Request, order_id: IdPath, principal: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _order_page(request, session, settings, principal, order_id)


async def _order_page_again(
    request: Request,
    db: Database,
    settings: Settings,
    principal: auth_service.Principal,
    order_id: str,
    **kwargs: Any,
) -> Response:
    async with db.transaction(write=False) as session:
        return await _order_page(request, session, settings, principal, order_id, **kwargs)


@router.post("/orders/{order_id}/refunds")
async def order_refund_submit(
    request: Request,
    order_id: IdPath,
    principal: GatewayFormAdmin,
    settings: SettingsDep,
    amount: Text = "",
    reason: Text = "",
    clawback: Text = "",
) -> Response:
    """A full (amount left blank) or partial refund through the gateway, as ``POST /v1/orders/{id}/refunds``."""
    db = get_database(request)
    form = {"amount": amount, "reason": reason, "clawback": clawback}
    async with db.transaction(write=False) as session:
        try:
            order = await payments_service.get_order(session, order_id)
        except NotFound:
            return _not_found(request, settings, principal, "order")
    errors: FieldErrors = {}
    units: int | None = None
    if amount.strip():
        try:
            units = parse_units(amount, CURRENCY_MINOR_UNITS.get(order.currency, 2))
        except ValueError as error:
            errors["amount"] = str(error)
    if clawback not in CLAWBACK_POLICIES:
        errors["clawback"] = "Choose what happens to the credits."
    body, problems = _first_errors(
        RefundCreate, {"amount": units, "reason": reason or None, "clawback": clawback or "available"}
    )
    for field, text in problems.items():
        errors.setdefault(field, text)
    if errors or body is None:
        return await _order_page_again(
            request, db, settings, principal, order_id, errors=errors, refund=form, status_code=400
        )
    try:
        await refunds.place_refund(
            db,
            order_id=order_id,
            amount=body.amount,
            reason=body.reason,
            clawback=body.clawback,
            gateways=_gateways(request),
            actor=principal.audit_actor,
        )
    except DomainError as error:
        errors = _error_at(error, form)
        return await _order_page_again(
            request, db, settings, principal, order_id, errors=errors, refund=form, status_code=error.status
        )
    return _done(f"/admin/orders/{order_id}", "refunded")


# ---------------------------------------------------------------- the gateway's orders


@router.get("/gateway-orders")
async def gateway_orders_page(
    request: Request,
    principal: PageAdmin,
    settings: SettingsDep,
    gateway: Annotated[str, Query(max_length=32)] = "",
    from_: FromDay = "",
    to: DayText = "",
) -> Response:
    """The gateway's own orders in a window (default: the last 24 hours) beside ours, mismatches named; the
    same comparison as ``GET /v1/admin/gateway_orders``."""
    gateways = _gateways(request)
    errors: FieldErrors = {}
    first, last = _parse_day(from_, "from", errors), _parse_day(to, "to", errors)
    zone = stats.report_zone(settings.report_tz)
    rows: list[reconcile.GatewayOrderCompared] = []
    has_more = False
    chosen: Gateway | None = None
    if gateway and gateway not in gateways:
        errors["gateway"] = "Choose an enabled gateway."
    if not errors:
        now = utcnow()
        since = _day_start(first, zone)
        until = min(end_of_last, now) if (end_of_last := _day_end(last, zone)) else None
        try:
            chosen = reconcile.pick_gateway(gateways, settings, gateway or None)
            start, end = reconcile.window(since, until, now=now)
            rows, has_more = await reconcile.compare_gateway_orders(
                get_database(request), chosen, since=start, until=end
            )
        except InvalidRequest as error:
            errors = _error_at(error, ("gateway", "from"), since="from")
        except GatewayError as error:
            errors = {"form": f"The gateway could not list its orders: {error.message}"}
    context = {
        "section": "gateway_orders",
        "errors": errors,
        "values": {"gateway": gateway or (chosen.name if chosen else ""), "from": from_, "to": to},
        "gateway_names": sorted(gateways),
        "rows": rows,
        "has_more": has_more,
    }
    return _page(request, "admin/gateway_orders.html", context, principal=principal, settings=settings)


# ---------------------------------------------------------------- disputes


@router.get("/disputes")
async def disputes_page(
    request: Request,
    principal: PageAdmin,
    session: Session,
    settings: SettingsDep,
    status: QueryText = "",
    kind: QueryText = "",
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    errors: FieldErrors = {}
    if status and status not in DISPUTE_STATUSES:
        errors["status"] = "Choose a status from the list."
    if kind and kind not in ("customer", "chargeback"):
        errors["kind"] = "Choose a kind from the list."
    found: Page[Any] = Page(data=[], has_more=False)
    if not errors:
        found = await disputes.list_disputes(
            session, params=_params(starting_after, ending_before), status=status or None, kind=kind or None
        )
    owners = await auth_service.users_by_id(session, (dispute.user_id for dispute in found.data))
    context = {
        "section": "disputes",
        "errors": errors,
        "values": {"status": status, "kind": kind},
        "statuses": DISPUTE_STATUSES,
        "disputes": found.data,
        "owners": owners,
        "pager": _pager(request, found, starting_after, ending_before),
    }
    return _page(request, "admin/disputes.html", context, principal=principal, settings=settings)


async def _dispute_page(
    request: Request,
    db: Database,
    settings: Settings,
    principal: auth_service.Principal,
    dispute_id: str,
    *,
    errors: FieldErrors | None = None,
    reply: str = "",
    resolve: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    """The dispute, its thread, its order, and the gateway's live view (asked outside any transaction)."""
    async with db.transaction(write=False) as session:
        try:
            dispute = await disputes.get_dispute(session, dispute_id)
        except NotFound:
            return _not_found(request, settings, principal, "dispute")
        order = await payments_service.get_order(session, dispute.order_id)
        owner = await auth_service.get_user(session, dispute.user_id)
        thread = await disputes.messages_of(session, dispute.id)
        attempts = await payments_service.attempts_of(session, dispute.order_id)
        authors = {
            author_id: await auth_service.get_user(session, author_id)
            for author_id in {m.author_id for m in thread if m.author_id}
        }
    views = await disputes.gateway_views(attempts, _gateways(request))
    context = {
        "section": "disputes",
        "dispute": dispute,
        "order": order,
        "owner": owner,
        "thread": thread,
        "authors": authors,
        "views": views,
        "open": dispute.status not in disputes.CLOSED,
        "resolvable": dispute.kind == "customer" and dispute.status not in disputes.CLOSED,
        "resolutions": RESOLUTION_LABELS,
        "clawbacks": CLAWBACK_LABELS,
        "digits": CURRENCY_MINOR_UNITS.get(order.currency, 2),
        "errors": errors or {},
        "reply": reply,
        "resolve": resolve or {"clawback": "available"},
    }
    return _page(
        request,
        "admin/dispute.html",
        context,
        principal=principal,
        settings=settings,
        status_code=status_code,
    )


@router.get("/disputes/{dispute_id}")
async def dispute_page(
    request: Request, dispute_id: IdPath, principal: PageAdmin, settings: SettingsDep
) -> Response:
    return await _dispute_page(request, get_database(request), settings, principal, dispute_id)


@router.post("/disputes/{dispute_id}/messages")
async def dispute_reply_submit(
    request: Request,
    dispute_id: IdPath,
    principal: GatewayFormAdmin,
    settings: SettingsDep,
    message: Text = "",
) -> Response:
    """An admin's answer on the thread (the customer is notified), as ``POST /v1/disputes/{id}/messages``."""
    db = get_database(request)
    errors: FieldErrors = {}
    status_code = 400
    body, problems = _first_errors(DisputeMessageCreate, {"message": message})
    if not message.strip():
        errors["message"] = "Write a message."
    for field, text in problems.items():
        errors.setdefault(field, text)
    if not errors and body is not None:
        try:
            async with db.transaction() as session:
                await disputes.add_message(
                    session,
                    dispute_id=dispute_id,
                    body=body.message,
                    author_id=principal.user.id,
                    author_role="admin",
                    now=utcnow(),
                    actor=principal.audit_actor,
                )
        except DomainError as error:
            errors = _error_at(error, ("message",))
            status_code = error.status
    if errors:
        return await _dispute_page(
            request,
            db,
            settings,
            principal,
            dispute_id,
            errors=errors,
            reply=message,
            status_code=status_code,
        )
    return _done(f"/admin/disputes/{dispute_id}", "replied")


@router.post("/disputes/{dispute_id}/resolve")
async def dispute_resolve_submit(
    request: Request,
    dispute_id: IdPath,
    principal: GatewayFormAdmin,
    settings: SettingsDep,
    resolution: Text = "",
    note: Text = "",
    credits: Text = "",
    refund_amount: Text = "",
    clawback: Text = "available",
    override: Text = "",
    override_reason: Text = "",
) -> Response:
    """Resolve once, as ``POST /v1/disputes/{id}/resolve``: grant credits (the gateway must show a captured
    payment, or an override with its reason), refund (sent to the gateway after the commit) or reject."""
    db = get_database(request)
    form = {
        "resolution": resolution,
        "note": note,
        "credits": credits,
        "refund_amount": refund_amount,
        "clawback": clawback,
        "override": override,
        "override_reason": override_reason,
    }
    errors: FieldErrors = {}
    async with db.transaction(write=False) as session:
        try:
            dispute = await disputes.get_dispute(session, dispute_id)
        except NotFound:
            return _not_found(request, settings, principal, "dispute")
        order = await payments_service.get_order(session, dispute.order_id)
        attempts = await payments_service.attempts_of(session, dispute.order_id)
    amount: int | None = None
    amount_field = "credits" if resolution == "grant_credits" else "refund_amount"
    raw = credits if resolution == "grant_credits" else refund_amount if resolution == "refund" else ""
    if raw.strip():
        try:
            digits = (
                settings.credit_scale
                if resolution == "grant_credits"
                else CURRENCY_MINOR_UNITS.get(order.currency, 2)
            )
            amount = parse_units(raw, digits)
        except ValueError as error:
            errors[amount_field] = str(error)
    if not note.strip():
        errors["note"] = "Write a note for the customer."
    body, problems = _first_errors(
        DisputeResolve,
        {
            "resolution": resolution,
            "note": note,
            "amount": amount,
            "clawback": clawback or "available",
            "override": override == "true",
            "override_reason": override_reason or None,
        },
    )
    for field, text in problems.items():
        errors.setdefault(amount_field if field == "amount" else field, text)
    if errors or body is None:
        return await _dispute_page(
            request, db, settings, principal, dispute_id, errors=errors, resolve=form, status_code=400
        )
    gateways = _gateways(request)
    views = await disputes.gateway_views(attempts, gateways) if body.resolution == "grant_credits" else []
    decision = disputes.Resolution(
        action=body.resolution,
        note=body.note,
        amount=body.amount,
        override=body.override,
        override_reason=body.override_reason,
        clawback=body.clawback,
    )
    try:
        async with db.transaction() as session:
            resolved = await disputes.resolve_dispute(
                session,
                dispute_id=dispute_id,
                resolution=decision,
                views=views,
                resolver_id=principal.user.id,
                actor=principal.audit_actor,
                now=utcnow(),
            )
            refund_id = resolved.refund_id if body.resolution == "refund" else None
    except DomainError as error:
        return await _dispute_page(
            request,
            db,
            settings,
            principal,
            dispute_id,
            errors=_error_at(error, form, amount=amount_field),
            resolve=form,
            status_code=error.status,
        )
    if refund_id is not None:  # committed with the resolution; sending again is harmless (its id is the key)
        await refunds.send_refund(db, refund_id=refund_id, gateways=gateways)
    return _done(f"/admin/disputes/{dispute_id}", "resolved")


# ---------------------------------------------------------------- audit log


@router.get("/audit")
async def audit_page(
    request: Request,
    principal: PageAdmin,
    session: Session,
    settings: SettingsDep,
    action: QueryText = "",
    object_id: QueryText = "",
    actor: QueryText = "",
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    found = await audit_service.list_entries(
        session,
        params=_params(starting_after, ending_before),
        action=action.strip() or None,
        object_id=object_id.strip() or None,
        actor_user_id=actor.strip() or None,
    )
    entries = [
        {
            "entry": entry,
            "before": json.dumps(entry.before, sort_keys=True, ensure_ascii=False)
            if entry.before is not None
            else "",
            "after": json.dumps(entry.after, sort_keys=True, ensure_ascii=False)
            if entry.after is not None
            else "",
        }
        for entry in found.data
    ]
    context = {
        "section": "audit",
        "values": {"action": action, "object_id": object_id, "actor": actor},
        "entries": entries,
        "pager": _pager(request, found, starting_after, ending_before),
    }
    return _page(request, "admin/audit.html", context, principal=principal, settings=settings)
