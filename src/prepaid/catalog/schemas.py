"""Catalog request and answer bodies.

Prices of plans and unit prices are integers in the currency's minor unit (paise, cents), named by their
currency; credits and meter prices are integers in the credit asset's minor unit (``PREPAID_CREDIT_SCALE``).
Percentages are decimals with at most two places (``"7.5"`` or ``7.5``), read exactly (never as a float) and
kept as basis points: answers carry both ``percent`` (a string) and ``percent_bps``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, StrictBool, StringConstraints, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from prepaid.catalog import service
from prepaid.catalog.models import DiscountSlab, Meter, Offer, Plan, UnitPrice
from prepaid.errors import InvalidRequest
from prepaid.money import CREDIT, CURRENCY_MINOR_UNITS
from prepaid.schemas import Input, Output, Timestamp

# Far inside BIGINT, and inside the integers a JavaScript client reads exactly (2**53).
MAX_AMOUNT = 10**15
MAX_LIST = 100


def _json_integer(value: Any) -> Any:
    """A JSON integer (``5``, or ``5.0``); never a string or a boolean."""
    if isinstance(value, (str, bool)):
        raise ValueError("expected an integer")
    return value


_FLOAT_NOISE = Decimal("1e-9")


def _percent(value: Any) -> Decimal:
    """A percentage as an exact decimal with at most two places, from a JSON number or a string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError('expected a percentage such as 7.5 or "7.5"')
    try:
        # repr of a float is the shortest text that reads back as it: 7.5 -> "7.5", never 7.4999...
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ValueError('expected a percentage such as 7.5 or "7.5"') from None
    if not number.is_finite():
        raise ValueError("expected a finite percentage")
    if isinstance(value, float) and abs(number - number.quantize(Decimal("0.01"))) <= _FLOAT_NOISE:
        # A JSON number computed in binary (0.57 as 57 * 0.01 = 0.5700000000000001) means its two places.
        number = number.quantize(Decimal("0.01"))
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and number != number.quantize(Decimal("0.01")):
        raise ValueError("a percentage has at most two decimal places")
    if not Decimal(0) < number < Decimal(100):
        raise ValueError("a percentage must be above 0 and below 100")
    return number.quantize(Decimal("0.01"))


def to_bps(percent: Decimal) -> int:
    return int(percent * 100)


def percent_text(bps: int) -> str:
    """Basis points as the shortest decimal text: 750 -> "7.5", 1000 -> "10", 1 -> "0.01"."""
    whole, cents = divmod(bps, 100)
    return f"{whole}.{cents:02d}".rstrip("0").rstrip(".")


_Integer = BeforeValidator(_json_integer)
Percent = Annotated[
    Decimal,
    BeforeValidator(_percent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100, "multipleOf": 0.01},
                {"type": "string", "pattern": r"^([1-9][0-9]?(\.[0-9]{1,2})?|0?\.(0[1-9]|[1-9][0-9]?))$"},
            ],
            "description": 'Above 0 and below 100, at most two decimal places: 7.5 or "7.5".',
        }
    ),
]
Credits = Annotated[
    int, Field(gt=0, le=MAX_AMOUNT, description="In the credit asset's smallest unit."), _Integer
]
BonusCredits = Annotated[
    int, Field(ge=0, le=MAX_AMOUNT, description="In the credit asset's smallest unit."), _Integer
]
MoneyAmount = Annotated[
    int, Field(gt=0, le=MAX_AMOUNT, description="In the currency's minor unit (paise, cents)."), _Integer
]
Quantity = Annotated[int, Field(ge=1, le=MAX_AMOUNT, description="Whole credits."), _Integer]
MeterPrice = Annotated[
    int, Field(ge=0, le=MAX_AMOUNT, description="In the credit asset's smallest unit."), _Integer
]
Per = Annotated[int, Field(ge=1, le=MAX_AMOUNT), _Integer]
SortOrder = Annotated[int, Field(ge=-1_000_000, le=1_000_000), _Integer]
Code = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"),
    Field(
        description="Letters, digits, '_', '.', ':' and '-'; stored lower-case, matched case-insensitively."
    ),
]
Currency = Annotated[str, StringConstraints(min_length=3, max_length=3, pattern=r"^[A-Za-z]{3}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")]
Description = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]
Unit = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z_]*$"),
    Field(description="What a quantity counts: call, token, image, second, minute, request, character, ..."),
]
Prices = Annotated[
    dict[Annotated[str, StringConstraints(max_length=8)], MoneyAmount],
    Field(
        min_length=1,
        max_length=len(CURRENCY_MINOR_UNITS),
        description='Currency -> price in its minor unit, e.g. {"INR": 100000}.',
    ),
]


