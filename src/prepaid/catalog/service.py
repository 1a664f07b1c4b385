"""Catalog rules: plans and their prices, unit prices, meters and the cost function, discount slabs, offers,
coupons (allotment, uses and reservations), and the quote.

Services take the session and never commit. Every admin write records an audit entry (before and after) in
the same transaction. Plans, meters, offers and coupons are archived, never deleted. Plan and meter codes are
stored lower-case, coupon codes upper-case, and all are matched case-insensitively.

For the payments issue: ``build_quote`` is the one way to price a purchase (it loads the catalog state and
calls ``pricing.quote``); ``reserve_coupon``, ``redeem_reservation`` and ``release_reservation`` count a
coupon's uses for an order. For metering: ``get_meter``, ``is_usable`` and the pure ``meter_cost``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, and_, delete, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.catalog import pricing
from prepaid.catalog.models import (
    Coupon,
    CouponAssignment,
    CouponRedemption,
    DiscountSlab,
    Meter,
    Offer,
    Plan,
    PlanPrice,
    UnitPrice,
)
from prepaid.db import utcnow
from prepaid.errors import Conflict, InvalidRequest, NotFound
from prepaid.ids import has_prefix, new_id
from prepaid.money import CURRENCY_MINOR_UNITS
from prepaid.pagination import Page, PageParams, paginate
from prepaid.settings import Settings

TOKENS_PER_PRICE_UNIT = 1_000_000  # model prices are per million tokens

# ---------------------------------------------------------------- the cost function (pure, no database)


class PricedMeter(Protocol):
    """What ``meter_cost`` reads: a ``Meter`` row, or anything shaped like one (a snapshot, a test value)."""

    @property
    def kind(self) -> str: ...
    @property
    def price(self) -> int | None: ...
    @property
    def per(self) -> int | None: ...
    @property
    def input_price(self) -> int | None: ...
    @property
    def output_price(self) -> int | None: ...
    @property
    def cached_input_price(self) -> int | None: ...


def _count(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{param} must be a whole number.", code="invalid_field", param=param)
    if value < 0:
        raise InvalidRequest(f"{param} cannot be negative.", code="negative_quantity", param=param)
    return value


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def meter_cost(
    meter: PricedMeter,
    *,
    quantity: int | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cached_input_tokens: int = 0,
) -> int:
    """The cost of a use of ``meter`` in the credit asset's minor unit, rounded up once.

    A unit meter: ``ceil(quantity * price / per)``; give ``quantity`` and no token counts. A model meter:
    ``ceil((input_tokens * input_price + output_tokens * output_price + cached_input_tokens *
    cached_input_price) / 1_000_000)``, one ceiling over the sum; give token counts and no ``quantity``.
    ``input_tokens`` are the uncached ones: a prompt of 1,000 tokens of which 800 were read from the cache is
    ``input_tokens=200, cached_input_tokens=800``. Integer arithmetic only (Python integers do not overflow;
    a caller storing the result checks it against its column). Negative or non-integer counts are refused.
    """
    if meter.kind == "unit":
        if quantity is None:
            raise InvalidRequest(
                "A unit meter is priced by quantity.", code="missing_field", param="quantity"
            )
        for param, tokens in (
            ("input_tokens", input_tokens),
            ("output_tokens", output_tokens),
            ("cached_input_tokens", cached_input_tokens),
        ):
            if _count(tokens, param):
                raise InvalidRequest(
                    "A unit meter takes a quantity, not token counts.", code="invalid_field", param=param
                )
        count = _count(quantity, "quantity")
        assert meter.price is not None and meter.per is not None and meter.per > 0
        return _ceil_div(count * meter.price, meter.per)
    if meter.kind == "model":
        if quantity is not None:
            raise InvalidRequest(
                "A model meter is priced by token counts, not a quantity.",
                code="invalid_field",
                param="quantity",
            )
        inputs = _count(input_tokens, "input_tokens")
        outputs = _count(output_tokens, "output_tokens")
        cached = _count(cached_input_tokens, "cached_input_tokens")
        assert meter.input_price is not None and meter.output_price is not None
        assert meter.cached_input_price is not None
        total = inputs * meter.input_price + outputs * meter.output_price + cached * meter.cached_input_price
        return _ceil_div(total, TOKENS_PER_PRICE_UNIT)
    raise ValueError(f"unknown meter kind {meter.kind!r}")


# ---------------------------------------------------------------- shared checks


def normalize_code(code: str) -> str:
    """A plan or meter code as stored: lower-case. Codes are ASCII, so only ASCII letters fold: no other
    character (the Kelvin sign, say, which lower-cases to "k") can turn into a code."""
    code = code.strip()
    return code.lower() if code.isascii() else code


def normalize_coupon_code(code: str) -> str:
    """A coupon code as stored: upper-case, ASCII letters only ("ß" does not become "SS")."""
    code = code.strip()
    return code.upper() if code.isascii() else code


def check_currency(currency: str, param: str) -> str:
    code = currency.strip().upper()
    if code not in CURRENCY_MINOR_UNITS:
        known = ", ".join(sorted(CURRENCY_MINOR_UNITS))
        raise InvalidRequest(
            f"Unknown currency {currency!r}; use one of {known}.", code="unsupported_currency", param=param
        )
    return code


def _currency_amounts(
    amounts: Mapping[str, int] | None, param: str, *, at_least_one: bool = False
) -> dict[str, int]:
    """A currency -> minor units map (plan prices, a coupon's amounts off and minimums): known currencies,
    each once, upper-cased and sorted, amounts whole and above 0. None is empty."""
    if at_least_one and not amounts:
        raise InvalidRequest(
            "A plan needs a price in at least one currency.", code="missing_price", param=param
        )
    checked: dict[str, int] = {}
    for currency, amount in (amounts or {}).items():
        code = check_currency(currency, f"{param}.{currency}")
        if code in checked:
            raise InvalidRequest(
                f"{code} is given twice.", code="duplicate_currency", param=f"{param}.{currency}"
            )
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InvalidRequest(
                "An amount is a whole number of minor units above 0.",
                code="invalid_field",
                param=f"{param}.{currency}",
            )
        checked[code] = amount
    return dict(sorted(checked.items()))


async def _check_plan_codes(session: AsyncSession, codes: Sequence[str] | None) -> list[str] | None:
    """The plans an offer or a coupon covers (None: every plan and custom quantities), each one existing."""
    if codes is None:
        return None
    if not codes:
        raise InvalidRequest(
            "Give at least one plan code, or null for every plan and custom quantities.",
            code="invalid_field",
            param="plan_codes",
        )
    normalized: list[str] = []
    for code in codes:
        code = normalize_code(code)
        if code not in normalized:
            normalized.append(code)
    known = set((await session.scalars(select(Plan.code).where(Plan.code.in_(normalized)))).all())
    for index, code in enumerate(normalized):
        if code not in known:
            raise InvalidRequest(f"No plan {code}.", code="unknown_plan", param=f"plan_codes.{index}")
    return normalized


def _check_window(starts_at: datetime | None, ends_at: datetime | None) -> None:
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise InvalidRequest("ends_at must be after starts_at.", code="invalid_window", param="ends_at")


def _refuse_nulls(changes: Mapping[str, Any], fields: Iterable[str]) -> None:
    for name in fields:
        if name in changes and changes[name] is None:
            raise InvalidRequest(f"{name} cannot be null.", code="invalid_field", param=name)


def _refuse_unknown(changes: Mapping[str, Any], allowed: frozenset[str], kind: str) -> None:
    """A programming error, not a request's: the schemas send only the fields a change may touch."""
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"not {kind} fields: {sorted(unknown)}")


