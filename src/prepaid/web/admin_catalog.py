"""The admin panel's catalog pages: plans, unit prices, meters and model prices, discount slabs, offers, coupons
and their allotment, and outgoing webhook endpoints with their deliveries.

Every form posts to a page route that reads the fields into the same Pydantic input schema the ``/v1`` route
takes and calls the same service function, so the rules are one; the catalog's services record each change in
the audit log themselves, and the webhook endpoint writes go through the ``/v1`` handlers (which record theirs).
A refused form is shown again with each error next to its field, and the change runs in a savepoint, so a
refusal keeps nothing. Amounts are typed as people read them (``499.00`` rupees, ``1.5`` credits) and turned
exactly into integer minor units.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from prepaid.auth import service as auth_service
from prepaid.catalog import service
from prepaid.catalog.schemas import (
    CouponCreate,
    CouponRead,
    CouponUpdate,
    MeterCreate,
    MeterUpdate,
    OfferCreate,
    OfferUpdate,
    PlanCreate,
    PlanUpdate,
    SlabsReplace,
    UnitPricesReplace,
    percent_text,
)
from prepaid.db import utcnow
from prepaid.deps import Session, SettingsDep
from prepaid.errors import DomainError
from prepaid.money import CURRENCY_MINOR_UNITS
from prepaid.notify import apps_api, webhooks_out
from prepaid.notify.schemas import WebhookEndpointCreate
from prepaid.pagination import PageParams
from prepaid.settings import Settings
from prepaid.web.render import (
    FieldErrors,
    FormAdmin,
    PageAdmin,
    UrlId,
    domain_errors,
    message,
    parse_amount,
    render,
)

router = APIRouter(include_in_schema=False)
CURRENCIES = tuple(CURRENCY_MINOR_UNITS)
BLANK_SLAB_ROWS = 3
LIST_LIMIT = 50
Ref = Annotated[UrlId, Path()]
Cursor = Annotated[UrlId | None, Query()]
DONE = {
    "created": "Created.",
    "saved": "Saved.",
    "archived": "Archived.",
    "allotted": "Allotted.",
    "withdrawn": "Withdrawn.",
    "deleted": "Deleted.",
    "redelivered": "Queued to be sent again.",
}
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# ---------------------------------------------------------------- reading forms


class FormReader:
    """A posted form's fields as the schemas want them; amounts it cannot read are errors on their field."""

    def __init__(self, form: FormData, credit_scale: int) -> None:
        self.form = form
        self.scale = credit_scale
        self.errors: FieldErrors = {}

    def text(self, name: str) -> str:
        """The field's text, trimmed; a NUL character (which no database column takes) is an error on it."""
        value = self.form.get(name)
        if not isinstance(value, str):
            return ""
        if "\x00" in value:
            self.errors.setdefault(name, "Remove the control characters from this field.")
            return ""
        return value.strip()

    def optional(self, name: str) -> str | None:
        return self.text(name) or None

    def checked(self, name: str) -> bool:
        return name in self.form

    def values(self, name: str) -> list[str]:
        found = [v.strip() for v in self.form.getlist(name) if isinstance(v, str) and v.strip()]
        if any("\x00" in v for v in found):
            self.errors.setdefault(name, "Remove the control characters from this field.")
            return []
        return found

    def amount(self, name: str, digits: int) -> int | None:
        """Decimal text (``1,299.50``) as whole units of 10^-digits; blank is None."""
        raw = self.optional(name)
        if raw is None:
            return None
        try:
            return parse_amount(raw, digits)
        except ValueError as error:
            self.errors.setdefault(name, str(error))
            return None

    def money(self, name: str, currency: str) -> int | None:
        return self.amount(name, CURRENCY_MINOR_UNITS[currency])

    def credits(self, name: str) -> int | None:
        return self.amount(name, self.scale)

    def integer(self, name: str) -> int | None:
        return self.amount(name, 0)

    def timestamp(self, name: str) -> str | None:
        """A ``datetime-local`` field, read as UTC (the forms say so); the schema checks it."""
        raw = self.optional(name)
        if raw is None:
            return None
        return raw if raw.endswith("Z") or "+" in raw[10:] else f"{raw}Z"

    def currency_amounts(self, prefix: str) -> dict[str, int]:
        found = {c: self.money(f"{prefix}.{c}", c) for c in CURRENCIES}
        return {c: amount for c, amount in found.items() if amount is not None}


def loc_errors(error: ValidationError, rename: Callable[[str], str] = lambda key: key) -> FieldErrors:
    """Pydantic's errors keyed by their full location (``prices.INR``, ``slabs.2.percent``)."""
    errors: FieldErrors = {}
    for item in error.errors():
        key = rename(".".join(str(part) for part in item["loc"]) or "form")
        text = item["msg"].removeprefix("Value error, ")
        errors.setdefault(key, text[:1].upper() + text[1:])
    return errors