class _Patch(Input):
    """A partial update: only the fields sent change; ``NOT_NULL`` fields cannot be sent as null."""

    NOT_NULL: ClassVar[frozenset[str]] = frozenset()

    def changes(self) -> dict[str, Any]:
        values = {field: getattr(self, field) for field in self.model_fields_set}
        for field, value in values.items():
            if value is None and field in self.NOT_NULL:
                raise InvalidRequest(f"{field} cannot be null.", code="invalid_field", param=field)
        return values


# ---------------------------------------------------------------- plans


class PlanCreate(Input):
    code: Code
    name: Name
    description: Description = ""
    credits: Credits
    bonus_credits: BonusCredits = 0
    prices: Prices
    popular: StrictBool = False
    active: StrictBool = True
    sort_order: SortOrder = 0


class PlanUpdate(_Patch):
    """Only the fields sent change; ``prices`` replaces the whole map. The code never changes."""

    NOT_NULL = frozenset(
        {"name", "description", "credits", "bonus_credits", "prices", "popular", "active", "sort_order"}
    )

    name: Name | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    credits: Credits | SkipJsonSchema[None] = None
    bonus_credits: BonusCredits | SkipJsonSchema[None] = None
    prices: Prices | SkipJsonSchema[None] = None
    popular: StrictBool | SkipJsonSchema[None] = None
    active: StrictBool | SkipJsonSchema[None] = None
    sort_order: SortOrder | SkipJsonSchema[None] = None


class PlanRead(Output):
    """``credits`` and ``bonus_credits`` in the credit asset's smallest unit; ``prices`` maps each currency to
    the plan's price in its minor unit."""

    object: Literal["plan"] = "plan"
    id: str
    code: str
    name: str
    description: str
    asset: str = CREDIT
    credits: int
    bonus_credits: int
    prices: dict[str, int]
    popular: bool
    active: bool
    sort_order: int
    archived_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, plan: Plan) -> PlanRead:
        return cls(
            id=plan.id,
            code=plan.code,
            name=plan.name,
            description=plan.description,
            credits=plan.credits,
            bonus_credits=plan.bonus_credits,
            prices=service.plan_prices(plan),
            popular=plan.popular,
            active=plan.active,
            sort_order=plan.sort_order,
            archived_at=plan.archived_at,
            created_at=plan.created_at,
            updated_at=plan.updated_at,
        )


# ---------------------------------------------------------------- unit prices


class UnitPriceItem(Input):
    currency: Currency
    unit_amount: MoneyAmount = Field(
        description="The price of one whole credit, in the currency's minor unit."
    )
    min_quantity: Quantity = 1
    max_quantity: Quantity = MAX_AMOUNT


class UnitPricesReplace(Input):
    unit_prices: list[UnitPriceItem] = Field(max_length=len(CURRENCY_MINOR_UNITS))

    def items(self) -> list[service.UnitPriceInput]:
        return [
            service.UnitPriceInput(item.currency, item.unit_amount, item.min_quantity, item.max_quantity)
            for item in self.unit_prices
        ]


class UnitPriceRead(Output):
    """The price of one whole credit in ``currency`` (minor units), for custom quantities of
    ``min_quantity`` to ``max_quantity`` whole credits."""

    object: Literal["unit_price"] = "unit_price"
    currency: str
    unit_amount: int
    min_quantity: int
    max_quantity: int
    updated_at: datetime

    @classmethod
    def of(cls, price: UnitPrice) -> UnitPriceRead:
        return cls.model_validate(price)


# ---------------------------------------------------------------- meters