# ---------------------------------------------------------------- rows, locks and the audit trail

_Row = TypeVar("_Row")
_Entity = TypeVar("_Entity", Plan, Meter, Offer, Coupon)

# The kinds of row whose changes are audited, by the name the audit log gives them.
_KINDS: dict[type[Any], str] = {Plan: "plan", Meter: "meter", Offer: "offer", Coupon: "coupon"}
_NOT_AUDITED = frozenset({"id", "created_at", "updated_at"})


def _plain(value: Any) -> Any:
    """A column's value as the audit log's JSON keeps it: times as ISO 8601, maps and lists copied."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _snapshot(row: Plan | Meter | Offer | Coupon) -> dict[str, Any]:
    """What the audit log keeps of a row before and after a change: every column but the id and the
    timestamps (and a plan's prices)."""
    values = {
        column.key: _plain(getattr(row, column.key))
        for column in row.__mapper__.column_attrs
        if column.key not in _NOT_AUDITED
    }
    if isinstance(row, Plan):
        values["prices"] = plan_prices(row)
    return values


async def _audit(
    session: AsyncSession,
    actor: audit_service.Actor,
    action: str,
    object_type: str,
    object_id: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    await audit_service.record(
        session,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        before=before,
        after=after,
    )


async def _created(session: AsyncSession, row: _Entity, *, actor: audit_service.Actor) -> _Entity:
    """Add a new row, audited as ``<kind>.create``. A code taken by a concurrent creation (both passed the
    caller's check; PostgreSQL's unique index stops the second) is the same 409 as one taken earlier."""
    kind = _KINDS[type(row)]
    session.add(row)
    try:
        await session.flush()  # fills the timestamps for the answer
    except IntegrityError:
        if isinstance(row, Offer):  # offers have no code: nothing unique to race for
            raise
        raise Conflict(
            f"A {kind} with code {row.code} exists.", code=f"{kind}_code_taken", param="code"
        ) from None
    await _audit(session, actor, f"{kind}.create", kind, row.id, None, _snapshot(row))
    return row


async def _updated(
    session: AsyncSession,
    row: _Entity,
    values: Mapping[str, Any],
    *,
    actor: audit_service.Actor,
    before: dict[str, Any] | None = None,
) -> _Entity:
    """Set ``values`` on the row; when that changed anything (``before`` is the row before this change, when
    the caller already changed more), stamp ``updated_at`` and record ``<kind>.update``. A change to nothing
    records nothing."""
    kind = _KINDS[type(row)]
    before = _snapshot(row) if before is None else before
    for name, value in values.items():
        setattr(row, name, value)
    after = _snapshot(row)
    if after != before:
        row.updated_at = utcnow()
        await session.flush()
        await _audit(session, actor, f"{kind}.update", kind, row.id, before, after)
    return row


async def _archived(session: AsyncSession, row: _Entity, *, actor: audit_service.Actor) -> _Entity:
    """Archive the row (and switch it off), audited as ``<kind>.archive``; archiving twice answers the row as
    it is and records nothing."""
    if row.archived_at is not None:
        return row
    kind = _KINDS[type(row)]
    before = _snapshot(row)
    row.archived_at = utcnow()
    row.active = False
    await session.flush()
    await _audit(session, actor, f"{kind}.archive", kind, row.id, before, _snapshot(row))
    return row


def _refuse_archived(row: Plan | Meter | Offer | Coupon) -> None:
    if row.archived_at is not None:
        kind = _KINDS[type(row)]
        raise Conflict(f"This {kind} is archived; archived {kind}s do not change.", code=f"{kind}_archived")


async def _locked(session: AsyncSession, stmt: Select[_Row]) -> _Row | None:
    """The row ``stmt`` selects, locked until the transaction ends (``FOR UPDATE`` on PostgreSQL; SQLite's
    write lock is already held from ``BEGIN IMMEDIATE``) and read afresh, so two admins' changes to one row
    serialise and each audit entry's ``before`` is what the change replaced."""
    return await session.scalar(stmt.with_for_update().execution_options(populate_existing=True))


async def _one(session: AsyncSession, stmt: Select[_Row], *, lock: bool) -> _Row | None:
    return await (_locked(session, stmt) if lock else session.scalar(stmt))


async def _lock_list(session: AsyncSession, table: str) -> None:
    """Serialise the replacement of a whole list (slabs, unit prices) on PostgreSQL: two concurrent
    replacements must not merge into one list. Reads are not blocked. SQLite's write lock already does this."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"))


def _for_sale(stmt: Select[_Row], model: type[Plan] | type[Meter] | type[Offer]) -> Select[_Row]:
    """Only the rows the public sees: active and not archived."""
    return stmt.where(model.active.is_(True), model.archived_at.is_(None))


# ---------------------------------------------------------------- plans

PLAN_FIELDS = frozenset(
    {"name", "description", "credits", "bonus_credits", "popular", "active", "sort_order"}
)


def plan_prices(plan: Plan) -> dict[str, int]:
    """The plan's price per currency (minor units), sorted by currency."""
    return {price.currency: price.amount for price in sorted(plan.prices, key=lambda p: p.currency)}


async def list_plans(session: AsyncSession, *, include_archived: bool = False) -> list[Plan]:
    """Active plans by ``sort_order`` then code; ``include_archived`` lists every plan (inactive too)."""
    stmt = select(Plan).order_by(Plan.sort_order, Plan.code)
    if not include_archived:
        stmt = _for_sale(stmt, Plan)
    return list((await session.scalars(stmt)).all())


async def get_plan(session: AsyncSession, plan_id: str) -> Plan:
    """A plan by id, archived or not (orders keep referring to it), with ``plan.prices``."""
    plan = await session.get(Plan, plan_id)
    if plan is None:
        raise NotFound(f"No plan {plan_id}.", param="plan_id")
    return plan


async def get_plan_by_code(session: AsyncSession, code: str) -> Plan:
    plan = await session.scalar(select(Plan).where(Plan.code == normalize_code(code)))
    if plan is None:
        raise NotFound(f"No plan {code}.", param="plan")
    return plan


async def find_plan(session: AsyncSession, reference: str, *, lock: bool = False) -> Plan:
    """A plan by id (``pln_...``) or by code; ``lock`` for a change."""
    plan = None
    if has_prefix(reference, "pln"):
        plan = await _one(session, select(Plan).where(Plan.id == reference), lock=lock)
    if plan is None:
        plan = await _one(session, select(Plan).where(Plan.code == normalize_code(reference)), lock=lock)
    if plan is None:
        raise NotFound(f"No plan {reference}.", param="plan_id")
    return plan


def is_purchasable(plan: Plan) -> bool:
    return plan.active and plan.archived_at is None


async def create_plan(
    session: AsyncSession,
    *,
    actor: audit_service.Actor,
    code: str,
    name: str,
    credits: int,
    prices: Mapping[str, int],
    description: str = "",
    bonus_credits: int = 0,
    popular: bool = False,
    active: bool = True,
    sort_order: int = 0,
) -> Plan:
    code = normalize_code(code)
    checked = _currency_amounts(prices, "prices", at_least_one=True)
    if await session.scalar(select(Plan.id).where(Plan.code == code)) is not None:
        raise Conflict(f"A plan with code {code!r} exists.", code="plan_code_taken", param="code")
    plan = Plan(
        id=new_id("pln"),
        code=code,
        name=name,
        description=description,
        credits=credits,
        bonus_credits=bonus_credits,
        popular=popular,
        active=active,
        sort_order=sort_order,
        prices=[PlanPrice(currency=currency, amount=amount) for currency, amount in checked.items()],
    )
    return await _created(session, plan, actor=actor)


async def update_plan(
    session: AsyncSession,
    *,
    plan_id: str,
    actor: audit_service.Actor,
    changes: Mapping[str, Any],
    prices: Mapping[str, int] | None = None,
) -> Plan:
    """Change the fields in ``changes`` (a subset of ``PLAN_FIELDS``) of the plan ``plan_id`` (its id or its
    code); ``prices`` replaces the whole price map. An archived plan cannot change (409 ``plan_archived``)."""
    _refuse_unknown(changes, PLAN_FIELDS, "plan")
    plan = await find_plan(session, plan_id, lock=True)
    _refuse_archived(plan)
    checked = _currency_amounts(prices, "prices", at_least_one=True) if prices is not None else None
    before = _snapshot(plan)
    if checked is not None:
        current = {price.currency: price for price in plan.prices}
        for currency, price in current.items():
            if currency not in checked:
                plan.prices.remove(price)
        for currency, amount in checked.items():
            if currency in current:
                current[currency].amount = amount
            else:
                plan.prices.append(PlanPrice(currency=currency, amount=amount))
    return await _updated(session, plan, changes, actor=actor, before=before)


async def archive_plan(session: AsyncSession, *, plan_id: str, actor: audit_service.Actor) -> Plan:
    """Archived plans leave the public list and cannot be bought, and stay readable by id. ``plan_id`` is the
    id or the code. Archiving twice answers the plan as it is and records nothing."""
    return await _archived(session, await find_plan(session, plan_id, lock=True), actor=actor)


# ---------------------------------------------------------------- unit prices (custom quantities)


@dataclass(frozen=True)
class UnitPriceInput:
    currency: str
    unit_amount: int
    min_quantity: int
    max_quantity: int


def _unit_price_snapshot(prices: Iterable[UnitPrice | UnitPriceInput]) -> list[dict[str, Any]]:
    return [
        {
            "currency": price.currency,
            "unit_amount": price.unit_amount,
            "min_quantity": price.min_quantity,
            "max_quantity": price.max_quantity,
        }
        for price in sorted(prices, key=lambda p: p.currency)
    ]


async def list_unit_prices(session: AsyncSession) -> list[UnitPrice]:
    return list((await session.scalars(select(UnitPrice).order_by(UnitPrice.currency))).all())


async def unit_price(session: AsyncSession, currency: str) -> UnitPrice | None:
    """The price of one whole credit in ``currency`` for custom quantities; None when none is set."""
    return await session.get(UnitPrice, currency.strip().upper())


async def replace_unit_prices(
    session: AsyncSession, *, actor: audit_service.Actor, prices: Sequence[UnitPriceInput]
) -> list[UnitPrice]:
    """Replace the whole list; a bad entry changes nothing."""
    seen: set[str] = set()
    checked: list[UnitPriceInput] = []
    for index, price in enumerate(prices):
        currency = check_currency(price.currency, f"unit_prices.{index}.currency")
        if currency in seen:
            raise InvalidRequest(
                f"{currency} is given twice.",
                code="duplicate_currency",
                param=f"unit_prices.{index}.currency",
            )
        if price.max_quantity < price.min_quantity:
            raise InvalidRequest(
                "max_quantity cannot be below min_quantity.",
                code="invalid_quantity_range",
                param=f"unit_prices.{index}.max_quantity",
            )
        seen.add(currency)
        checked.append(UnitPriceInput(currency, price.unit_amount, price.min_quantity, price.max_quantity))
    await _lock_list(session, UnitPrice.__tablename__)
    before = _unit_price_snapshot(await list_unit_prices(session))
    after = _unit_price_snapshot(checked)
    if before == after:
        return await list_unit_prices(session)
    await session.execute(delete(UnitPrice))
    session.add_all(
        UnitPrice(
            currency=price.currency,
            unit_amount=price.unit_amount,
            min_quantity=price.min_quantity,
            max_quantity=price.max_quantity,
        )
        for price in checked
    )
    await session.flush()
    await _audit(
        session,
        actor,
        "unit_prices.replace",
        "unit_prices",
        None,
        {"unit_prices": before},
        {"unit_prices": after},
    )
    return await list_unit_prices(session)


# ---------------------------------------------------------------- meters


UNIT_FIELDS = ("price", "per")
MODEL_FIELDS = ("input_price", "output_price", "cached_input_price")
METER_FIELDS = frozenset({"name", "description", "unit", "active", *UNIT_FIELDS, *MODEL_FIELDS})


def _check_meter_fields(kind: str, values: Mapping[str, Any]) -> None:
    """The fields of the other kind are refused; a model meter counts tokens."""
    foreign = MODEL_FIELDS if kind == "unit" else UNIT_FIELDS
    for name in foreign:
        if values.get(name) is not None:
            raise InvalidRequest(f"A {kind} meter has no {name}.", code="field_not_for_kind", param=name)
    if kind == "model" and values.get("unit") not in (None, "token"):
        raise InvalidRequest("A model meter counts tokens (unit 'token').", code="invalid_unit", param="unit")


async def list_meters(session: AsyncSession, *, include_archived: bool = False) -> list[Meter]:
    """Active meters by code; ``include_archived`` lists every meter."""
    stmt = select(Meter).order_by(Meter.code)
    if not include_archived:
        stmt = _for_sale(stmt, Meter)
    return list((await session.scalars(stmt)).all())


async def get_meter(session: AsyncSession, code: str, *, lock: bool = False) -> Meter:
    """A meter by code (case-insensitive), archived or not; ``lock`` for a change."""
    meter = await _one(session, select(Meter).where(Meter.code == normalize_code(code)), lock=lock)
    if meter is None:
        raise NotFound(f"No meter {code}.", param="code")
    return meter


def is_usable(meter: Meter) -> bool:
    return meter.active and meter.archived_at is None


async def create_meter(
    session: AsyncSession,
    *,
    actor: audit_service.Actor,
    code: str,
    name: str,
    kind: str,
    unit: str | None = None,
    description: str = "",
    price: int | None = None,
    per: int | None = None,
    input_price: int | None = None,
    output_price: int | None = None,
    cached_input_price: int | None = None,
    active: bool = True,
) -> Meter:
    """A unit meter needs ``price`` (``per`` defaults to 1) and a ``unit``; a model meter ``input_price`` and
    ``output_price`` (``cached_input_price`` defaults to ``input_price``), and counts tokens."""
    values = {
        "unit": unit,
        "price": price,
        "per": per,
        "input_price": input_price,
        "output_price": output_price,
        "cached_input_price": cached_input_price,
    }
    _check_meter_fields(kind, values)
    if kind == "unit":
        if price is None:
            raise InvalidRequest("A unit meter needs a price.", code="field_required_for_kind", param="price")
        if unit is None:
            raise InvalidRequest("A unit meter needs a unit.", code="field_required_for_kind", param="unit")
        per = 1 if per is None else per
    else:
        for field_name, value in (("input_price", input_price), ("output_price", output_price)):
            if value is None:  # (not ``name``: that is the meter's name)
                raise InvalidRequest(
                    f"A model meter needs {field_name}.", code="field_required_for_kind", param=field_name
                )
        unit = "token"
        cached_input_price = input_price if cached_input_price is None else cached_input_price
    code = normalize_code(code)
    if await session.scalar(select(Meter.id).where(Meter.code == code)) is not None:
        raise Conflict(f"A meter with code {code!r} exists.", code="meter_code_taken", param="code")
    meter = Meter(
        id=new_id("mtr"),
        code=code,
        name=name,
        description=description,
        kind=kind,
        unit=unit,
        price=price,
        per=per,
        input_price=input_price,
        output_price=output_price,
        cached_input_price=cached_input_price,
        active=active,
    )
    return await _created(session, meter, actor=actor)


async def update_meter(
    session: AsyncSession, *, code: str, actor: audit_service.Actor, changes: Mapping[str, Any]
) -> Meter:
    """Change the fields in ``changes`` (a subset of ``METER_FIELDS``; the kind and code stay). Prices
    change for usage received from now on. An archived meter cannot change (409 ``meter_archived``)."""
    _refuse_unknown(changes, METER_FIELDS, "meter")
    meter = await get_meter(session, code, lock=True)
    _refuse_archived(meter)
    _check_meter_fields(meter.kind, changes)
    _refuse_nulls(changes, METER_FIELDS)
    return await _updated(session, meter, changes, actor=actor)


async def archive_meter(session: AsyncSession, *, code: str, actor: audit_service.Actor) -> Meter:
    """Archived meters leave the public list and price no new usage; they stay readable by code. Archiving
    twice answers the meter as it is and records nothing."""
    return await _archived(session, await get_meter(session, code, lock=True), actor=actor)


# ---------------------------------------------------------------- discount slabs


@dataclass(frozen=True)
class SlabInput:
    min_credits: int
    percent_bps: int


def _slab_snapshot(slabs: Iterable[DiscountSlab | SlabInput]) -> list[dict[str, int]]:
    return [{"min_credits": slab.min_credits, "percent_bps": slab.percent_bps} for slab in slabs]


async def discount_slabs(session: AsyncSession) -> list[DiscountSlab]:
    """The slabs by ascending threshold."""
    return list((await session.scalars(select(DiscountSlab).order_by(DiscountSlab.min_credits))).all())


async def replace_discount_slabs(
    session: AsyncSession, *, actor: audit_service.Actor, slabs: Sequence[SlabInput]
) -> list[DiscountSlab]:
    """Replace the whole list. Thresholds strictly ascending, each percent above 0 and below 100 and not
    below the slab under it; a bad list changes nothing."""
    for index, slab in enumerate(slabs):
        if not 1 <= slab.percent_bps <= 9999:
            raise InvalidRequest(
                "A slab's percent must be above 0 and below 100.",
                code="invalid_percent",
                param=f"slabs.{index}.percent",
            )
        if slab.min_credits <= 0:
            raise InvalidRequest(
                "A slab's min_credits must be above 0.",
                code="invalid_field",
                param=f"slabs.{index}.min_credits",
            )
        if index > 0:
            below = slabs[index - 1]
            if slab.min_credits <= below.min_credits:
                raise InvalidRequest(
                    "Slab thresholds must be strictly ascending.",
                    code="slabs_not_ascending",
                    param=f"slabs.{index}.min_credits",
                )
            if slab.percent_bps < below.percent_bps:
                raise InvalidRequest(
                    "A higher slab cannot give a smaller discount than the one below it.",
                    code="slab_percent_decreasing",
                    param=f"slabs.{index}.percent",
                )
    await _lock_list(session, DiscountSlab.__tablename__)
    current = await discount_slabs(session)
    before, after = _slab_snapshot(current), _slab_snapshot(slabs)
    if before == after:
        return current
    await session.execute(delete(DiscountSlab))
    session.add_all(
        DiscountSlab(id=new_id("slb"), min_credits=slab.min_credits, percent_bps=slab.percent_bps)
        for slab in slabs
    )
    await session.flush()
    await _audit(
        session, actor, "discount_slabs.replace", "discount_slabs", None, {"slabs": before}, {"slabs": after}
    )
    return await discount_slabs(session)


# ---------------------------------------------------------------- offers


OFFER_FIELDS = frozenset(
    {"name", "description", "percent_bps", "bonus_credits", "plan_codes", "starts_at", "ends_at", "active"}
)


def is_offer_live(offer: Offer, now: datetime) -> bool:
    """Active, not archived, and ``starts_at <= now < ends_at`` (an open side always holds)."""
    return (
        offer.active
        and offer.archived_at is None
        and (offer.starts_at is None or offer.starts_at <= now)
        and (offer.ends_at is None or now < offer.ends_at)
    )


def _live_offers(now: datetime) -> Select[Offer]:
    return _for_sale(select(Offer), Offer).where(
        or_(Offer.starts_at.is_(None), Offer.starts_at <= now),
        or_(Offer.ends_at.is_(None), Offer.ends_at > now),
    )


async def active_offers(session: AsyncSession, now: datetime) -> list[Offer]:
    """The offers live at ``now``, oldest first."""
    return list((await session.scalars(_live_offers(now).order_by(Offer.id))).all())


async def list_offers(session: AsyncSession, *, params: PageParams) -> Page[Offer]:
    """Every offer (archived, past and future ones too), newest first: the admin's list."""
    return await paginate(session, select(Offer), Offer.id, params)


async def get_offer(session: AsyncSession, offer_id: str, *, lock: bool = False) -> Offer:
    """An offer by id; ``lock`` for a change."""
    offer = await _one(session, select(Offer).where(Offer.id == offer_id), lock=lock)
    if offer is None:
        raise NotFound(f"No offer {offer_id}.", param="offer_id")
    return offer


def _check_offer_values(kind: str, percent_bps: int | None, bonus_credits: int | None) -> None:
    if kind == "percent_off":
        if percent_bps is None:
            raise InvalidRequest(
                "A percent_off offer needs a percent.", code="field_required_for_kind", param="percent"
            )
        if bonus_credits is not None:
            raise InvalidRequest(
                "A percent_off offer has no bonus_credits.", code="field_not_for_kind", param="bonus_credits"
            )
        if not 1 <= percent_bps <= 9999:
            raise InvalidRequest(
                "An offer's percent must be above 0 and below 100.", code="invalid_percent", param="percent"
            )
    else:
        if bonus_credits is None:
            raise InvalidRequest(
                "A bonus_credits offer needs bonus_credits.",
                code="field_required_for_kind",
                param="bonus_credits",
            )
        if percent_bps is not None:
            raise InvalidRequest(
                "A bonus_credits offer has no percent.", code="field_not_for_kind", param="percent"
            )


async def create_offer(
    session: AsyncSession,
    *,
    actor: audit_service.Actor,
    name: str,
    kind: str,
    description: str = "",
    percent_bps: int | None = None,
    bonus_credits: int | None = None,
    plan_codes: Sequence[str] | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    active: bool = True,
) -> Offer:
    _check_offer_values(kind, percent_bps, bonus_credits)
    _check_window(starts_at, ends_at)
    offer = Offer(
        id=new_id("ofr"),
        name=name,
        description=description,
        kind=kind,
        percent_bps=percent_bps,
        bonus_credits=bonus_credits,
        plan_codes=await _check_plan_codes(session, plan_codes),
        starts_at=starts_at,
        ends_at=ends_at,
        active=active,
    )
    return await _created(session, offer, actor=actor)


async def update_offer(
    session: AsyncSession, *, offer_id: str, actor: audit_service.Actor, changes: Mapping[str, Any]
) -> Offer:
    """Change the fields in ``changes`` (a subset of ``OFFER_FIELDS``; the kind stays). ``plan_codes``,
    ``starts_at`` and ``ends_at`` may be set to None (every plan; an open window side). An archived offer
    cannot change (409 ``offer_archived``)."""
    _refuse_unknown(changes, OFFER_FIELDS, "offer")
    offer = await get_offer(session, offer_id, lock=True)
    _refuse_archived(offer)
    _refuse_nulls(changes, ("name", "description", "active"))
    values = {name: changes.get(name, getattr(offer, name)) for name in OFFER_FIELDS}
    _check_offer_values(
        offer.kind,
        changes.get("percent_bps", offer.percent_bps if offer.kind == "percent_off" else None),
        changes.get("bonus_credits", offer.bonus_credits if offer.kind == "bonus_credits" else None),
    )
    _check_window(values["starts_at"], values["ends_at"])
    if "plan_codes" in changes:
        values["plan_codes"] = await _check_plan_codes(session, changes["plan_codes"])
    return await _updated(session, offer, {name: values[name] for name in changes}, actor=actor)


async def archive_offer(session: AsyncSession, *, offer_id: str, actor: audit_service.Actor) -> Offer:
    """An archived offer no longer applies and cannot change; archiving twice records nothing."""
    return await _archived(session, await get_offer(session, offer_id, lock=True), actor=actor)


# ---------------------------------------------------------------- coupons
# Coupons (admin CRUD, allotment to users), whether a coupon may be used (``check_coupon``), and redemption
# reservations for orders. A use counts while it is redeemed, or reserved and not past its ``expires_at``.

COUPON_KINDS = ("percent_off", "amount_off", "bonus_credits")
RESERVED_COUPON_CODES = frozenset({"VALIDATE"})  # POST /v1/coupons/validate
COUPON_VISIBILITIES = ("public", "assigned")
COUPON_FIELDS = frozenset(
    {
        "description",
        "percent_bps",
        "amount_off",
        "bonus_credits",
        "plan_codes",
        "min_amount",
        "max_redemptions",
        "max_per_user",
        "starts_at",
        "ends_at",
        "visibility",
        "active",
    }
)


def _check_coupon_values(
    kind: str,
    percent_bps: int | None,
    amount_off: Mapping[str, int],
    bonus_credits: int | None,
    visibility: str,
) -> None:
    """Each kind takes its own value and none of the others'."""
    given = {
        "percent": percent_bps is not None,
        "amount_off": bool(amount_off),
        "bonus_credits": bonus_credits is not None,
    }
    needed = {"percent_off": "percent", "amount_off": "amount_off", "bonus_credits": "bonus_credits"}[kind]
    if not given[needed]:
        raise InvalidRequest(f"A {kind} coupon needs {needed}.", code="field_required_for_kind", param=needed)
    for other, present in given.items():
        if other != needed and present:
            raise InvalidRequest(f"A {kind} coupon has no {other}.", code="field_not_for_kind", param=other)
    if visibility not in COUPON_VISIBILITIES:
        raise InvalidRequest(f"Unknown visibility {visibility!r}.", code="invalid_field", param="visibility")
    if percent_bps is not None and not 1 <= percent_bps <= pricing.BPS:
        raise InvalidRequest(
            "A coupon's percent must be above 0 and at most 100.", code="invalid_percent", param="percent"
        )


async def get_coupon(
    session: AsyncSession, code: str, *, param: str = "coupon", lock: bool = False
) -> Coupon:
    """A coupon by code, case-insensitively, archived ones too; ``param`` names where the code came from (the
    body's ``coupon``, or the path's ``code``). ``lock`` for a change: every change to a coupon's uses or
    assignments serialises on its row."""
    stmt = select(Coupon).where(Coupon.code == normalize_coupon_code(code))
    coupon = await _one(session, stmt, lock=lock)
    if coupon is None:
        raise pricing.CouponNotFound(f"No coupon {code}.", param=param)
    return coupon


async def list_coupons(session: AsyncSession, *, params: PageParams) -> Page[Coupon]:
    """Every coupon (archived, past and future ones too), newest first: the admin's list."""
    return await paginate(session, select(Coupon), Coupon.id, params)


async def create_coupon(
    session: AsyncSession,
    *,
    actor: audit_service.Actor,
    code: str,
    kind: str,
    description: str = "",
    percent_bps: int | None = None,
    amount_off: Mapping[str, int] | None = None,
    bonus_credits: int | None = None,
    plan_codes: Sequence[str] | None = None,
    min_amount: Mapping[str, int] | None = None,
    max_redemptions: int | None = None,
    max_per_user: int | None = None,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    visibility: str = "public",
    active: bool = True,
) -> Coupon:
    if kind not in COUPON_KINDS:
        raise InvalidRequest(f"Unknown coupon kind {kind!r}.", code="invalid_field", param="kind")
    amounts_off = _currency_amounts(amount_off, "amount_off")
    _check_coupon_values(kind, percent_bps, amounts_off, bonus_credits, visibility)
    _check_window(starts_at, ends_at)
    code = normalize_coupon_code(code)
    if code in RESERVED_COUPON_CODES:
        raise InvalidRequest(f"{code} cannot be a coupon code.", code="reserved_code", param="code")
    if await session.scalar(select(Coupon.id).where(Coupon.code == code)) is not None:
        raise Conflict(f"A coupon with code {code} exists.", code="coupon_code_taken", param="code")
    coupon = Coupon(
        id=new_id("cpn"),
        code=code,
        description=description,
        kind=kind,
        percent_bps=percent_bps,
        amount_off=amounts_off,
        bonus_credits=bonus_credits,
        plan_codes=await _check_plan_codes(session, plan_codes),
        min_amount=_currency_amounts(min_amount, "min_amount"),
        max_redemptions=max_redemptions,
        max_per_user=max_per_user,
        starts_at=starts_at,
        ends_at=ends_at,
        visibility=visibility,
        active=active,
    )
    return await _created(session, coupon, actor=actor)


async def update_coupon(
    session: AsyncSession, *, code: str, actor: audit_service.Actor, changes: Mapping[str, Any]
) -> Coupon:
    """Change the fields in ``changes`` (a subset of ``COUPON_FIELDS``; the code and kind stay). ``plan_codes``,
    ``min_amount``, ``max_redemptions``, ``max_per_user``, ``starts_at`` and ``ends_at`` may be None (no
    restriction). Limits may go below the uses already counted: the coupon is then exhausted, and uses already
    made stay. An archived coupon cannot change (409 ``coupon_archived``)."""
    _refuse_unknown(changes, COUPON_FIELDS, "coupon")
    coupon = await get_coupon(session, code, param="code", lock=True)
    _refuse_archived(coupon)
    _refuse_nulls(changes, ("description", "visibility", "active"))
    values = {name: changes.get(name, getattr(coupon, name)) for name in COUPON_FIELDS}
    if "amount_off" in changes:
        values["amount_off"] = _currency_amounts(changes["amount_off"], "amount_off")
    if "min_amount" in changes:
        values["min_amount"] = _currency_amounts(changes["min_amount"], "min_amount")
    _check_coupon_values(
        coupon.kind,
        values["percent_bps"],
        values["amount_off"],
        values["bonus_credits"],
        values["visibility"],
    )
    _check_window(values["starts_at"], values["ends_at"])
    if "plan_codes" in changes:
        values["plan_codes"] = await _check_plan_codes(session, changes["plan_codes"])
    return await _updated(session, coupon, {name: values[name] for name in changes}, actor=actor)


async def archive_coupon(session: AsyncSession, *, code: str, actor: audit_service.Actor) -> Coupon:
    """An archived coupon can no longer be used, reserved, allotted or changed; reservations already made can
    still be redeemed (their orders were priced with it). Archiving twice records nothing."""
    return await _archived(session, await get_coupon(session, code, param="code", lock=True), actor=actor)


# ---------------------------------------------------------------- coupon uses


def _counting(now: datetime) -> Any:
    """The redemptions that use up a coupon at ``now``: redeemed, or reserved and not lapsed."""
    return or_(
        CouponRedemption.status == "redeemed",
        and_(CouponRedemption.status == "reserved", CouponRedemption.expires_at > now),
    )


def _uses_count(coupon_id: Any, now: datetime, user_id: str | None = None) -> Select[Any]:
    """How many uses of the coupon ``coupon_id`` (an id, or ``Coupon.id`` in a correlated subquery) count at
    ``now``, in all or by one user."""
    stmt = (
        select(func.count())
        .select_from(CouponRedemption)
        .where(CouponRedemption.coupon_id == coupon_id, _counting(now))
    )
    return stmt.where(CouponRedemption.user_id == user_id) if user_id is not None else stmt


async def _uses(session: AsyncSession, coupon: Coupon, *, now: datetime, user_id: str | None = None) -> int:
    return int(await session.scalar(_uses_count(coupon.id, now, user_id)) or 0)


@dataclass(frozen=True)
class CouponUsage:
    redeemed: int = 0
    reserved: int = 0  # live reservations

    @property
    def used(self) -> int:
        return self.redeemed + self.reserved


async def coupon_usage(
    session: AsyncSession, coupon_ids: Sequence[str], *, now: datetime
) -> dict[str, CouponUsage]:
    """Redeemed and live reserved uses of each coupon."""
    rows = await session.execute(
        select(CouponRedemption.coupon_id, CouponRedemption.status, func.count())
        .where(CouponRedemption.coupon_id.in_(list(coupon_ids)), _counting(now))
        .group_by(CouponRedemption.coupon_id, CouponRedemption.status)
    )
    counts: dict[str, dict[str, int]] = {coupon_id: {} for coupon_id in coupon_ids}
    for coupon_id, status, count in rows:
        counts[coupon_id][status] = int(count)
    return {
        coupon_id: CouponUsage(redeemed=c.get("redeemed", 0), reserved=c.get("reserved", 0))
        for coupon_id, c in counts.items()
    }


def needs_user(coupon: Coupon) -> bool:
    """An allotted-only coupon, or one with a per-user limit, can only be used by a known user."""
    return coupon.visibility == "assigned" or coupon.max_per_user is not None


async def is_assigned(session: AsyncSession, coupon: Coupon, user_id: str) -> bool:
    found = await session.scalar(
        select(CouponAssignment.id).where(
            CouponAssignment.coupon_id == coupon.id, CouponAssignment.user_id == user_id
        )
    )
    return found is not None


def _check_open(coupon: Coupon, now: datetime) -> None:
    if coupon.archived_at is not None or not coupon.active:
        raise pricing.CouponExpired(f"Coupon {coupon.code} is no longer available.")
    if coupon.starts_at is not None and now < coupon.starts_at:
        raise pricing.CouponNotStarted(
            f"Coupon {coupon.code} can be used from {coupon.starts_at.isoformat()}.",
            starts_at=coupon.starts_at.isoformat(),
        )
    if coupon.ends_at is not None and now >= coupon.ends_at:
        raise pricing.CouponExpired(f"Coupon {coupon.code} expired at {coupon.ends_at.isoformat()}.")


async def _check_limits(session: AsyncSession, coupon: Coupon, *, user_id: str | None, now: datetime) -> None:
    if coupon.max_redemptions is not None and await _uses(session, coupon, now=now) >= coupon.max_redemptions:
        raise pricing.CouponExhausted(f"Coupon {coupon.code} has been used as many times as it may be.")
    if (
        coupon.max_per_user is not None
        and user_id is not None
        and await _uses(session, coupon, now=now, user_id=user_id) >= coupon.max_per_user
    ):
        raise pricing.CouponPerUserLimit(
            f"You have used coupon {coupon.code} as many times as one person may ({coupon.max_per_user}).",
            max_per_user=coupon.max_per_user,
        )


async def _check_usable(session: AsyncSession, coupon: Coupon, *, user_id: str | None, now: datetime) -> None:
    """The checks that do not depend on what is bought, in the order the answer names the first failing one:
    available and in its window, allotted to this user (or needing none), uses left in total and for the
    user."""
    _check_open(coupon, now)
    if needs_user(coupon):
        if user_id is None:
            raise pricing.CouponNotAssigned(f"Sign in to use coupon {coupon.code}.")
        if coupon.visibility == "assigned" and not await is_assigned(session, coupon, user_id):
            raise pricing.CouponNotAssigned(f"Coupon {coupon.code} has not been allotted to you.")
    await _check_limits(session, coupon, user_id=user_id, now=now)


async def check_coupon(
    session: AsyncSession, *, code: str, user_id: str | None, now: datetime
) -> pricing.CouponTerms:
    """The coupon's terms if ``user_id`` (None: an anonymous caller) may use it at ``now``; otherwise the
    exact reason it may not (``coupon_not_found``, ``coupon_expired``, ``coupon_not_started``,
    ``coupon_not_assigned``, ``coupon_exhausted``, ``coupon_per_user_limit``). Whether it fits the purchase
    (``coupon_not_applicable``, ``coupon_min_amount``) is the quote's to say."""
    coupon = await get_coupon(session, code)
    await _check_usable(session, coupon, user_id=user_id, now=now)
    return coupon_terms(coupon)


def coupon_terms(coupon: Coupon) -> pricing.CouponTerms:
    return pricing.CouponTerms(
        code=coupon.code,
        kind=coupon.kind,  # type: ignore[arg-type]  # the kind CHECK constraint holds it to CouponKind
        percent_bps=coupon.percent_bps or 0,
        amount_off=dict(coupon.amount_off),
        bonus_credits=coupon.bonus_credits or 0,
        plan_codes=tuple(coupon.plan_codes) if coupon.plan_codes is not None else None,
        min_amount=dict(coupon.min_amount),
    )


# ---------------------------------------------------------------- allotment


async def assign_coupon(
    session: AsyncSession, *, code: str, user_ids: Sequence[str], actor: audit_service.Actor
) -> list[CouponAssignment]:
    """Allot the coupon to each user (a user already allotted stays as is); every user must exist. Answers the
    assignments of those users, oldest first. One audit entry names the users newly allotted."""
    coupon = await get_coupon(session, code, param="code", lock=True)
    _refuse_archived(coupon)
    wanted: list[str] = []
    for index, user_id in enumerate(user_ids):
        try:
            user = await auth_service.get_user(session, user_id)
        except NotFound:
            raise NotFound(f"No user {user_id}.", param=f"user_ids.{index}") from None
        if user.id not in wanted:
            wanted.append(user.id)
    existing = {
        a.user_id: a
        for a in await session.scalars(
            select(CouponAssignment).where(
                CouponAssignment.coupon_id == coupon.id, CouponAssignment.user_id.in_(wanted)
            )
        )
    }
    added = [user_id for user_id in wanted if user_id not in existing]
    for user_id in added:
        existing[user_id] = CouponAssignment(id=new_id("cpa"), coupon_id=coupon.id, user_id=user_id)
        session.add(existing[user_id])
    if added:
        await session.flush()
        await _audit(
            session,
            actor,
            "coupon.assign",
            "coupon",
            coupon.id,
            None,
            {"code": coupon.code, "user_ids": added},
        )
    return sorted((existing[user_id] for user_id in wanted), key=lambda a: a.id)


async def withdraw_coupon(
    session: AsyncSession, *, code: str, user_id: str, actor: audit_service.Actor
) -> CouponAssignment:
    """Take the coupon back from the user. Reservations they already made (orders in progress) stay. An
    archived coupon's allotment does not change any more (409 ``coupon_archived``)."""
    coupon = await get_coupon(session, code, param="code", lock=True)
    _refuse_archived(coupon)
    assignment = await session.scalar(
        select(CouponAssignment).where(
            CouponAssignment.coupon_id == coupon.id, CouponAssignment.user_id == user_id
        )
    )
    if assignment is None:
        raise NotFound(
            f"Coupon {coupon.code} is not allotted to {user_id}.",
            code="coupon_assignment_not_found",
            param="user_id",
        )
    await session.delete(assignment)
    await session.flush()
    await _audit(
        session,
        actor,
        "coupon.unassign",
        "coupon",
        coupon.id,
        {"code": coupon.code, "user_ids": [user_id]},
        None,
    )
    return assignment


async def list_assignments(session: AsyncSession, *, code: str, params: PageParams) -> Page[CouponAssignment]:
    """Who the coupon is allotted to, newest first."""
    coupon = await get_coupon(session, code, param="code")
    stmt = select(CouponAssignment).where(CouponAssignment.coupon_id == coupon.id)
    return await paginate(session, stmt, CouponAssignment.id, params)


async def my_coupons(
    session: AsyncSession, *, user_id: str, now: datetime, params: PageParams
) -> Page[Coupon]:
    """The coupons allotted to the user that they can still use, now or later: available, not ended, with
    uses left in total and for them. Newest coupon first."""
    stmt = (
        select(Coupon)
        .join(CouponAssignment, CouponAssignment.coupon_id == Coupon.id)
        .where(
            CouponAssignment.user_id == user_id,
            Coupon.active.is_(True),
            Coupon.archived_at.is_(None),
            or_(Coupon.ends_at.is_(None), Coupon.ends_at > now),
            or_(Coupon.max_redemptions.is_(None), _uses_subquery(now) < Coupon.max_redemptions),
            or_(Coupon.max_per_user.is_(None), _uses_subquery(now, user_id) < Coupon.max_per_user),
        )
    )
    return await paginate(session, stmt, Coupon.id, params)


def _uses_subquery(now: datetime, user_id: str | None = None) -> Any:
    return _uses_count(Coupon.id, now, user_id).correlate(Coupon).scalar_subquery()


async def uses_left(
    session: AsyncSession, coupons: Sequence[Coupon], *, user_id: str, now: datetime
) -> dict[str, int | None]:
    """How many more times the user may use each coupon (None: no limit)."""
    left: dict[str, int | None] = {}
    for coupon in coupons:
        limits = []
        if coupon.max_redemptions is not None:
            limits.append(coupon.max_redemptions - await _uses(session, coupon, now=now))
        if coupon.max_per_user is not None:
            limits.append(coupon.max_per_user - await _uses(session, coupon, now=now, user_id=user_id))
        left[coupon.id] = max(0, min(limits)) if limits else None
    return left


# ---------------------------------------------------------------- the quote


async def build_quote(
    session: AsyncSession,
    *,
    currency: str,
    settings: Settings,
    now: datetime,
    plan_code: str | None = None,
    quantity: int | None = None,
    coupon_code: str | None = None,
    user_id: str | None = None,
) -> pricing.Quote:
    """The quote for a plan (by code) or a custom quantity of whole credits in ``currency`` at ``now``, with
    the coupon if given (``user_id`` None: an anonymous caller). This is the only price path: the payments
    issue charges exactly what it answers."""
    currency = check_currency(currency, "currency")
    plan_terms = None
    if plan_code is not None:
        plan = await get_plan_by_code(session, plan_code)
        if not is_purchasable(plan):
            raise InvalidRequest(
                f"Plan {plan.code} is not for sale.", code="plan_not_available", param="plan"
            )
        plan_terms = pricing.PlanTerms(
            code=plan.code, credits=plan.credits, bonus_credits=plan.bonus_credits, prices=plan_prices(plan)
        )
    unit = await unit_price(session, currency) if plan_code is None else None
    catalog = pricing.Catalog(
        unit_price=(
            pricing.UnitPriceTerms(unit.currency, unit.unit_amount, unit.min_quantity, unit.max_quantity)
            if unit is not None
            else None
        ),
        slabs=tuple(pricing.SlabTerms(s.min_credits, s.percent_bps) for s in await discount_slabs(session)),
        offers=tuple(
            pricing.OfferTerms(
                id=offer.id,
                kind=offer.kind,  # type: ignore[arg-type]  # the kind CHECK constraint holds it
                percent_bps=offer.percent_bps or 0,
                bonus_credits=offer.bonus_credits or 0,
                plan_codes=tuple(offer.plan_codes) if offer.plan_codes is not None else None,
            )
            for offer in await active_offers(session, now)
        ),
        credit_scale=settings.credit_scale,
        tax=pricing.TaxTerms(percent=Decimal(settings.tax_percent), inclusive=settings.tax_inclusive),
    )
    coupon = None
    if coupon_code is not None:
        coupon = await check_coupon(session, code=coupon_code, user_id=user_id, now=now)
    return pricing.quote(
        pricing.Purchase(currency=currency, plan=plan_terms, quantity=quantity), catalog, coupon
    )


# ---------------------------------------------------------------- reservations (orders)


async def _redemption_of(session: AsyncSession, order_id: str) -> CouponRedemption | None:
    return await session.scalar(
        select(CouponRedemption)
        .where(CouponRedemption.order_id == order_id)
        .execution_options(populate_existing=True)
    )


async def _lock_coupon_of(session: AsyncSession, reservation: CouponRedemption) -> Coupon:
    """The reservation's coupon, locked: its uses change one transaction at a time."""
    coupon = await _locked(session, select(Coupon).where(Coupon.id == reservation.coupon_id))
    assert coupon is not None  # coupons are never deleted
    return coupon


async def reserve_coupon(
    session: AsyncSession,
    *,
    code: str,
    user_id: str | None,
    order_id: str,
    expires_at: datetime,
    now: datetime,
) -> CouponRedemption:
    """Reserve one use of the coupon for an order in progress until ``expires_at`` (the order's own expiry).

    The coupon row is locked first, so concurrent reservations count one after another and a limit is never
    exceeded. Reserving again for the same order answers its reservation (with the new ``expires_at``); a
    reservation that was released or lapsed is taken again if the coupon still allows it. The order must be
    priced with the coupon (``build_quote``) in the same transaction: this checks the uses, not the fit."""
    if expires_at <= now:
        raise InvalidRequest(
            "A reservation must expire in the future.", code="invalid_expiry", param="expires_at"
        )
    coupon = await get_coupon(session, code, lock=True)
    existing = await _redemption_of(session, order_id)
    if existing is not None:
        if existing.coupon_id != coupon.id or existing.user_id != user_id:
            raise Conflict(
                f"Order {order_id} already holds another coupon reservation.",
                code="order_coupon_mismatch",
                param="order_id",
            )
        if existing.status == "redeemed":
            return existing
        if existing.status == "reserved" and existing.expires_at > now:
            existing.expires_at = expires_at
            await session.flush()
            return existing
    await _check_usable(session, coupon, user_id=user_id, now=now)
    if existing is not None:  # released, or lapsed: it counted for nothing until now
        existing.status, existing.expires_at, existing.released_at = "reserved", expires_at, None
        await session.flush()
        return existing
    reservation = CouponRedemption(
        id=new_id("rsv"),
        coupon_id=coupon.id,
        user_id=user_id,
        order_id=order_id,
        status="reserved",
        expires_at=expires_at,
        created_at=now,
    )
    session.add(reservation)
    try:
        await session.flush()
    except IntegrityError:  # the same order reserving two coupons at the same moment (PostgreSQL)
        raise Conflict(
            f"Order {order_id} already holds a coupon reservation.",
            code="order_coupon_mismatch",
            param="order_id",
        ) from None
    return reservation


async def redeem_reservation(
    session: AsyncSession, order_id: str, *, now: datetime | None = None
) -> CouponRedemption:
    """The order is paid: its reservation becomes a redemption (for good). Redeeming twice answers the same.
    A reservation that lapsed or was released no longer held its use, so it takes one again only if the
    coupon's limits still allow it (``coupon_exhausted`` / ``coupon_per_user_limit`` otherwise)."""
    now = now or utcnow()
    found = await _redemption_of(session, order_id)
    if found is None:
        raise NotFound(
            f"Order {order_id} holds no coupon reservation.", code="reservation_not_found", param="order_id"
        )
    coupon = await _lock_coupon_of(session, found)
    reservation = await _redemption_of(session, order_id)
    assert reservation is not None  # redemptions are never deleted
    if reservation.status == "redeemed":
        return reservation
    if not (reservation.status == "reserved" and reservation.expires_at > now):
        await _check_limits(session, coupon, user_id=reservation.user_id, now=now)
    reservation.status, reservation.redeemed_at = "redeemed", now
    await session.flush()
    return reservation


async def release_reservation(
    session: AsyncSession, order_id: str, *, now: datetime | None = None
) -> CouponRedemption | None:
    """The order failed, expired or was cancelled: its reserved use goes back to the coupon. An order without
    a reservation answers None; releasing twice answers the same; a redeemed one cannot be released (409
    ``reservation_redeemed``: a paid order's use stays used, refunded or not)."""
    now = now or utcnow()
    found = await _redemption_of(session, order_id)
    if found is None:
        return None
    await _lock_coupon_of(session, found)
    reservation = await _redemption_of(session, order_id)
    assert reservation is not None
    if reservation.status == "redeemed":
        raise Conflict(
            f"Order {order_id}'s coupon use was redeemed; it cannot be released.",
            code="reservation_redeemed",
            param="order_id",
        )
    if reservation.status == "reserved":
        reservation.status, reservation.released_at = "released", now
        await session.flush()
    return reservation


# ---------------------------------------------------------------- seeding (``prepaid demo``)


@dataclass(frozen=True)
class CatalogSeed:
    """A catalog to seed: plans, meters and coupons as the arguments of ``create_plan``, ``create_meter`` and
    ``create_coupon`` (without ``actor``), unit prices, and slabs."""

    plans: Sequence[Mapping[str, Any]] = ()
    unit_prices: Sequence[UnitPriceInput] = ()
    slabs: Sequence[SlabInput] = ()
    meters: Sequence[Mapping[str, Any]] = ()
    coupons: Sequence[Mapping[str, Any]] = ()


async def seed_catalog(session: AsyncSession, *, actor: audit_service.Actor, seed: CatalogSeed) -> None:
    """Add what the catalog lacks, idempotently: plans, meters and coupons by code, unit prices by currency,
    and the slabs only when there are none. What exists is left as it is, so an admin's later changes survive
    a second run. Each addition is an ordinary create (validated, and in the audit log)."""
    for plan in seed.plans:
        if await session.scalar(select(Plan.id).where(Plan.code == normalize_code(plan["code"]))) is None:
            await create_plan(session, actor=actor, **plan)
    current = await list_unit_prices(session)
    have = {price.currency for price in current}
    missing = [price for price in seed.unit_prices if price.currency not in have]
    if missing:
        kept = [UnitPriceInput(p.currency, p.unit_amount, p.min_quantity, p.max_quantity) for p in current]
        await replace_unit_prices(session, actor=actor, prices=kept + missing)
    if seed.slabs and not await discount_slabs(session):
        await replace_discount_slabs(session, actor=actor, slabs=seed.slabs)
    for meter in seed.meters:
        if await session.scalar(select(Meter.id).where(Meter.code == normalize_code(meter["code"]))) is None:
            await create_meter(session, actor=actor, **meter)
    for coupon in seed.coupons:
        code = normalize_coupon_code(coupon["code"])
        if await session.scalar(select(Coupon.id).where(Coupon.code == code)) is None:
            await create_coupon(session, actor=actor, **coupon)