def _plan_codes_key(key: str) -> str:
    return "plan_codes" if key.startswith("plan_codes") else key


def validated(
    model: type[M], data: dict[str, Any], reader: FormReader, rename: Callable[[str], str] = _plan_codes_key
) -> M | None:
    """The body as the API would read it, or None with the errors in ``reader.errors``."""
    try:
        body = model.model_validate(data)
    except ValidationError as error:
        for key, text in loc_errors(error, rename).items():
            reader.errors.setdefault(key, text)
        return None
    return None if reader.errors else body


class Refusal(dict[str, str]):
    """Field errors from a refused change, and the HTTP status of the page that shows them."""

    def __init__(self, errors: FieldErrors, status: int) -> None:
        super().__init__(errors)
        self.status = status


def status_of(errors: FieldErrors | None) -> int:
    """200 without errors; a refusal's own status; 400 for a form the schema refused."""
    return getattr(errors, "status", 400) if errors else 200


def _whole_form(_key: str) -> str:
    """An action's error (archive, withdraw, redeliver, delete) is shown at the top of the page."""
    return "form"


async def attempt(
    session: AsyncSession, action: Callable[[], Awaitable[T]], rename: Callable[[str], str] = _plan_codes_key
) -> T | Refusal:
    """Run a change in a savepoint: its result, or the domain error as field errors with nothing kept."""
    try:
        async with session.begin_nested():
            return await action()
    except DomainError as error:
        errors = {rename(key): text for key, text in domain_errors(error).items()}
        return Refusal(errors, error.status)


def _back(path: str, done: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?done={done}", status_code=303)


def _page(
    request: Request,
    name: str,
    context: dict[str, Any],
    settings: Settings,
    admin: Any,
    status_code: int = 200,
) -> HTMLResponse:
    done = request.query_params.get("done", "")
    base = {"currencies": CURRENCIES, "notice": DONE.get(done, ""), "percent_text": percent_text}
    return render(
        request, name, {**base, **context}, settings=settings, principal=admin, status_code=status_code
    )


def _units_text(amount: int | None, digits: int) -> str:
    """Minor units as the text a form field shows (``49900`` -> ``499.00``); None is blank."""
    if amount is None:
        return ""
    return f"{Decimal(amount).scaleb(-digits):f}"


def _local(value: Any) -> str:
    """A UTC time as a ``datetime-local`` value."""
    return value.strftime("%Y-%m-%dT%H:%M") if value is not None else ""


# ---------------------------------------------------------------- plans


def _plan_values(plan: Any, scale: int) -> dict[str, Any]:
    prices = service.plan_prices(plan)
    values: dict[str, Any] = {
        "code": plan.code,
        "name": plan.name,
        "description": plan.description,
        "credits": _units_text(plan.credits, scale),
        "bonus_credits": _units_text(plan.bonus_credits, scale),
        "popular": plan.popular,
        "active": plan.active,
        "sort_order": str(plan.sort_order),
    }
    for currency in CURRENCIES:
        values[f"prices.{currency}"] = _units_text(prices.get(currency), CURRENCY_MINOR_UNITS[currency])
    return values


def _form_values(form: FormData, *checkboxes: str) -> dict[str, Any]:
    values: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str) and k != "csrf_token"}
    for name in checkboxes:
        values[name] = name in form
    return values


async def _plans_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
) -> HTMLResponse:
    plans = await service.list_plans(session, include_archived=True)
    context = {
        "plans": plans,
        "prices": {plan.id: service.plan_prices(plan) for plan in plans},
        "values": values or {"active": True, "sort_order": "0", "bonus_credits": "0"},
        "errors": errors or {},
    }
    return _page(request, "admin/plans.html", context, settings, admin, status_of(errors))


@router.get("/admin/plans")
async def plans_page(request: Request, admin: PageAdmin, session: Session, settings: SettingsDep) -> Response:
    return await _plans_page(request, session, settings, admin)


def _read_plan(reader: FormReader, *, with_code: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": reader.text("name"),
        "description": reader.text("description"),
        "credits": reader.credits("credits"),
        "bonus_credits": reader.credits("bonus_credits") or 0,
        "prices": reader.currency_amounts("prices"),
        "popular": reader.checked("popular"),
        "active": reader.checked("active"),
        "sort_order": reader.integer("sort_order") or 0,
    }
    if with_code:
        data["code"] = reader.text("code")
    return data


@router.post("/admin/plans")
async def create_plan(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    body = validated(PlanCreate, _read_plan(reader, with_code=True), reader)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.create_plan(
                session,
                actor=admin.audit_actor,
                code=body.code,
                name=body.name,
                description=body.description,
                credits=body.credits,
                bonus_credits=body.bonus_credits,
                prices=body.prices,
                popular=body.popular,
                active=body.active,
                sort_order=body.sort_order,
            ),
        )
    if isinstance(result, dict):
        values = _form_values(form, "popular", "active")
        return await _plans_page(request, session, settings, admin, values=values, errors=result)
    return _back("/admin/plans", "created")