class MeterCreate(Input):
    """``kind: unit``: ``price`` credits (smallest unit) per ``per`` units of ``unit``. ``kind: model``: prices
    per million tokens; ``cached_input_price`` defaults to ``input_price``."""

    code: Code
    name: Name
    description: Description = ""
    kind: Literal["unit", "model"]
    unit: Unit | None = None
    price: MeterPrice | None = None
    per: Per | None = None
    input_price: MeterPrice | None = None
    output_price: MeterPrice | None = None
    cached_input_price: MeterPrice | None = None
    active: StrictBool = True


class MeterUpdate(_Patch):
    """Only the fields sent change; the code and kind never do. New prices apply to usage received after."""

    NOT_NULL = frozenset(
        {"name", "description", "unit", "price", "per", "input_price", "output_price", "cached_input_price"}
        | {"active"}
    )

    name: Name | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    unit: Unit | SkipJsonSchema[None] = None
    price: MeterPrice | SkipJsonSchema[None] = None
    per: Per | SkipJsonSchema[None] = None
    input_price: MeterPrice | SkipJsonSchema[None] = None
    output_price: MeterPrice | SkipJsonSchema[None] = None
    cached_input_price: MeterPrice | SkipJsonSchema[None] = None
    active: StrictBool | SkipJsonSchema[None] = None


class MeterRead(Output):
    """Prices in the credit asset's smallest unit: a unit meter ``price`` per ``per`` units; a model meter
    ``input_price``, ``output_price`` and ``cached_input_price`` per million tokens."""

    object: Literal["meter"] = "meter"
    id: str
    code: str
    name: str
    description: str
    kind: Literal["unit", "model"]
    unit: str
    asset: str = CREDIT
    price: int | None
    per: int | None
    input_price: int | None
    output_price: int | None
    cached_input_price: int | None
    active: bool
    archived_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, meter: Meter) -> MeterRead:
        return cls.model_validate(meter)


# ---------------------------------------------------------------- discount slabs


class SlabItem(Input):
    min_credits: Credits = Field(description="Buying at least this many credits (smallest unit) reaches it.")
    percent: Percent


class SlabsReplace(Input):
    slabs: list[SlabItem] = Field(max_length=MAX_LIST)

    def items(self) -> list[service.SlabInput]:
        return [service.SlabInput(slab.min_credits, to_bps(slab.percent)) for slab in self.slabs]


class SlabRead(Output):
    object: Literal["discount_slab"] = "discount_slab"
    id: str
    asset: str = CREDIT
    min_credits: int
    percent: str
    percent_bps: int

    @classmethod
    def of(cls, slab: DiscountSlab) -> SlabRead:
        return cls(
            id=slab.id,
            min_credits=slab.min_credits,
            percent=percent_text(slab.percent_bps),
            percent_bps=slab.percent_bps,
        )


# ---------------------------------------------------------------- offers


PlanCodes = Annotated[list[Code], Field(min_length=1, max_length=MAX_LIST)]


class OfferCreate(Input):
    """``percent_off`` takes ``percent``; ``bonus_credits`` takes ``bonus_credits``. ``plan_codes`` null (the
    default) covers every plan and custom quantities. A null ``starts_at``/``ends_at`` leaves that side open."""

    name: Name
    description: Description = ""
    kind: Literal["percent_off", "bonus_credits"]
    percent: Percent | None = None
    bonus_credits: Credits | None = None
    plan_codes: PlanCodes | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    active: StrictBool = True


class OfferUpdate(_Patch):
    """Only the fields sent change (the kind never does); ``plan_codes``, ``starts_at`` and ``ends_at`` may be
    set to null."""

    NOT_NULL = frozenset({"name", "description", "active", "percent", "bonus_credits"})

    name: Name | SkipJsonSchema[None] = None
    description: Description | SkipJsonSchema[None] = None
    percent: Percent | SkipJsonSchema[None] = None
    bonus_credits: Credits | SkipJsonSchema[None] = None
    plan_codes: PlanCodes | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    active: StrictBool | SkipJsonSchema[None] = None

    def offer_changes(self) -> dict[str, Any]:
        values = self.changes()
        if "percent" in values:
            values["percent_bps"] = to_bps(values.pop("percent"))
        return values


