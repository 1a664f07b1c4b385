"""The quote: what a purchase costs, computed from catalog state by one pure function.

``quote(purchase, catalog, coupon)`` takes frozen dataclasses and answers a ``Quote``; it reads no database,
no clock and no settings, so the same inputs always give the same quote, and the payments issue charges exactly
what it answers. The service (``catalog.service.build_quote``) loads the catalog state, decides whether a coupon
may be used at all (window, limits, assignment) and calls this.

Order of application (docs/decisions.md, "Catalog: the quote"); every amount is an integer in the currency's
minor unit, and every discount rounds down to a whole minor unit:

1. ``subtotal``: the plan's price in the currency, or the unit price of one whole credit times the quantity
   (within the unit price's range, and small enough that the price and the credits stay within ``MAX_AMOUNT``).
2. ``slab_discount``: the highest slab whose ``min_credits`` is at most the credits bought (bonus excluded),
   ``percent_bps`` of the subtotal.
3. ``offer_discount``: the single best applicable offer, a percent of what is left after the slab, or bonus
   credits (worth ``bonus x price per credit after the slab``); ties go to percent off, then the smaller id.
4. ``coupon_discount``: applied last, to what is left: a percent of it, an amount off capped at it, or bonus
   credits. A coupon that does not fit the purchase (plan, currency, minimum purchase) is refused, never
   silently dropped.
5. ``tax`` on the net (``subtotal`` minus the three discounts): exclusive adds ``round_half_up(net x rate)``;
   inclusive keeps ``total = net`` and reports ``round_half_up(net x rate / (1 + rate))`` as the tax inside it.

Slab, offer and coupon stack. Percentages are basis points (``1250`` = 12.5%); rate math uses ``Fraction`` so
nothing is ever a float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from prepaid.errors import Conflict, InvalidRequest, NotFound, PermissionDenied

BPS = 10_000  # basis points in 100%
# The largest price or number of credits one purchase may come to: far inside BIGINT, and inside the integers a
# JavaScript client reads exactly (2**53). The ledger takes amounts up to the same bound.
MAX_AMOUNT = 10**15

OfferKind = Literal["percent_off", "bonus_credits"]
CouponKind = Literal["percent_off", "amount_off", "bonus_credits"]


# ---------------------------------------------------------------- coupon refusals


class _CouponRefusal:
    """Mixin: every coupon refusal names ``coupon`` as its param unless told otherwise."""

    def __init__(self, message: str, *, param: str | None = "coupon", **extra: Any) -> None:
        super().__init__(message, param=param, **extra)  # type: ignore[call-arg]


class CouponNotFound(_CouponRefusal, NotFound):
    default_code = "coupon_not_found"


class CouponExpired(_CouponRefusal, InvalidRequest):
    default_code = "coupon_expired"


class CouponNotStarted(_CouponRefusal, InvalidRequest):
    default_code = "coupon_not_started"


class CouponExhausted(_CouponRefusal, Conflict):
    default_code = "coupon_exhausted"


class CouponPerUserLimit(_CouponRefusal, Conflict):
    default_code = "coupon_per_user_limit"


class CouponNotApplicable(_CouponRefusal, InvalidRequest):
    default_code = "coupon_not_applicable"


class CouponMinAmount(_CouponRefusal, InvalidRequest):
    default_code = "coupon_min_amount"


class CouponNotAssigned(_CouponRefusal, PermissionDenied):
    default_code = "coupon_not_assigned"


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlanTerms:
    code: str
    credits: int  # in the credit asset's minor unit
    bonus_credits: int
    prices: Mapping[str, int] = field(default_factory=dict)  # currency -> minor units


@dataclass(frozen=True)
class UnitPriceTerms:
    """The price of one whole credit in one currency, for custom quantities (in whole credits)."""

    currency: str
    amount: int
    min_quantity: int = 1
    max_quantity: int | None = None


@dataclass(frozen=True)
class SlabTerms:
    min_credits: int  # in the credit asset's minor unit
    percent_bps: int


@dataclass(frozen=True)
class OfferTerms:
    """An offer active now (the caller filters by time); ``plan_codes`` None means every plan and custom
    quantities, a tuple means those plans only."""

    id: str
    kind: OfferKind
    percent_bps: int = 0
    bonus_credits: int = 0
    plan_codes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CouponTerms:
    """A coupon the caller may use (window, limits and assignment already checked)."""

    code: str
    kind: CouponKind
    percent_bps: int = 0
    amount_off: Mapping[str, int] = field(default_factory=dict)  # currency -> minor units
    bonus_credits: int = 0
    plan_codes: tuple[str, ...] | None = None
    min_amount: Mapping[str, int] = field(default_factory=dict)  # currency -> minor units


@dataclass(frozen=True)
class TaxTerms:
    percent: Decimal = Decimal(0)  # 0..100
    inclusive: bool = False


@dataclass(frozen=True)
class Catalog:
    """The catalog state a quote reads: the unit price in the purchase's currency (or None), the slabs, the
    offers active now, the credit scale and the tax."""

    unit_price: UnitPriceTerms | None = None
    slabs: tuple[SlabTerms, ...] = ()
    offers: tuple[OfferTerms, ...] = ()
    credit_scale: int = 0
    tax: TaxTerms = TaxTerms()


@dataclass(frozen=True)
class Purchase:
    """A plan, or a custom ``quantity`` of whole credits, in ``currency``."""

    currency: str
    plan: PlanTerms | None = None
    quantity: int | None = None


# ---------------------------------------------------------------- the answer


@dataclass(frozen=True)
class Quote:
    currency: str
    plan_code: str | None
    quantity: int | None
    subtotal: int
    slab_discount: int
    offer_discount: int
    coupon_discount: int
    tax: int
    total: int
    credits: int
    bonus_credits: int
    plan_bonus_credits: int
    offer_bonus_credits: int
    coupon_bonus_credits: int
    tax_percent: Decimal
    tax_inclusive: bool
    slab: SlabTerms | None
    offer_id: str | None
    coupon_code: str | None

    @property
    def net(self) -> int:
        """What is charged before exclusive tax: the subtotal less every discount."""
        return self.subtotal - self.slab_discount - self.offer_discount - self.coupon_discount

    @property
    def total_credits(self) -> int:
        return self.credits + self.bonus_credits


# ---------------------------------------------------------------- arithmetic


def percent_of(amount: int, bps: int) -> int:
    """``bps`` basis points of ``amount``, rounded down to a whole minor unit."""
    return amount * bps // BPS


def round_half_up(value: Fraction) -> int:
    """The nearest integer to a non-negative ``value``, halves up."""
    return int((value + Fraction(1, 2)) // 1)


def tax_of(net: int, tax: TaxTerms) -> int:
    rate = Fraction(tax.percent) / 100
    if net <= 0 or rate == 0:
        return 0
    if tax.inclusive:
        return round_half_up(net * rate / (1 + rate))
    return round_half_up(net * rate)


# ---------------------------------------------------------------- the steps


def _subtotal_and_credits(purchase: Purchase, catalog: Catalog) -> tuple[int, int]:
    if purchase.plan is not None and purchase.quantity is not None:
        raise InvalidRequest(
            "Give a plan or a quantity, not both.", code="conflicting_fields", param="quantity"
        )
    if purchase.plan is None and purchase.quantity is None:
        raise InvalidRequest("Give a plan or a quantity of credits.", code="missing_field", param="plan")
    if purchase.plan is not None:
        plan = purchase.plan
        price = plan.prices.get(purchase.currency)
        if price is None:
            sold_in = ", ".join(sorted(plan.prices)) or "no currency"
            raise InvalidRequest(
                f"Plan {plan.code} is not sold in {purchase.currency} (sold in {sold_in}).",
                code="currency_not_available",
                param="currency",
            )
        return price, plan.credits
    quantity = purchase.quantity
    assert quantity is not None
    unit = catalog.unit_price
    if unit is None or unit.currency != purchase.currency:
        raise InvalidRequest(
            f"Custom quantities are not sold in {purchase.currency}.",
            code="currency_not_available",
            param="currency",
        )
    one_credit = 10**catalog.credit_scale
    # The most one order can hold: its price and its credits each at most MAX_AMOUNT.
    most = min(MAX_AMOUNT // unit.amount, MAX_AMOUNT // one_credit)
    if unit.max_quantity is not None:
        most = min(most, unit.max_quantity)
    if not unit.min_quantity <= quantity <= most:
        raise InvalidRequest(
            f"The quantity must be at least {unit.min_quantity} and at most {most} credits in "
            f"{purchase.currency}.",
            code="quantity_out_of_range",
            param="quantity",
            min_quantity=unit.min_quantity,
            max_quantity=most,
        )
    return unit.amount * quantity, quantity * one_credit


def best_slab(slabs: tuple[SlabTerms, ...], credits: int) -> SlabTerms | None:
    """The highest slab whose threshold the credits bought reach."""
    reached = [slab for slab in slabs if slab.min_credits <= credits]
    return max(reached, key=lambda slab: (slab.min_credits, slab.percent_bps), default=None)


def _applies_to(plan_codes: tuple[str, ...] | None, plan: PlanTerms | None) -> bool:
    return plan_codes is None or (plan is not None and plan.code in plan_codes)


def best_offer(
    offers: tuple[OfferTerms, ...], plan: PlanTerms | None, *, left: int, credits: int
) -> OfferTerms | None:
    """The applicable offer worth the most to the customer, in money: a percent offer is worth its discount,
    a bonus offer its credits at this purchase's price per credit after the slab. Ties go to percent off
    (money back beats credits), then to the smaller id, so the order the offers come in never matters."""

    def worth(offer: OfferTerms) -> Fraction:
        if offer.kind == "percent_off":
            return Fraction(percent_of(left, offer.percent_bps))
        return Fraction(offer.bonus_credits * left, credits) if credits > 0 else Fraction(0)

    candidates = [offer for offer in offers if _applies_to(offer.plan_codes, plan)]
    if not candidates:
        return None
    return min(candidates, key=lambda offer: (-worth(offer), offer.kind != "percent_off", offer.id))


def _coupon_discount(coupon: CouponTerms, purchase: Purchase, *, subtotal: int, left: int) -> tuple[int, int]:
    """The coupon's (discount, bonus credits) on what is ``left``, or the reason it does not fit."""
    if not _applies_to(coupon.plan_codes, purchase.plan):
        what = f"plan {purchase.plan.code}" if purchase.plan else "custom quantities"
        raise CouponNotApplicable(f"Coupon {coupon.code} does not apply to {what}.")
    if coupon.kind == "amount_off" and purchase.currency not in coupon.amount_off:
        raise CouponNotApplicable(f"Coupon {coupon.code} does not apply to purchases in {purchase.currency}.")
    minimum = coupon.min_amount.get(purchase.currency)
    if minimum is not None and subtotal < minimum:
        raise CouponMinAmount(
            f"Coupon {coupon.code} needs a purchase of at least {minimum} (minor units of "
            f"{purchase.currency}); this one is {subtotal}.",
            min_amount=minimum,
            currency=purchase.currency,
        )
    if coupon.kind == "percent_off":
        return percent_of(left, coupon.percent_bps), 0
    if coupon.kind == "amount_off":
        return min(coupon.amount_off[purchase.currency], left), 0
    return 0, coupon.bonus_credits


