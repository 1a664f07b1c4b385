"""Catalog request and answer bodies.

Prices of plans and unit prices are integers in the currency's minor unit (paise, cents), named by their
currency; credits and meter prices are integers in the credit asset's minor unit (``PREPAID_CREDIT_SCALE``).
Percentages are decimals with at most two places (``"7.5"`` or ``7.5``), read exactly (never as a float) and
kept as basis points: answers carry both ``percent`` (a string) and ``percent_bps``.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, StringConstraints, WithJsonSchema

from prepaid.catalog import pricing, service
from prepaid.catalog.models import Coupon, CouponAssignment, DiscountSlab, Meter, Offer, Plan, UnitPrice
from prepaid.errors import InvalidRequest
from prepaid.money import CREDIT, CURRENCY_MINOR_UNITS
from prepaid.schemas import Input, Output, Timestamp

# Far inside BIGINT, and inside the integers a JavaScript client reads exactly (2**53).
MAX_AMOUNT = pricing.MAX_AMOUNT
MAX_LIST = 100


def _json_integer(value: Any) -> Any:
    """A JSON integer (``5``, or ``5.0``); never a string or a boolean."""
    if isinstance(value, (str, bool)):
        raise ValueError("expected an integer")
    return value


_CENT = Decimal("0.01")
_FLOAT_NOISE = Decimal("1e-9")


def _read_percent(value: Any, *, free_allowed: bool) -> Decimal:
    """A percentage as an exact decimal with at most two places, from a JSON number or a string: above 0, and
    below 100 (slabs, offers) or at most 100 (``free_allowed``: a coupon may make a purchase free).

    A float is read through its shortest text (``7.5`` -> ``"7.5"``, never 7.4999...), and a float within 10^-9
    of two places means those two places (``0.5700000000000001`` is how a client's ``57 * 0.01`` holds 0.57)."""
    top = "at most 100" if free_allowed else "below 100"
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise ValueError(f'expected a percentage above 0 and {top}, such as 7.5 or "7.5"')
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ValueError(f'expected a percentage above 0 and {top}, such as 7.5 or "7.5"') from None
    if not number.is_finite():
        raise ValueError("expected a finite percentage")
    if not Decimal(0) < number <= Decimal(100):  # checked first: far larger numbers cannot be quantized
        raise ValueError(f"a percentage must be above 0 and {top}")
    cents = number.quantize(_CENT)
    if number != cents and not (isinstance(value, float) and abs(number - cents) <= _FLOAT_NOISE):
        raise ValueError("a percentage has at most two decimal places")
    if not Decimal(0) < cents <= Decimal(100) or (cents == 100 and not free_allowed):
        raise ValueError(f"a percentage must be above 0 and {top}")
    return cents


def to_bps(percent: Decimal) -> int:
    return int(percent * 100)


def percent_text(bps: int) -> str:
    """Basis points as the shortest decimal text: 750 -> "7.5", 1000 -> "10", 1 -> "0.01"."""
    whole, cents = divmod(bps, 100)
    return f"{whole}.{cents:02d}".rstrip("0").rstrip(".")


def _percent_fields(bps: int | None) -> dict[str, Any]:
    """What every answer with a percentage carries: ``percent`` (text) and ``percent_bps``."""
    return {"percent": percent_text(bps) if bps is not None else None, "percent_bps": bps}


_Integer = BeforeValidator(_json_integer)
Percent = Annotated[
    Decimal,
    BeforeValidator(partial(_read_percent, free_allowed=False)),
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
CouponPercent = Annotated[
    Decimal,
    BeforeValidator(partial(_read_percent, free_allowed=True)),
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
Limit = Annotated[int, Field(ge=1, le=MAX_AMOUNT), _Integer]
Code = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"),
    Field(
        description="Letters, digits, '_', '.', ':' and '-'; stored lower-case, matched case-insensitively."
    ),
]
CouponCode = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$"),
    Field(description="Letters, digits, '_' and '-'; stored upper-case, matched case-insensitively."),
]
Currency = Annotated[str, StringConstraints(min_length=3, max_length=3, pattern=r"^[A-Za-z]{3}$")]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*[^\s\x00][^\x00]*$")]
Description = Annotated[str, StringConstraints(max_length=2000, pattern=r"^[^\x00]*$")]
Unit = Annotated[
    str,
    StringConstraints(min_length=1, max_length=32, pattern=r"^[a-z][a-z_]*$"),
    Field(description="What a quantity counts: call, token, image, second, minute, request, character, ..."),
]
# Ids are printable ASCII without spaces (so " ", which trimming would leave empty, is not one).
UserId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
_CurrencyKey = Annotated[str, StringConstraints(max_length=8)]
Prices = Annotated[
    dict[_CurrencyKey, MoneyAmount],
    Field(
        min_length=1,
        max_length=len(CURRENCY_MINOR_UNITS),
        description='Currency -> price in its minor unit, e.g. {"INR": 100000}.',
    ),
]
CurrencyAmounts = Annotated[
    dict[_CurrencyKey, MoneyAmount],
    Field(
        max_length=len(CURRENCY_MINOR_UNITS),
        description='Currency -> amount in its minor unit, e.g. {"INR": 50000}.',
    ),
]
PlanCodes = Annotated[list[Code], Field(min_length=1, max_length=MAX_LIST)]
Visibility = Literal["public", "assigned"]
OfferKind = Literal["percent_off", "bonus_credits"]
CouponKind = Literal["percent_off", "amount_off", "bonus_credits"]


def _document_not_null(schema: dict[str, Any], model: type[Any]) -> None:
    """A PATCH body's fields are typed ``X | None`` so that "not sent" can be told apart; those in the model's
    ``NOT_NULL`` are documented as they are accepted: never null."""
    for name in getattr(model, "NOT_NULL", ()):
        prop = schema.get("properties", {}).get(name)
        if prop is None or "anyOf" not in prop:
            continue
        options = [option for option in prop.pop("anyOf") if option != {"type": "null"}]
        prop.pop("default", None)
        if len(options) == 1:
            prop.update(options[0])
        else:
            prop["anyOf"] = options


class _Patch(Input):
    """A partial update: only the fields sent change; ``NOT_NULL`` fields cannot be sent as null (and are not
    documented as nullable). ``changes()`` answers what was sent, with ``percent`` as ``percent_bps``."""

    NOT_NULL: ClassVar[frozenset[str]] = frozenset()
    model_config = ConfigDict(json_schema_extra=_document_not_null)

    def changes(self) -> dict[str, Any]:
        values = {field: getattr(self, field) for field in self.model_fields_set}
        for field, value in values.items():
            if value is None and field in self.NOT_NULL:
                raise InvalidRequest(f"{field} cannot be null.", code="invalid_field", param=field)
        if values.get("percent") is not None:
            values["percent_bps"] = to_bps(values.pop("percent"))
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

    name: Name | None = None
    description: Description | None = None
    credits: Credits | None = None
    bonus_credits: BonusCredits | None = None
    prices: Prices | None = None
    popular: StrictBool | None = None
    active: StrictBool | None = None
    sort_order: SortOrder | None = None


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

    name: Name | None = None
    description: Description | None = None
    unit: Unit | None = None
    price: MeterPrice | None = None
    per: Per | None = None
    input_price: MeterPrice | None = None
    output_price: MeterPrice | None = None
    cached_input_price: MeterPrice | None = None
    active: StrictBool | None = None


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
        return cls(id=slab.id, min_credits=slab.min_credits, **_percent_fields(slab.percent_bps))


# ---------------------------------------------------------------- offers


class OfferCreate(Input):
    """``percent_off`` takes ``percent``; ``bonus_credits`` takes ``bonus_credits``. ``plan_codes`` null (the
    default) covers every plan and custom quantities. A null ``starts_at``/``ends_at`` leaves that side open."""

    name: Name
    description: Description = ""
    kind: OfferKind
    percent: Percent | None = None
    bonus_credits: Credits | None = None
    plan_codes: PlanCodes | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    active: StrictBool = True

    @property
    def percent_bps(self) -> int | None:
        return to_bps(self.percent) if self.percent is not None else None


class OfferUpdate(_Patch):
    """Only the fields sent change (the kind never does); ``plan_codes``, ``starts_at`` and ``ends_at`` may be
    set to null."""

    NOT_NULL = frozenset({"name", "description", "active", "percent", "bonus_credits"})

    name: Name | None = None
    description: Description | None = None
    percent: Percent | None = None
    bonus_credits: Credits | None = None
    plan_codes: PlanCodes | None = None
    starts_at: Timestamp | None = None
    ends_at: Timestamp | None = None
    active: StrictBool | None = None


class OfferRead(Output):
    """``percent`` / ``percent_bps`` for ``percent_off``; ``bonus_credits`` (credit smallest unit) for
    ``bonus_credits``. ``plan_codes`` null: every plan and custom quantities."""

    object: Literal["offer"] = "offer"
    id: str
    name: str
    description: str
    kind: OfferKind
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
            **_percent_fields(offer.percent_bps),
            bonus_credits=offer.bonus_credits,
            plan_codes=list(offer.plan_codes) if offer.plan_codes is not None else None,
            starts_at=offer.starts_at,
            ends_at=offer.ends_at,
            active=offer.active,
            archived_at=offer.archived_at,
            created_at=offer.created_at,
            updated_at=offer.updated_at,
        )