class OfferRead(Output):
    """``percent`` / ``percent_bps`` for ``percent_off``; ``bonus_credits`` (credit smallest unit) for
    ``bonus_credits``. ``plan_codes`` null: every plan and custom quantities."""

    object: Literal["offer"] = "offer"
    id: str
    name: str
    description: str
    kind: Literal["percent_off", "bonus_credits"]
    percent: str | None
    percent_bps: int | None
    asset: str = CREDIT
    bonus_credits: int | None
    plan_codes: list[str] | None
    starts_at: datetime | None
    ends_at: datetime | None
    active: bool
    archived_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, offer: Offer) -> OfferRead:
        return cls(
            id=offer.id,
            name=offer.name,
            description=offer.description,
            kind=offer.kind,
            percent=percent_text(offer.percent_bps) if offer.percent_bps is not None else None,
            percent_bps=offer.percent_bps,
            bonus_credits=offer.bonus_credits,
            plan_codes=list(offer.plan_codes) if offer.plan_codes is not None else None,
            starts_at=offer.starts_at,
            ends_at=offer.ends_at,
            active=offer.active,
            archived_at=offer.archived_at,
            created_at=offer.created_at,
            updated_at=offer.updated_at,
        )


# ================================================================ coupons (catalog part B)

from pydantic import ConfigDict, WithJsonSchema  # noqa: E402

from prepaid.catalog import pricing  # noqa: E402
from prepaid.catalog.models import Coupon, CouponAssignment  # noqa: E402

_PERCENT_ERROR = 'expected a percentage above 0 and at most 100, such as 15 or "12.5"'
_CENT = Decimal("0.01")
_FLOAT_NOISE = Decimal("1e-9")