# ---------------------------------------------------------------- the quote


def quote(purchase: Purchase, catalog: Catalog, coupon: CouponTerms | None = None) -> Quote:
    """What ``purchase`` costs with ``catalog`` as it is and ``coupon`` (if any); see the module docstring."""
    subtotal, credits = _subtotal_and_credits(purchase, catalog)
    plan = purchase.plan

    slab = best_slab(catalog.slabs, credits)
    slab_discount = percent_of(subtotal, slab.percent_bps) if slab else 0
    left = subtotal - slab_discount

    offer = best_offer(catalog.offers, plan, left=left, credits=credits)
    offer_discount = offer_bonus = 0
    if offer is not None and offer.kind == "percent_off":
        offer_discount = percent_of(left, offer.percent_bps)
    elif offer is not None:
        offer_bonus = offer.bonus_credits
    left -= offer_discount

    coupon_discount = coupon_bonus = 0
    if coupon is not None:
        coupon_discount, coupon_bonus = _coupon_discount(coupon, purchase, subtotal=subtotal, left=left)
    net = left - coupon_discount

    tax = tax_of(net, catalog.tax)
    plan_bonus = plan.bonus_credits if plan else 0
    return Quote(
        currency=purchase.currency,
        plan_code=plan.code if plan else None,
        quantity=purchase.quantity,
        subtotal=subtotal,
        slab_discount=slab_discount,
        offer_discount=offer_discount,
        coupon_discount=coupon_discount,
        tax=tax,
        total=net if catalog.tax.inclusive else net + tax,
        credits=credits,
        bonus_credits=plan_bonus + offer_bonus + coupon_bonus,
        plan_bonus_credits=plan_bonus,
        offer_bonus_credits=offer_bonus,
        coupon_bonus_credits=coupon_bonus,
        tax_percent=catalog.tax.percent,
        tax_inclusive=catalog.tax.inclusive,
        slab=slab,
        offer_id=offer.id if offer else None,
        coupon_code=coupon.code if coupon else None,
    )