async def _plan_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    ref: str,
    *,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    plan = await service.find_plan(session, ref)
    context = {
        "plan": plan,
        "values": values or _plan_values(plan, settings.credit_scale),
        "errors": errors or {},
    }
    return _page(request, "admin/plan.html", context, settings, admin, status_code)


async def _shown(
    page: Callable[..., Awaitable[HTMLResponse]],
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *args: Any,
    **kwargs: Any,
) -> HTMLResponse:
    """A detail page shown (again, with ``errors`` when a change was refused, in the refusal's status), or a
    "Not found" page when what it shows does not exist."""
    try:
        status = status_of(kwargs.get("errors"))
        return await page(request, session, settings, admin, *args, status_code=status, **kwargs)
    except DomainError as error:
        return message(
            request,
            settings,
            heading="Not found",
            text=error.message,
            status_code=error.status,
            principal=admin,
        )


@router.get("/admin/plans/{ref}")
async def plan_page(
    request: Request, ref: Ref, admin: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _shown(_plan_page, request, session, settings, admin, ref)


@router.post("/admin/plans/{ref}")
async def update_plan(
    request: Request, ref: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    body = validated(PlanUpdate, _read_plan(reader, with_code=False), reader)
    result: Any = reader.errors
    if body is not None:
        update = body

        async def save() -> Any:
            changes = update.changes()  # a blank required field is refused here, as the API refuses a null
            prices = changes.pop("prices", None)
            return await service.update_plan(
                session, plan_id=ref, actor=admin.audit_actor, changes=changes, prices=prices
            )

        result = await attempt(session, save)
    if isinstance(result, dict):
        values = _form_values(form, "popular", "active")
        return await _shown(_plan_page, request, session, settings, admin, ref, values=values, errors=result)
    return _back(f"/admin/plans/{result.code}", "saved")


@router.post("/admin/plans/{ref}/archive")
async def archive_plan(
    request: Request, ref: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    result = await attempt(
        session, lambda: service.archive_plan(session, plan_id=ref, actor=admin.audit_actor), _whole_form
    )
    if isinstance(result, dict):
        return await _shown(_plan_page, request, session, settings, admin, ref, errors=result)
    return _back(f"/admin/plans/{result.code}", "archived")


# ---------------------------------------------------------------- unit prices


async def _unit_prices_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
) -> HTMLResponse:
    if values is None:
        values = {}
        for price in await service.list_unit_prices(session):
            digits = CURRENCY_MINOR_UNITS.get(price.currency, 2)
            values[f"unit_prices.{price.currency}.unit_amount"] = _units_text(price.unit_amount, digits)
            values[f"unit_prices.{price.currency}.min_quantity"] = str(price.min_quantity)
            values[f"unit_prices.{price.currency}.max_quantity"] = str(price.max_quantity)
    context = {"values": values, "errors": errors or {}}
    return _page(request, "admin/unit_prices.html", context, settings, admin, status_of(errors))


@router.get("/admin/unit-prices")
async def unit_prices_page(
    request: Request, admin: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _unit_prices_page(request, session, settings, admin)


@router.post("/admin/unit-prices")
async def replace_unit_prices(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    """One row per currency; a row with no price is left out (no custom quantities in that currency)."""
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    rows: list[dict[str, Any]] = []
    row_currency: list[str] = []
    for currency in CURRENCIES:
        prefix = f"unit_prices.{currency}"
        amount = reader.money(f"{prefix}.unit_amount", currency)
        low = reader.integer(f"{prefix}.min_quantity")
        high = reader.integer(f"{prefix}.max_quantity")
        if amount is None and f"{prefix}.unit_amount" not in reader.errors:
            continue
        row: dict[str, Any] = {"currency": currency, "unit_amount": amount}
        if low is not None:
            row["min_quantity"] = low
        if high is not None:
            row["max_quantity"] = high
        rows.append(row)
        row_currency.append(currency)

    def by_currency(key: str) -> str:
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "unit_prices" and parts[1].isdigit() and int(parts[1]) < len(rows):
            field = "unit_amount" if parts[2] == "currency" else parts[2]
            return f"unit_prices.{row_currency[int(parts[1])]}.{field}"
        return key

    body = validated(UnitPricesReplace, {"unit_prices": rows}, reader, by_currency)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.replace_unit_prices(session, actor=admin.audit_actor, prices=body.items()),
            by_currency,
        )
    if isinstance(result, dict):
        return await _unit_prices_page(
            request, session, settings, admin, values=_form_values(form), errors=result
        )
    return _back("/admin/unit-prices", "saved")


# ---------------------------------------------------------------- meters


def _meter_values(meter: Any, scale: int) -> dict[str, Any]:
    values: dict[str, Any] = {
        "code": meter.code,
        "name": meter.name,
        "description": meter.description,
        "kind": meter.kind,
        "unit": meter.unit,
        "per": str(meter.per) if meter.per is not None else "",
        "active": meter.active,
    }
    for name in ("price", "input_price", "output_price", "cached_input_price"):
        values[name] = _units_text(getattr(meter, name), scale)
    return values


async def _meters_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
) -> HTMLResponse:
    meters = await service.list_meters(session, include_archived=True)
    context = {
        "meters": meters,
        "values": values or {"kind": "unit", "active": True, "per": "1"},
        "errors": errors or {},
    }
    return _page(request, "admin/meters.html", context, settings, admin, status_of(errors))


@router.get("/admin/meters")
async def meters_page(
    request: Request, admin: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _meters_page(request, session, settings, admin)


def _read_meter_prices(reader: FormReader, kind: str) -> dict[str, Any]:
    if kind == "model":
        names = ("input_price", "output_price", "cached_input_price")
        return {name: reader.credits(name) for name in names if reader.optional(name) is not None}
    data: dict[str, Any] = {}
    if reader.optional("price") is not None:
        data["price"] = reader.credits("price")
    if reader.optional("per") is not None:
        data["per"] = reader.integer("per")
    if reader.optional("unit") is not None:
        data["unit"] = reader.text("unit")
    return data


@router.post("/admin/meters")
async def create_meter(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    kind = reader.text("kind")
    data: dict[str, Any] = {
        "code": reader.text("code"),
        "name": reader.text("name"),
        "description": reader.text("description"),
        "kind": kind,
        "active": reader.checked("active"),
        **_read_meter_prices(reader, kind),
    }
    body = validated(MeterCreate, data, reader)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.create_meter(
                session,
                actor=admin.audit_actor,
                code=body.code,
                name=body.name,
                description=body.description,
                kind=body.kind,
                unit=body.unit,
                price=body.price,
                per=body.per,
                input_price=body.input_price,
                output_price=body.output_price,
                cached_input_price=body.cached_input_price,
                active=body.active,
            ),
        )
    if isinstance(result, dict):
        values = _form_values(form, "active")
        return await _meters_page(request, session, settings, admin, values=values, errors=result)
    return _back("/admin/meters", "created")


async def _meter_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    code: str,
    *,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    meter = await service.get_meter(session, code)
    context = {
        "meter": meter,
        "values": values or _meter_values(meter, settings.credit_scale),
        "errors": errors or {},
    }
    return _page(request, "admin/meter.html", context, settings, admin, status_code)


@router.get("/admin/meters/{code}")
async def meter_page(
    request: Request, code: Ref, admin: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _shown(_meter_page, request, session, settings, admin, code)


@router.post("/admin/meters/{code}")
async def update_meter(
    request: Request, code: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    values = _form_values(form, "active")

    try:
        meter = await service.get_meter(session, code)
    except DomainError:
        return await _shown(_meter_page, request, session, settings, admin, code)  # "Not found"
    values["kind"] = meter.kind
    data: dict[str, Any] = {
        "name": reader.text("name"),
        "description": reader.text("description"),
        "active": reader.checked("active"),
        **_read_meter_prices(reader, meter.kind),
    }
    body = validated(MeterUpdate, data, reader)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.update_meter(session, code=code, actor=admin.audit_actor, changes=body.changes()),
        )
    if isinstance(result, dict):
        return await _shown(
            _meter_page, request, session, settings, admin, code, values=values, errors=result
        )
    return _back(f"/admin/meters/{result.code}", "saved")


@router.post("/admin/meters/{code}/archive")
async def archive_meter(
    request: Request, code: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    result = await attempt(
        session, lambda: service.archive_meter(session, code=code, actor=admin.audit_actor), _whole_form
    )
    if isinstance(result, dict):
        return await _shown(_meter_page, request, session, settings, admin, code, errors=result)
    return _back(f"/admin/meters/{result.code}", "archived")


# ---------------------------------------------------------------- discount slabs


async def _slabs_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    rows: list[dict[str, str]] | None = None,
    errors: FieldErrors | None = None,
) -> HTMLResponse:
    if rows is None:
        rows = [
            {
                "min_credits": _units_text(slab.min_credits, settings.credit_scale),
                "percent": percent_text(slab.percent_bps),
            }
            for slab in await service.discount_slabs(session)
        ]
        rows += [{"min_credits": "", "percent": ""} for _ in range(BLANK_SLAB_ROWS)]
    context = {"rows": rows, "errors": errors or {}}
    return _page(request, "admin/slabs.html", context, settings, admin, status_of(errors))


@router.get("/admin/slabs")
async def slabs_page(request: Request, admin: PageAdmin, session: Session, settings: SettingsDep) -> Response:
    return await _slabs_page(request, session, settings, admin)


@router.post("/admin/slabs")
async def replace_slabs(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    """The table replaces the whole list; blank rows are left out (clear a row to remove that slab)."""
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    count = min(reader.integer("rows") or 0, 100 + BLANK_SLAB_ROWS) if "rows" not in reader.errors else 0
    reader.errors.pop("rows", None)
    shown: list[dict[str, str]] = []
    slabs: list[dict[str, Any]] = []
    row_of: list[int] = []  # the table row of each slab sent
    for index in range(count):
        low, percent = reader.text(f"slabs.{index}.min_credits"), reader.text(f"slabs.{index}.percent")
        shown.append({"min_credits": low, "percent": percent})
        if not low and not percent:
            continue
        slabs.append(
            {"min_credits": reader.credits(f"slabs.{index}.min_credits"), "percent": percent or None}
        )
        row_of.append(index)

    def by_row(key: str) -> str:
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "slabs" and parts[1].isdigit() and int(parts[1]) < len(row_of):
            return f"slabs.{row_of[int(parts[1])]}.{parts[2]}"
        return key

    body = validated(SlabsReplace, {"slabs": slabs}, reader, by_row)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.replace_discount_slabs(session, actor=admin.audit_actor, slabs=body.items()),
            by_row,
        )
    if isinstance(result, dict):
        return await _slabs_page(request, session, settings, admin, rows=shown, errors=result)
    return _back("/admin/slabs", "saved")


# ---------------------------------------------------------------- offers


def _offer_values(offer: Any, scale: int) -> dict[str, Any]:
    return {
        "name": offer.name,
        "description": offer.description,
        "kind": offer.kind,
        "percent": percent_text(offer.percent_bps) if offer.percent_bps is not None else "",
        "bonus_credits": _units_text(offer.bonus_credits, scale),
        "plan_codes": list(offer.plan_codes or []),
        "starts_at": _local(offer.starts_at),
        "ends_at": _local(offer.ends_at),
        "active": offer.active,
    }


def _offer_form_values(form: FormData) -> dict[str, Any]:
    values = _form_values(form, "active")
    values["plan_codes"] = [v for v in form.getlist("plan_codes") if isinstance(v, str)]
    return values


async def _offers_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    after: str | None = None,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
) -> HTMLResponse:
    offers = await service.list_offers(session, params=PageParams(limit=LIST_LIMIT, starting_after=after))
    now = utcnow()
    context = {
        "offers": offers.data,
        "has_more": offers.has_more,
        "live": {offer.id for offer in offers.data if service.is_offer_live(offer, now)},
        "plans": await service.list_plans(session, include_archived=True),
        "values": values or {"kind": "percent_off", "active": True, "plan_codes": []},
        "errors": errors or {},
    }
    return _page(request, "admin/offers.html", context, settings, admin, status_of(errors))


@router.get("/admin/offers")
async def offers_page(
    request: Request, admin: PageAdmin, session: Session, settings: SettingsDep, after: Cursor = None
) -> Response:
    return await _offers_page(request, session, settings, admin, after=after)


def _read_offer(reader: FormReader, kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": reader.text("name"),
        "description": reader.text("description"),
        "plan_codes": reader.values("plan_codes") or None,
        "starts_at": reader.timestamp("starts_at"),
        "ends_at": reader.timestamp("ends_at"),
        "active": reader.checked("active"),
    }
    if kind == "percent_off":
        data["percent"] = reader.optional("percent")
    elif kind == "bonus_credits":
        data["bonus_credits"] = reader.credits("bonus_credits")
    return data


@router.post("/admin/offers")
async def create_offer(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    kind = reader.text("kind")
    body = validated(OfferCreate, {"kind": kind, **_read_offer(reader, kind)}, reader)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.create_offer(
                session,
                actor=admin.audit_actor,
                name=body.name,
                description=body.description,
                kind=body.kind,
                percent_bps=body.percent_bps,
                bonus_credits=body.bonus_credits,
                plan_codes=body.plan_codes,
                starts_at=body.starts_at,
                ends_at=body.ends_at,
                active=body.active,
            ),
        )
    if isinstance(result, dict):
        values = _offer_form_values(form)
        return await _offers_page(request, session, settings, admin, values=values, errors=result)
    return _back("/admin/offers", "created")


async def _offer_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    offer_id: str,
    *,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    offer = await service.get_offer(session, offer_id)
    context = {
        "offer": offer,
        "live": service.is_offer_live(offer, utcnow()),
        "plans": await service.list_plans(session, include_archived=True),
        "values": values or _offer_values(offer, settings.credit_scale),
        "errors": errors or {},
    }
    return _page(request, "admin/offer.html", context, settings, admin, status_code)


@router.get("/admin/offers/{offer_id}")
async def offer_page(
    request: Request, offer_id: Ref, admin: PageAdmin, session: Session, settings: SettingsDep
) -> Response:
    return await _shown(_offer_page, request, session, settings, admin, offer_id)


@router.post("/admin/offers/{offer_id}")
async def update_offer(
    request: Request, offer_id: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    values = _offer_form_values(form)

    try:
        offer = await service.get_offer(session, offer_id)
    except DomainError:
        return await _shown(_offer_page, request, session, settings, admin, offer_id)  # "Not found"
    values["kind"] = offer.kind
    body = validated(OfferUpdate, _read_offer(reader, offer.kind), reader)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.update_offer(
                session, offer_id=offer_id, actor=admin.audit_actor, changes=body.changes()
            ),
        )
    if isinstance(result, dict):
        return await _shown(
            _offer_page, request, session, settings, admin, offer_id, values=values, errors=result
        )
    return _back(f"/admin/offers/{result.id}", "saved")


@router.post("/admin/offers/{offer_id}/archive")
async def archive_offer(
    request: Request, offer_id: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    result = await attempt(
        session,
        lambda: service.archive_offer(session, offer_id=offer_id, actor=admin.audit_actor),
        _whole_form,
    )
    if isinstance(result, dict):
        return await _shown(_offer_page, request, session, settings, admin, offer_id, errors=result)
    return _back(f"/admin/offers/{result.id}", "archived")


# ---------------------------------------------------------------- coupons


async def _coupon_reads(session: AsyncSession, coupons: list[Any]) -> list[CouponRead]:
    usage = await service.coupon_usage(session, [coupon.id for coupon in coupons], now=utcnow())
    return [CouponRead.of(coupon, usage[coupon.id]) for coupon in coupons]


async def _coupons_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    after: str | None = None,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
) -> HTMLResponse:
    coupons = await service.list_coupons(session, params=PageParams(limit=LIST_LIMIT, starting_after=after))
    context = {
        "coupons": await _coupon_reads(session, coupons.data),
        "has_more": coupons.has_more,
        "plans": await service.list_plans(session, include_archived=True),
        "values": values or {"kind": "percent_off", "visibility": "public", "active": True, "plan_codes": []},
        "errors": errors or {},
    }
    return _page(request, "admin/coupons.html", context, settings, admin, status_of(errors))


@router.get("/admin/coupons")
async def coupons_page(
    request: Request, admin: PageAdmin, session: Session, settings: SettingsDep, after: Cursor = None
) -> Response:
    return await _coupons_page(request, session, settings, admin, after=after)


def _read_coupon(reader: FormReader, kind: str) -> dict[str, Any]:
    """A coupon's terms from its form (all but the code and kind, which never change)."""
    data: dict[str, Any] = {
        "description": reader.text("description"),
        "plan_codes": reader.values("plan_codes") or None,
        "min_amount": reader.currency_amounts("min_amount") or None,
        "max_redemptions": reader.integer("max_redemptions"),
        "max_per_user": reader.integer("max_per_user"),
        "starts_at": reader.timestamp("starts_at"),
        "ends_at": reader.timestamp("ends_at"),
        "visibility": reader.text("visibility"),
        "active": reader.checked("active"),
    }
    if kind == "percent_off":
        data["percent"] = reader.optional("percent")
    elif kind == "amount_off":
        data["amount_off"] = reader.currency_amounts("amount_off")
    elif kind == "bonus_credits":
        data["bonus_credits"] = reader.credits("bonus_credits")
    return data


def _coupon_values(coupon: CouponRead, scale: int) -> dict[str, Any]:
    values: dict[str, Any] = {
        "description": coupon.description,
        "kind": coupon.kind,
        "percent": coupon.percent or "",
        "bonus_credits": _units_text(coupon.bonus_credits, scale),
        "plan_codes": list(coupon.plan_codes or []),
        "max_redemptions": "" if coupon.max_redemptions is None else str(coupon.max_redemptions),
        "max_per_user": "" if coupon.max_per_user is None else str(coupon.max_per_user),
        "starts_at": _local(coupon.starts_at),
        "ends_at": _local(coupon.ends_at),
        "visibility": coupon.visibility,
        "active": coupon.active,
    }
    for prefix, amounts in (("amount_off", coupon.amount_off), ("min_amount", coupon.min_amount)):
        for currency, amount in amounts.items():
            values[f"{prefix}.{currency}"] = _units_text(amount, CURRENCY_MINOR_UNITS.get(currency, 2))
    return values


@router.post("/admin/coupons")
async def create_coupon(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    kind = reader.text("kind")
    data = {"code": reader.text("code"), "kind": kind, **_read_coupon(reader, kind)}
    body = validated(CouponCreate, data, reader)
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: service.create_coupon(
                session,
                actor=admin.audit_actor,
                code=body.code,
                kind=body.kind,
                description=body.description,
                percent_bps=body.percent_bps,
                amount_off=body.amount_off,
                bonus_credits=body.bonus_credits,
                plan_codes=body.plan_codes,
                min_amount=body.min_amount,
                max_redemptions=body.max_redemptions,
                max_per_user=body.max_per_user,
                starts_at=body.starts_at,
                ends_at=body.ends_at,
                visibility=body.visibility,
                active=body.active,
            ),
        )
    if isinstance(result, dict):
        values = _offer_form_values(form)
        return await _coupons_page(request, session, settings, admin, values=values, errors=result)
    return _back(f"/admin/coupons/{result.code}", "created")


async def _coupon_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    code: str,
    *,
    emails: str = "",
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
    status_code: int = 200,
    after: str | None = None,
) -> HTMLResponse:
    coupon = await service.get_coupon(session, code, param="code")
    (read,) = await _coupon_reads(session, [coupon])
    assignments = await service.list_assignments(
        session, code=coupon.code, params=PageParams(limit=LIST_LIMIT, starting_after=after)
    )
    users = await auth_service.users_by_id(session, (a.user_id for a in assignments.data))
    context = {
        "coupon": read,
        "assignments": [(a, users.get(a.user_id)) for a in assignments.data],
        "has_more": assignments.has_more,
        "emails": emails,
        "plans": await service.list_plans(session, include_archived=True),
        "values": values or _coupon_values(read, settings.credit_scale),
        "errors": errors or {},
    }
    return _page(request, "admin/coupon.html", context, settings, admin, status_code)


@router.post("/admin/coupons/{code}")
async def update_coupon(
    request: Request, code: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    """Change a coupon's terms (the code and kind stay); blank limits, window sides and plans lift them."""
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    values = _offer_form_values(form)
    result: Any = None
    try:
        coupon = await service.get_coupon(session, code, param="code")
    except DomainError as error:
        result = Refusal(domain_errors(error), error.status)
    else:
        values["kind"] = coupon.kind
        body = validated(CouponUpdate, _read_coupon(reader, coupon.kind), reader)
        result = reader.errors
        if body is not None:
            update = body
            result = await attempt(
                session,
                lambda: service.update_coupon(
                    session, code=code, actor=admin.audit_actor, changes=update.changes()
                ),
            )
    if isinstance(result, dict):
        return await _shown(
            _coupon_page, request, session, settings, admin, code, values=values, errors=result
        )
    return _back(f"/admin/coupons/{result.code}", "saved")


@router.get("/admin/coupons/{code}")
async def coupon_page(
    request: Request,
    code: Ref,
    admin: PageAdmin,
    session: Session,
    settings: SettingsDep,
    after: Cursor = None,
) -> Response:
    return await _shown(_coupon_page, request, session, settings, admin, code, after=after)


async def _user_ids_by_email(session: AsyncSession, emails: list[str]) -> list[str] | FieldErrors:
    ids: list[str] = []
    for email in emails:
        user = await auth_service.get_user_by_email(session, email)
        if user is None or user.deleted_at is not None:
            return {"emails": f"No user with the email {email}."}
        ids.append(user.id)
    return ids


@router.post("/admin/coupons/{code}/assignments")
async def allot_coupon(
    request: Request, code: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    """Allot the coupon to the users with these emails (one per line, or separated by commas)."""
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    text = reader.text("emails")
    emails = [e.strip() for e in text.replace(",", "\n").splitlines() if e.strip()]
    result: Any = reader.errors or ({"emails": "Enter at least one user's email."} if not emails else None)
    if len(emails) > 100:
        result = {"emails": "Allot to at most 100 users at a time."}
    if result is None:
        found = await _user_ids_by_email(session, emails)
        result = found
        if isinstance(found, list):
            result = await attempt(
                session,
                lambda: service.assign_coupon(session, code=code, user_ids=found, actor=admin.audit_actor),
                lambda key: "emails" if key.startswith("user_ids") else key,
            )
    if isinstance(result, dict):
        return await _shown(_coupon_page, request, session, settings, admin, code, emails=text, errors=result)
    return _back(f"/admin/coupons/{service.normalize_coupon_code(code)}", "allotted")


@router.post("/admin/coupons/{code}/withdraw")
async def withdraw_coupon(
    request: Request, code: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    form = await request.form()
    user_id = FormReader(form, settings.credit_scale).text("user_id")
    result = await attempt(
        session,
        lambda: service.withdraw_coupon(session, code=code, user_id=user_id, actor=admin.audit_actor),
        _whole_form,
    )
    if isinstance(result, dict):
        return await _shown(_coupon_page, request, session, settings, admin, code, errors=result)
    return _back(f"/admin/coupons/{service.normalize_coupon_code(code)}", "withdrawn")


@router.post("/admin/coupons/{code}/archive")
async def archive_coupon(
    request: Request, code: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    result = await attempt(
        session, lambda: service.archive_coupon(session, code=code, actor=admin.audit_actor), _whole_form
    )
    if isinstance(result, dict):
        return await _shown(_coupon_page, request, session, settings, admin, code, errors=result)
    return _back(f"/admin/coupons/{result.code}", "archived")


# ---------------------------------------------------------------- webhook endpoints


async def _webhooks_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    *,
    after: str | None = None,
    values: dict[str, Any] | None = None,
    errors: FieldErrors | None = None,
    created: Any = None,
) -> HTMLResponse:
    found = await webhooks_out.list_endpoints(
        session, page=PageParams(limit=LIST_LIMIT, starting_after=after)
    )
    context = {
        "endpoints": found.data,
        "has_more": found.has_more,
        "event_types": sorted(webhooks_out.EVENT_TYPES),
        "values": values or {"event_types": []},
        "errors": errors or {},
        "created": created,
    }
    status_code = status_of(errors) if errors else 201 if created is not None else 200
    response = _page(request, "admin/webhooks.html", context, settings, admin, status_code)
    if created is not None:
        response.headers["Cache-Control"] = "no-store"  # the signing secret, shown this once
    return response


@router.get("/admin/webhooks")
async def webhooks_page(
    request: Request, admin: PageAdmin, session: Session, settings: SettingsDep, after: Cursor = None
) -> Response:
    return await _webhooks_page(request, session, settings, admin, after=after)


@router.post("/admin/webhooks")
async def create_webhook(
    request: Request, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    """The new endpoint's signing secret is shown in this answer only (never in a URL, never again)."""
    form = await request.form()
    reader = FormReader(form, settings.credit_scale)
    data = {
        "url": reader.text("url"),
        "event_types": reader.values("event_types"),
        "description": reader.optional("description"),
    }
    body = validated(WebhookEndpointCreate, data, reader, lambda k: k.split(".")[0])
    result: Any = reader.errors
    if body is not None:
        result = await attempt(
            session,
            lambda: apps_api.create_webhook_endpoint(body, admin, session, settings),
            lambda k: k.split(".")[0],
        )
    if isinstance(result, dict):
        values = {**_form_values(form), "event_types": data["event_types"]}
        return await _webhooks_page(request, session, settings, admin, values=values, errors=result)
    return await _webhooks_page(request, session, settings, admin, created=result)


async def _webhook_page(
    request: Request,
    session: AsyncSession,
    settings: Settings,
    admin: Any,
    endpoint_id: str,
    *,
    after: str | None = None,
    errors: FieldErrors | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    endpoint = await webhooks_out.get_endpoint(session, endpoint_id=endpoint_id)
    deliveries = await webhooks_out.list_deliveries(
        session, endpoint_id=endpoint_id, status=None, page=PageParams(limit=LIST_LIMIT, starting_after=after)
    )
    context = {
        "endpoint": endpoint,
        "deliveries": deliveries.data,
        "has_more": deliveries.has_more,
        "errors": errors or {},
    }
    return _page(request, "admin/webhook.html", context, settings, admin, status_code)


@router.get("/admin/webhooks/{endpoint_id}")
async def webhook_page(
    request: Request,
    endpoint_id: Ref,
    admin: PageAdmin,
    session: Session,
    settings: SettingsDep,
    after: Cursor = None,
) -> Response:
    return await _shown(_webhook_page, request, session, settings, admin, endpoint_id, after=after)


@router.post("/admin/webhooks/{endpoint_id}/delete")
async def delete_webhook(
    request: Request, endpoint_id: Ref, admin: FormAdmin, session: Session, settings: SettingsDep
) -> Response:
    result = await attempt(
        session, lambda: apps_api.delete_webhook_endpoint(endpoint_id, admin, session), _whole_form
    )
    if isinstance(result, dict):
        return await _shown(_webhook_page, request, session, settings, admin, endpoint_id, errors=result)
    return _back("/admin/webhooks", "deleted")


@router.post("/admin/webhooks/{endpoint_id}/deliveries/{delivery_id}/redeliver")
async def redeliver_webhook(
    request: Request,
    endpoint_id: Ref,
    delivery_id: Ref,
    admin: FormAdmin,
    session: Session,
    settings: SettingsDep,
) -> Response:
    result = await attempt(
        session, lambda: apps_api.redeliver_webhook(endpoint_id, delivery_id, admin, session), _whole_form
    )
    if isinstance(result, dict):
        return await _shown(_webhook_page, request, session, settings, admin, endpoint_id, errors=result)
    return _back(f"/admin/webhooks/{endpoint_id}", "redelivered")