def _coupon_percent(value: Any) -> Decimal:
    """A coupon's percentage, above 0 and at most 100 (a free purchase), with at most two decimals, read
    exactly: a string as written, a JSON number by its shortest text (``0.57``, and ``0.5700000000000001``,
    which is how a float holds 0.57, as 0.57)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(_PERCENT_ERROR)
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        cents = number.quantize(_CENT)
    except InvalidOperation:
        raise ValueError(_PERCENT_ERROR) from None
    if not number.is_finite():
        raise ValueError(_PERCENT_ERROR)
    if number != cents and not (isinstance(value, float) and abs(number - cents) < _FLOAT_NOISE):
        raise ValueError("a percentage has at most two decimal places")
    if not Decimal(0) < cents <= Decimal(100):
        raise ValueError(_PERCENT_ERROR)
    return cents


CouponPercent = Annotated[
    Decimal,
    BeforeValidator(_coupon_percent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "multipleOf": 0.01},
                {
                    "type": "string",
                    "pattern": r"^(100(\.00?)?|[1-9][0-9]?(\.[0-9]{1,2})?|0?0\.(0[1-9]|[1-9][0-9]?))$",
                },
            ],
            "description": 'Above 0 and at most 100 (a free purchase), at most two decimal places: 15 or "12.5".',
        }
    ),
]
CouponCode = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$"),
    Field(description="Letters, digits, '_' and '-'; stored upper-case, matched case-insensitively."),
]
CurrencyAmounts = Annotated[
    dict[Annotated[str, StringConstraints(max_length=8)], MoneyAmount],
    Field(
        max_length=len(CURRENCY_MINOR_UNITS),
        description='Currency -> amount in its minor unit, e.g. {"INR": 50000}.',
    ),
]
Limit = Annotated[int, Field(ge=1, le=MAX_AMOUNT), _Integer]
Visibility = Literal["public", "assigned"]
CouponKind = Literal["percent_off", "amount_off", "bonus_credits"]
UserId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class CouponCreate(Input):
    """``percent_off`` takes ``percent`` (100 makes the purchase free); ``amount_off`` an amount per currency
    (capped at the price left); ``bonus_credits`` credits (smallest unit). ``plan_codes`` null (the default)
    covers every plan and custom quantities. ``min_amount`` is a minimum purchase per currency, compared with
    the subtotal before discounts (a currency not named has none). ``max_redemptions`` and ``max_per_user``
    null mean no limit. ``visibility: assigned`` coupons can be used only by the users they are allotted to."""

    code: CouponCode
    description: Description = ""
    kind: CouponKind
    percent: CouponPercent | None = None
    amount_off: CurrencyAmounts | None = None
    bonus_credits: Credits | None = None
    plan_codes: PlanCodes | None = None
    min_amount: CurrencyAmounts | None = None
    max_redemptions: Limit | None = None
    max_per_user: Limit | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    visibility: Visibility = "public"
    active: StrictBool = True


def _not_nullable(fields: frozenset[str]) -> Any:
    """Edits a model's JSON schema so that ``fields`` (typed ``X | None`` so that "not sent" can be told
    apart) are documented as they are accepted: never null."""

    def edit(schema: dict[str, Any]) -> None:
        for name in fields:
            prop = schema.get("properties", {}).get(name)
            if prop is None or "anyOf" not in prop:
                continue
            options = [option for option in prop.pop("anyOf") if option != {"type": "null"}]
            prop.pop("default", None)
            if len(options) == 1:
                prop.update(options[0])
            else:
                prop["anyOf"] = options

    return edit


class CouponUpdate(_Patch):
    """Only the fields sent change (the code and kind never do). ``plan_codes``, ``min_amount``,
    ``max_redemptions``, ``max_per_user``, ``starts_at`` and ``ends_at`` may be set to null (no restriction);
    ``amount_off`` and ``min_amount`` replace the whole map."""

    NOT_NULL = frozenset({"description", "percent", "amount_off", "bonus_credits", "visibility", "active"})
    model_config = ConfigDict(json_schema_extra=_not_nullable(NOT_NULL))

    description: Description | None = None
    percent: CouponPercent | None = None
    amount_off: CurrencyAmounts | None = None
    bonus_credits: Credits | None = None
    plan_codes: PlanCodes | None = None
    min_amount: CurrencyAmounts | None = None
    max_redemptions: Limit | None = None
    max_per_user: Limit | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    visibility: Visibility | None = None
    active: StrictBool | None = None

    def coupon_changes(self) -> dict[str, Any]:
        values = self.changes()
        if "percent" in values:
            values["percent_bps"] = to_bps(values.pop("percent"))
        if "min_amount" in values and values["min_amount"] is None:
            values["min_amount"] = {}
        return values


class CouponRead(Output):
    """A coupon as admins see it, with its uses: ``times_redeemed`` (paid orders) and ``reserved`` (orders in
    progress whose reservation has not lapsed); limits count both."""

    object: Literal["coupon"] = "coupon"
    id: str
    code: str
    description: str
    kind: CouponKind
    percent: str | None
    percent_bps: int | None
    amount_off: dict[str, int]
    asset: str = CREDIT
    bonus_credits: int | None
    plan_codes: list[str] | None
    min_amount: dict[str, int]
    max_redemptions: int | None
    max_per_user: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    visibility: Visibility
    active: bool
    archived_at: datetime | None
    times_redeemed: int
    reserved: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, coupon: Coupon, usage: service.CouponUsage) -> CouponRead:
        return cls(
            id=coupon.id,
            code=coupon.code,
            description=coupon.description,
            kind=coupon.kind,
            percent=percent_text(coupon.percent_bps) if coupon.percent_bps is not None else None,
            percent_bps=coupon.percent_bps,
            amount_off=dict(coupon.amount_off),
            bonus_credits=coupon.bonus_credits,
            plan_codes=list(coupon.plan_codes) if coupon.plan_codes is not None else None,
            min_amount=dict(coupon.min_amount),
            max_redemptions=coupon.max_redemptions,
            max_per_user=coupon.max_per_user,
            starts_at=coupon.starts_at,
            ends_at=coupon.ends_at,
            visibility=coupon.visibility,
            active=coupon.active,
            archived_at=coupon.archived_at,
            times_redeemed=usage.redeemed,
            reserved=usage.reserved,
            created_at=coupon.created_at,
            updated_at=coupon.updated_at,
        )


class MyCouponRead(Output):
    """A coupon allotted to the signed-in user that they can still use; ``uses_left`` is how many more times
    (null: no limit)."""

    object: Literal["coupon"] = "coupon"
    code: str
    description: str
    kind: CouponKind
    percent: str | None
    percent_bps: int | None
    amount_off: dict[str, int]
    asset: str = CREDIT
    bonus_credits: int | None
    plan_codes: list[str] | None
    min_amount: dict[str, int]
    starts_at: datetime | None
    ends_at: datetime | None
    uses_left: int | None

    @classmethod
    def of(cls, coupon: Coupon, uses_left: int | None) -> MyCouponRead:
        return cls(
            code=coupon.code,
            description=coupon.description,
            kind=coupon.kind,
            percent=percent_text(coupon.percent_bps) if coupon.percent_bps is not None else None,
            percent_bps=coupon.percent_bps,
            amount_off=dict(coupon.amount_off),
            bonus_credits=coupon.bonus_credits,
            plan_codes=list(coupon.plan_codes) if coupon.plan_codes is not None else None,
            min_amount=dict(coupon.min_amount),
            starts_at=coupon.starts_at,
            ends_at=coupon.ends_at,
            uses_left=uses_left,
        )


class CouponAssign(Input):
    user_ids: Annotated[list[UserId], Field(min_length=1, max_length=MAX_LIST)]


class CouponAssignmentRead(Output):
    object: Literal["coupon_assignment"] = "coupon_assignment"
    id: str
    coupon: str
    user_id: str
    created_at: datetime
    deleted: bool = False

    @classmethod
    def of(cls, assignment: CouponAssignment, code: str, *, deleted: bool = False) -> CouponAssignmentRead:
        return cls(
            id=assignment.id,
            coupon=code,
            user_id=assignment.user_id,
            created_at=assignment.created_at,
            deleted=deleted,
        )


# ---------------------------------------------------------------- quotes


class QuoteCreate(Input):
    """A plan (by code) or a custom ``quantity`` of whole credits, in ``currency``, with an optional coupon."""

    plan: Code | None = None
    quantity: Quantity | None = None
    currency: Currency
    coupon: CouponCode | None = None


class CouponValidate(QuoteCreate):
    """The purchase the coupon is for, and the coupon."""

    coupon: CouponCode


class AppliedSlab(Output):
    min_credits: int
    percent: str
    percent_bps: int


class QuoteApplied(Output):
    """What took effect: the slab reached, the offer (id) and the coupon (code)."""

    slab: AppliedSlab | None
    offer: str | None
    coupon: str | None


class QuoteRead(Output):
    """The price of a purchase, in ``currency``'s minor unit: ``subtotal`` less ``slab_discount``,
    ``offer_discount`` and ``coupon_discount``, plus ``tax`` when exclusive (``total = net + tax``) or with
    ``tax`` inside when inclusive (``total = net``). ``credits`` (bought) and ``bonus_credits`` (plan + offer +
    coupon) are in the credit asset's smallest unit. Orders charge exactly ``total``."""

    object: Literal["quote"] = "quote"
    currency: str
    plan: str | None
    quantity: int | None
    subtotal: int
    slab_discount: int
    offer_discount: int
    coupon_discount: int
    tax: int
    tax_percent: str
    tax_inclusive: bool
    total: int
    asset: str = CREDIT
    credits: int
    bonus_credits: int
    plan_bonus_credits: int
    offer_bonus_credits: int
    coupon_bonus_credits: int
    applied: QuoteApplied

    @classmethod
    def of(cls, quote: pricing.Quote) -> QuoteRead:
        slab = quote.slab
        return cls(
            currency=quote.currency,
            plan=quote.plan_code,
            quantity=quote.quantity,
            subtotal=quote.subtotal,
            slab_discount=quote.slab_discount,
            offer_discount=quote.offer_discount,
            coupon_discount=quote.coupon_discount,
            tax=quote.tax,
            tax_percent=format(quote.tax_percent.normalize(), "f"),
            tax_inclusive=quote.tax_inclusive,
            total=quote.total,
            credits=quote.credits,
            bonus_credits=quote.bonus_credits,
            plan_bonus_credits=quote.plan_bonus_credits,
            offer_bonus_credits=quote.offer_bonus_credits,
            coupon_bonus_credits=quote.coupon_bonus_credits,
            applied=QuoteApplied(
                slab=AppliedSlab(
                    min_credits=slab.min_credits,
                    percent=percent_text(slab.percent_bps),
                    percent_bps=slab.percent_bps,
                )
                if slab is not None
                else None,
                offer=quote.offer_id,
                coupon=quote.coupon_code,
            ),
        )
