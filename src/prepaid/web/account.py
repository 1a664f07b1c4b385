"""The signed-in person's own pages under ``/account``: wallets (balance, held, available, the paid and
promotional split, the low-balance threshold), spending per day per meter, transactions, orders (retry a
failed one, raise a dispute), disputes and their threads, API keys and notifications.

Every page reads through the services, for the signed-in user only: another user's order, dispute, wallet or
key answers 404 as one that does not exist (admins included: this is their own account, the admin panel is
``/admin``). Forms post here with the session's CSRF token and come back with errors next to their fields. The
live parts (the balance over ``/v1/stream``) are ``static/account.js``.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Protocol, TypeVar, get_args

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth import service as auth_service
from prepaid.auth.schemas import ApiKeyCreate
from prepaid.db import utcnow
from prepaid.deps import ReadSession, Session, SettingsDep, get_database
from prepaid.errors import DomainError, NotFound
from prepaid.ledger import access
from prepaid.ledger import service as ledger
from prepaid.ledger.models import Account
from prepaid.ledger.schemas import Kind, Limit, TransactionRead, WalletRead
from prepaid.metering import service as metering
from prepaid.notify import service as notify_service
from prepaid.notify.email import format_credits, render_inapp
from prepaid.notify.models import Notification
from prepaid.observability import log
from prepaid.pagination import PageParams
from prepaid.payments import checkout_pages, disputes
from prepaid.payments import service as payments
from prepaid.payments.models import PaymentDispute, PaymentOrder
from prepaid.payments.schemas import DisputeCreate, DisputeMessageCreate
from prepaid.settings import Settings
from prepaid.web.charts import legend, stacked_bars
from prepaid.web.render import (
    FieldErrors,
    FormText,
    FormUser,
    PageInterrupt,
    Pager,
    PageUser,
    UrlId,
    domain_errors,
    message,
    page_params,
    pager,
    parse_amount,
    refused,
    render,
    session_csrf_ok,
    signed_in,
    to_login,
    validation_errors,
)

router = APIRouter(include_in_schema=False)
IdPath = Annotated[UrlId, Path()]
Cursor = Annotated[UrlId | None, Query()]
# Form fields without FastAPI's length limit (which answers JSON): the schemas bound them, next to the field.
FieldText = Annotated[str, Form()]
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9998, 12, 31)
CHART_DAYS = 30
PAGE_SIZE = 20
KINDS: tuple[str, ...] = get_args(Kind)
KIND_FILTER: TypeAdapter[Kind | None] = TypeAdapter(Kind | None)
THRESHOLD: TypeAdapter[Limit | None] = TypeAdapter(Limit | None)
DISPUTE_CATEGORIES = (
    ("not_credited", "Paid but the credits did not arrive"),
    ("wrong_amount", "Charged the wrong amount"),
    ("duplicate_charge", "Charged twice"),
    ("refund_request", "I would like a refund"),
    ("other", "Something else"),
)
KEY_SCOPES = (
    ("usage:write", "usage:write (record usage, spend credits)"),
    ("balance:read", "balance:read (read balances and transactions)"),
)
TABS = (
    ("/account", "Wallets"),
    ("/account/transactions", "Transactions"),
    ("/account/orders", "Orders"),
    ("/account/disputes", "Disputes"),
    ("/account/keys", "API keys"),
    ("/account/notifications", "Notifications"),
)


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    *,
    principal: auth_service.Principal,
    settings: Settings,
    tab: str,
    status_code: int = 200,
) -> HTMLResponse:
    response = render(
        request,
        f"account/{name}",
        {"tabs": TABS, "tab": tab, **context},
        settings=settings,
        principal=principal,
        status_code=status_code,
    )
    response.headers["Cache-Control"] = "no-store"  # balances, and once a key's secret
    return response


def _not_found(
    request: Request, settings: Settings, principal: auth_service.Principal, text: str
) -> HTMLResponse:
    return message(request, settings, heading="Not found", text=text, status_code=404, principal=principal)


# ---------------------------------------------------------------- wallets and spending


@dataclass(frozen=True)
class SpendingChart:
    svg: Any
    legend: Any
    total: int


async def _wallets(session: AsyncSession, user_id: str) -> list[WalletRead]:
    """The user's wallets as ``GET /v1/wallets`` answers them, the default one first."""
    found = await ledger.list_wallets(session, user_id=user_id, params=PageParams(limit=100))
    parts = await ledger.lot_parts(session, wallet_ids=[wallet.id for wallet in found.data])
    reads = [WalletRead.of(wallet, parts[wallet.id]) for wallet in found.data]
    return sorted(reads, key=lambda wallet: (not wallet.is_default, wallet.created_at, wallet.id))