# ---------------------------------------------------------------- coupons


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

    @property
    def percent_bps(self) -> int | None:
        return to_bps(self.percent) if self.percent is not None else None


class CouponUpdate(_Patch):
    """Only the fields sent change (the code and kind never do). ``plan_codes``, ``min_amount``,
    ``max_redemptions``, ``max_per_user``, ``starts_at`` and ``ends_at`` may be set to null (no restriction);
    ``amount_off`` and ``min_amount`` replace the whole map."""

    NOT_NULL = frozenset({"description", "percent", "amount_off", "bonus_credits", "visibility", "active"})

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


class _CouponTerms(Output):
    """What a buyer and an admin both see of a coupon. ``amount_off`` and ``min_amount`` map currencies to
    minor units; ``bonus_credits`` is in the credit asset's smallest unit."""

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
    starts_at: datetime | None
    ends_at: datetime | None

    @staticmethod
    def terms(coupon: Coupon) -> dict[str, Any]:
        return {
            "id": coupon.id,
            "code": coupon.code,
            "description": coupon.description,
            "kind": coupon.kind,
            **_percent_fields(coupon.percent_bps),
            "amount_off": dict(coupon.amount_off),
            "bonus_credits": coupon.bonus_credits,
            "plan_codes": list(coupon.plan_codes) if coupon.plan_codes is not None else None,
            "min_amount": dict(coupon.min_amount),
            "starts_at": coupon.starts_at,
            "ends_at": coupon.ends_at,
        }


class MyCouponRead(_CouponTerms):
    """A coupon allotted to the signed-in user that they can still use; ``uses_left`` is how many more times
    (null: no limit)."""

    uses_left: int | None

    @classmethod
    def of(cls, coupon: Coupon, uses_left: int | None) -> MyCouponRead:
        return cls(**cls.terms(coupon), uses_left=uses_left)


class CouponRead(_CouponTerms):
    """A coupon as admins see it, with its limits and uses: ``times_redeemed`` (paid orders) and ``reserved``
    (orders in progress whose reservation has not lapsed); limits count both."""

    max_redemptions: int | None
    max_per_user: int | None
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
            **cls.terms(coupon),
            max_redemptions=coupon.max_redemptions,
            max_per_user=coupon.max_per_user,
            visibility=coupon.visibility,
            active=coupon.active,
            archived_at=coupon.archived_at,
            times_redeemed=usage.redeemed,
            reserved=usage.reserved,
            created_at=coupon.created_at,
            updated_at=coupon.updated_at,
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
                slab=AppliedSlab(min_credits=slab.min_credits, **_percent_fields(slab.percent_bps))
                if slab is not None
                else None,
                offer=quote.offer_id,
                coupon=quote.coupon_code,
            ),
        )