async def _spending(session: AsyncSession, user_id: str, settings: Settings) -> SpendingChart:
    """Credits spent per day per meter over the last ``CHART_DAYS`` days (days in ``PREPAID_REPORT_TZ``)."""
    zone = metering.report_zone(settings)
    today = utcnow().astimezone(zone).date()
    first = today - timedelta(days=CHART_DAYS - 1)
    since = datetime.combine(first, time.min, tzinfo=zone)
    rows = await metering.summarize_usage(session, zone=zone, user_id=user_id, since=since)
    days = [first + timedelta(days=offset) for offset in range(CHART_DAYS)]
    index = {day: position for position, day in enumerate(days)}
    series: dict[str, list[int]] = {}
    for row in sorted(rows, key=lambda row: row.meter):
        if row.day in index:
            series.setdefault(row.meter, [0] * CHART_DAYS)[index[row.day]] += row.cost
    scale = settings.credit_scale
    svg = stacked_bars(
        [day.strftime("%b %d") for day in days],
        series,
        title=f"Credits spent per day per meter, last {CHART_DAYS} days",
        format_value=lambda value: format_credits(value, scale),
    )
    total = sum(sum(values) for values in series.values())
    return SpendingChart(svg=svg, legend=legend(list(series)), total=total)


async def _overview(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: auth_service.Principal,
    *,
    threshold_errors: dict[str, str] | None = None,
    threshold_values: dict[str, str] | None = None,
    saved: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = {
        "wallets": await _wallets(session, principal.user.id),
        "chart": await _spending(session, principal.user.id, settings),
        "threshold_errors": threshold_errors or {},
        "threshold_values": threshold_values or {},
        "saved": saved,
        "chart_days": CHART_DAYS,
    }
    return _page(
        request,
        "overview.html",
        context,
        principal=principal,
        settings=settings,
        tab="/account",
        status_code=status_code,
    )


@router.get("/account")
async def account_page(
    request: Request,
    principal: PageUser,
    session: Session,
    settings: SettingsDep,
    saved: str = "",
) -> Response:
    return await _overview(request, session, settings, principal, saved=saved)


class _Owned(Protocol):
    @property
    def user_id(self) -> str | None: ...


OwnedT = TypeVar("OwnedT", bound=_Owned)


async def _owned(
    principal: auth_service.Principal, find: Awaitable[OwnedT | None], *, missing: str, param: str
) -> OwnedT:
    """What ``find`` reads, when it is the signed-in user's own: another user's (an admin's reach included) or
    none is NotFound with the ``missing`` message, as one that does not exist."""
    try:
        found = await find
    except NotFound:
        found = None
    if found is None or found.user_id != principal.user.id:
        raise NotFound(missing, param=param)
    return found


async def _own_wallet(session: AsyncSession, principal: auth_service.Principal, wallet_id: str) -> Account:
    found = access.wallet(session, principal, wallet_id, access.READ)
    return await _owned(principal, found, missing=f"No wallet {wallet_id}.", param="wallet_id")


@router.post("/account/wallets/{wallet_id}/threshold")
async def threshold_submit(
    request: Request,
    wallet_id: IdPath,
    principal: FormUser,
    session: Session,
    settings: SettingsDep,
    low_balance_threshold: FieldText = "",
) -> Response:
    """The wallet's low-balance alert: a whole number of credits in the smallest unit, or blank for none."""
    try:
        wallet = await _own_wallet(session, principal, wallet_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    text = low_balance_threshold.strip()
    try:
        # Typed in credits as people read them (``12.5``), stored in the asset's smallest unit.
        value = THRESHOLD.validate_python(parse_amount(text, settings.credit_scale) if text else None)
    except (ValueError, ValidationError):
        return await _overview(
            request,
            session,
            settings,
            principal,
            threshold_errors={wallet.id: "Enter a number of credits, 0 or more, or leave it blank."},
            threshold_values={wallet.id: low_balance_threshold[:100]},
            status_code=400,
        )
    try:
        async with session.begin_nested():  # a refusal is undone alone; the page is then read as it stands
            await ledger.update_wallet(
                session,
                wallet_id=wallet.id,
                as_admin=False,
                actor=None,
                low_balance_threshold=value,
                clear_low_balance_threshold=value is None,
            )
    except DomainError as error:
        return await _overview(
            request,
            session,
            settings,
            principal,
            threshold_errors={wallet.id: error.message},
            threshold_values={wallet.id: low_balance_threshold},
            status_code=error.status,
        )
    return RedirectResponse(f"/account?saved={wallet.id}#wallet-{wallet.id}", status_code=303)


# ---------------------------------------------------------------- transactions


class TransactionFilters(BaseModel):
    wallet: str
    kind: str
    since: str
    until: str


def _day_start(text: str, field: str, errors: FieldErrors, zone: Any) -> datetime | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        errors[field] = "Enter a date as YYYY-MM-DD."
        return None
    if not FIRST_DAY <= day <= LAST_DAY:  # the day after, in any zone, must still be a datetime
        errors[field] = f"Enter a day from {FIRST_DAY} to {LAST_DAY}."
        return None
    return datetime.combine(day, time.min, tzinfo=zone)


@router.get("/account/transactions")
async def transactions_page(
    request: Request,
    principal: PageUser,
    session: Session,
    settings: SettingsDep,
    wallet: Annotated[UrlId | None, Query()] = None,
    kind: str = "",
    since: str = "",
    until: str = "",
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    """A wallet's transactions, newest first, by kind and by day (``since`` and ``until`` are days, both
    included, in ``PREPAID_REPORT_TZ``), with the API's cursors for paging."""
    wallets = await _wallets(session, principal.user.id)
    chosen_id = wallet or (wallets[0].id if wallets else "")
    try:
        chosen = await _own_wallet(session, principal, chosen_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    errors: FieldErrors = {}
    try:
        kind_value = KIND_FILTER.validate_python(kind or None)
    except ValidationError:
        errors["kind"] = "Choose one of the kinds in the list."
        kind_value = None
    zone = metering.report_zone(settings)
    after = _day_start(since, "since", errors, zone)
    before = _day_start(until, "until", errors, zone)
    if before is not None:
        before += timedelta(days=1)  # the whole of the last day
    if after is not None and before is not None and before <= after:
        errors["until"] = "The last day cannot come before the first."
    filters = TransactionFilters(wallet=chosen.id, kind=kind[:32], since=since[:32], until=until[:32])
    rows: list[dict[str, Any]] = []
    links = Pager()
    if not errors:
        params = page_params(starting_after, ending_before, PAGE_SIZE)
        found = await ledger.list_transactions(
            session, wallet=chosen, params=params, kind=kind_value, created_after=after, created_before=before
        )
        postings = await ledger.postings_by_transaction(
            session, transaction_ids=[row.id for row in found.data]
        )
        for transaction in found.data:
            read = TransactionRead.of(transaction, postings[transaction.id])
            change = sum(p.amount for p in read.postings if p.account_id == chosen.id)
            held = sum(p.amount for p in read.postings if p.account_id == chosen.hold_account_id)
            rows.append({"read": read, "change": change, "held": held})
        links = pager(filters.model_dump(), found, params)
    context = {
        "wallets": wallets,
        "wallet": chosen,
        "filters": filters,
        "kinds": [("", "Any kind"), *((name, name.capitalize()) for name in KINDS)],
        "rows": rows,
        "pager": links,
        "errors": errors,
        "report_tz": settings.report_tz,
    }
    return _page(
        request,
        "transactions.html",
        context,
        principal=principal,
        settings=settings,
        tab="/account/transactions",
        status_code=400 if errors else 200,
    )


# ---------------------------------------------------------------- orders


async def _own_order(session: AsyncSession, principal: auth_service.Principal, order_id: str) -> PaymentOrder:
    found = payments.get_order(session, order_id)
    return await _owned(principal, found, missing=f"No order {order_id}.", param="order_id")


@router.get("/account/orders")
async def orders_page(
    request: Request,
    principal: PageUser,
    session: Session,
    settings: SettingsDep,
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    params = page_params(starting_after, ending_before, PAGE_SIZE)
    found = await payments.list_orders(session, params=params, user_id=principal.user.id)
    context = {
        "orders": found.data,
        "pager": pager({}, found, params),
        "retryable": payments.RETRYABLE,
        "disputable": disputes.DISPUTABLE_ORDER,
        "now": utcnow(),
    }
    return _page(
        request, "orders.html", context, principal=principal, settings=settings, tab="/account/orders"
    )


async def _order_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: auth_service.Principal,
    order: PaymentOrder,
    *,
    errors: FieldErrors | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    found = await disputes.list_disputes(
        session, params=PageParams(limit=100), user_id=principal.user.id, order_id=order.id
    )
    context = {
        "order": order,
        "attempts": await payments.attempts_of(session, order.id),
        "order_disputes": found.data,
        "open_dispute": next((d for d in found.data if d.kind == "customer" and d.status == "open"), None),
        "can_dispute": order.status in disputes.DISPUTABLE_ORDER,
        "retryable": order.status in payments.RETRYABLE,
        "categories": DISPUTE_CATEGORIES,
        "errors": errors or {},
        "values": values or {},
    }
    return _page(
        request,
        "order.html",
        context,
        principal=principal,
        settings=settings,
        tab="/account/orders",
        status_code=status_code,
    )


@router.get("/account/orders/{order_id}")
async def order_page(
    request: Request, order_id: IdPath, principal: PageUser, session: Session, settings: SettingsDep
) -> Response:
    try:
        order = await _own_order(session, principal, order_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    return await _order_page(request, session, settings, principal, order)


async def _form_user_read(
    request: Request, session: ReadSession, settings: SettingsDep, csrf_token: FormText = ""
) -> auth_service.Principal:
    """A signed-in user's form post, resolved in a read-only transaction: the retry calls the gateway and
    commits its own short transactions, so no write lock may be held around it."""
    principal = await signed_in(request, session, settings)
    if principal is None:
        raise PageInterrupt(to_login(request))
    if not session_csrf_ok(principal, csrf_token):
        raise PageInterrupt(refused(request, settings, principal))
    return principal


@router.post("/account/orders/{order_id}/retry")
async def retry_submit(
    request: Request,
    order_id: IdPath,
    principal: Annotated[auth_service.Principal, Depends(_form_user_read)],
    session: ReadSession,
    settings: SettingsDep,
) -> Response:
    """A failed or expired order tried again (a new attempt at the same quote), then the gateway's checkout."""
    try:
        order = await _own_order(session, principal, order_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    try:
        await request.app.state.rate_limiter.hit("order_create", principal.caller_id)
        retried = await payments.retry_order(
            get_database(request),
            order_id=order.id,
            gateway_name=None,
            gateways=getattr(request.app.state, "gateways", {}),
            settings=settings,
        )
    except DomainError as error:
        return message(
            request,
            settings,
            heading="Cannot try again",
            text=error.message,
            status_code=error.status,
            link=f"/account/orders/{order.id}",
            link_text="Back to the order",
            principal=principal,
        )
    log.info("order_retried_from_account", order_id=retried.id)
    return RedirectResponse(
        checkout_pages.checkout_url(settings, retried.id, retried.expires_at), status_code=303
    )


@router.post("/account/orders/{order_id}/disputes")
async def dispute_submit(
    request: Request,
    order_id: IdPath,
    principal: FormUser,
    session: Session,
    settings: SettingsDep,
    category: FieldText = "",
    message_text: Annotated[str, Form(alias="message")] = "",
) -> Response:
    """Raise a dispute on one of the user's orders, with its first message."""
    try:
        order = await _own_order(session, principal, order_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    values = {"category": category, "message": message_text}
    try:
        body = DisputeCreate(order=order.id, category=category, message=message_text)
        async with session.begin_nested():
            dispute = await disputes.open_dispute(
                session,
                order_id=order.id,
                category=body.category,
                message=body.message,
                author_id=principal.user.id,
                author_role="customer",
                owner_id=principal.user.id,
                now=utcnow(),
            )
    except ValidationError as error:
        return await _order_page(
            request,
            session,
            settings,
            principal,
            order,
            errors=validation_errors(error),
            values=values,
            status_code=400,
        )
    except DomainError as error:
        order = await _own_order(session, principal, order_id)
        errors = domain_errors(error)
        if "order" in errors:
            errors = {"form": errors["order"]}
        return await _order_page(
            request,
            session,
            settings,
            principal,
            order,
            errors=errors,
            values=values,
            status_code=error.status,
        )
    return RedirectResponse(f"/account/disputes/{dispute.id}", status_code=303)


# ---------------------------------------------------------------- disputes


async def _own_dispute(
    session: AsyncSession, principal: auth_service.Principal, dispute_id: str
) -> PaymentDispute:
    found = disputes.get_dispute(session, dispute_id)
    return await _owned(principal, found, missing=f"No dispute {dispute_id}.", param="dispute_id")


@router.get("/account/disputes")
async def disputes_page(
    request: Request,
    principal: PageUser,
    session: Session,
    settings: SettingsDep,
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    params = page_params(starting_after, ending_before, PAGE_SIZE)
    found = await disputes.list_disputes(session, params=params, user_id=principal.user.id)
    context = {
        "disputes": found.data,
        "pager": pager({}, found, params),
        "categories": dict(DISPUTE_CATEGORIES),
    }
    return _page(
        request, "disputes.html", context, principal=principal, settings=settings, tab="/account/disputes"
    )


async def _dispute_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: auth_service.Principal,
    dispute: PaymentDispute,
    *,
    errors: FieldErrors | None = None,
    value: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    context = {
        "dispute": dispute,
        "thread": await disputes.messages_of(session, dispute.id),
        "closed": dispute.status in disputes.CLOSED,
        "categories": dict(DISPUTE_CATEGORIES),
        "errors": errors or {},
        "value": value,
    }
    return _page(
        request,
        "dispute.html",
        context,
        principal=principal,
        settings=settings,
        tab="/account/disputes",
        status_code=status_code,
    )


@router.get("/account/disputes/{dispute_id}")
async def dispute_page(
    request: Request, dispute_id: IdPath, principal: PageUser, session: Session, settings: SettingsDep
) -> Response:
    try:
        dispute = await _own_dispute(session, principal, dispute_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    return await _dispute_page(request, session, settings, principal, dispute)


@router.post("/account/disputes/{dispute_id}/messages")
async def dispute_message_submit(
    request: Request,
    dispute_id: IdPath,
    principal: FormUser,
    session: Session,
    settings: SettingsDep,
    message_text: Annotated[str, Form(alias="message")] = "",
) -> Response:
    try:
        dispute = await _own_dispute(session, principal, dispute_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    try:
        body = DisputeMessageCreate(message=message_text)
        async with session.begin_nested():
            await disputes.add_message(
                session,
                dispute_id=dispute.id,
                body=body.message,
                author_id=principal.user.id,
                author_role="customer",
                now=utcnow(),
            )
    except ValidationError as error:
        errors = validation_errors(error)
        return await _dispute_page(
            request, session, settings, principal, dispute, errors=errors, value=message_text, status_code=400
        )
    except DomainError as error:
        dispute = await _own_dispute(session, principal, dispute_id)
        errors = {"message": error.message}
        return await _dispute_page(
            request,
            session,
            settings,
            principal,
            dispute,
            errors=errors,
            value=message_text,
            status_code=error.status,
        )
    return RedirectResponse(f"/account/disputes/{dispute.id}#thread-end", status_code=303)


# ---------------------------------------------------------------- API keys


async def _keys_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    principal: auth_service.Principal,
    *,
    created: tuple[Any, str] | None = None,
    errors: FieldErrors | None = None,
    values: dict[str, Any] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    context = {
        "keys": await auth_service.own_api_keys(session, user_id=principal.user.id),
        "created": created,
        "scopes": KEY_SCOPES,
        "errors": errors or {},
        "values": values or {"name": "", "scopes": ["usage:write", "balance:read"]},
    }
    return _page(
        request,
        "keys.html",
        context,
        principal=principal,
        settings=settings,
        tab="/account/keys",
        status_code=status_code,
    )


@router.get("/account/keys")
async def keys_page(
    request: Request, principal: PageUser, session: Session, settings: SettingsDep
) -> Response:
    return await _keys_page(request, session, settings, principal)


@router.post("/account/keys")
async def key_create_submit(
    request: Request,
    principal: FormUser,
    session: Session,
    settings: SettingsDep,
    name: FieldText = "",
    scopes: Annotated[list[str] | None, Form()] = None,
) -> Response:
    """A new key for the user's apps; its secret is shown on this answer only (only its hash is kept)."""
    chosen = scopes or []
    values = {"name": name, "scopes": chosen}
    try:
        body = ApiKeyCreate(name=name.strip(), scopes=chosen)
        if "\x00" in body.name:
            return await _keys_page(
                request,
                session,
                settings,
                principal,
                errors={"name": "Remove the control characters from the name."},
                values=values,
                status_code=400,
            )
        if not set(body.scopes) <= auth_service.USER_SCOPES:
            raise ValueError
        async with session.begin_nested():
            key, secret = await auth_service.create_api_key(
                session, actor=principal, name=body.name, scopes=list(body.scopes), server=False
            )
    except (ValidationError, ValueError) as error:
        errors = validation_errors(error) if isinstance(error, ValidationError) else {}
        if not chosen or not errors:
            errors.setdefault("scopes", "Choose at least one of the scopes listed.")
        return await _keys_page(
            request, session, settings, principal, errors=errors, values=values, status_code=400
        )
    except DomainError as error:
        return await _keys_page(
            request,
            session,
            settings,
            principal,
            errors=domain_errors(error),
            values=values,
            status_code=error.status,
        )
    return await _keys_page(request, session, settings, principal, created=(key, secret), status_code=201)


@router.post("/account/keys/{key_id}/revoke")
async def key_revoke_submit(
    request: Request, key_id: IdPath, principal: FormUser, session: Session, settings: SettingsDep
) -> Response:
    if not await auth_service.own_api_keys(session, user_id=principal.user.id, key_id=key_id):
        return _not_found(request, settings, principal, f"No API key {key_id}.")
    await auth_service.revoke_api_key(session, actor=principal, key_id=key_id)
    return RedirectResponse("/account/keys", status_code=303)


# ---------------------------------------------------------------- notifications


def _notification(notification: Notification, settings: Settings) -> dict[str, Any]:
    try:
        title, body = render_inapp(kind=notification.kind, data=notification.data, settings=settings)
    except Exception as error:  # a notification its template cannot show is still listed
        log.warning("notification_render_failed", notification_id=notification.id, error=type(error).__name__)
        title, body = notification.kind.replace("_", " ").capitalize(), ""
    return {
        "id": notification.id,
        "title": title,
        "body": body,
        "read": notification.read_at is not None,
        "created_at": notification.created_at,
    }


@router.get("/account/notifications")
async def notifications_page(
    request: Request,
    principal: PageUser,
    session: Session,
    settings: SettingsDep,
    unread: str = "",
    starting_after: Cursor = None,
    ending_before: Cursor = None,
) -> Response:
    unread_only = unread.lower() in ("true", "1", "on", "yes")
    params = page_params(starting_after, ending_before, PAGE_SIZE)
    found = await notify_service.list_notifications(
        session, user_id=principal.user.id, unread=True if unread_only else None, page=params
    )
    context = {
        "notifications": [_notification(n, settings) for n in found.data],
        "pager": pager({"unread": "true"} if unread_only else {}, found, params),
        "unread": unread_only,
    }
    return _page(
        request,
        "notifications.html",
        context,
        principal=principal,
        settings=settings,
        tab="/account/notifications",
    )


@router.post("/account/notifications/{notification_id}/read")
async def notification_read_submit(
    request: Request, notification_id: IdPath, principal: FormUser, session: Session, settings: SettingsDep
) -> Response:
    try:
        await notify_service.mark_read(session, user_id=principal.user.id, notification_id=notification_id)
    except NotFound as error:
        return _not_found(request, settings, principal, error.message)
    return RedirectResponse("/account/notifications", status_code=303)
