"""The quote (``catalog.pricing.quote``): the order discounts apply in, rounding, tax, and its properties.

No database: the function is pure, so these run on plain dataclasses. The HTTP side is tests/api/test_quotes.py.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prepaid.catalog.pricing import (
    MAX_AMOUNT,
    Catalog,
    CouponMinAmount,
    CouponNotApplicable,
    CouponTerms,
    OfferTerms,
    PlanTerms,
    Purchase,
    Quote,
    SlabTerms,
    TaxTerms,
    UnitPriceTerms,
    quote,
    round_half_up,
)
from prepaid.errors import InvalidRequest

BASIC = PlanTerms(code="basic", credits=100, bonus_credits=0, prices={"INR": 100_000, "USD": 1_200})
STANDARD = PlanTerms(code="standard", credits=500, bonus_credits=25, prices={"INR": 450_000})


def buy(plan: PlanTerms = BASIC, currency: str = "INR") -> Purchase:
    return Purchase(currency=currency, plan=plan)


# ---------------------------------------------------------------- order of application


def test_slab_then_offer_then_coupon_then_tax_each_on_what_is_left() -> None:
    catalog = Catalog(
        slabs=(SlabTerms(min_credits=50, percent_bps=200), SlabTerms(min_credits=100, percent_bps=500)),
        offers=(OfferTerms(id="ofr_a", kind="percent_off", percent_bps=1000),),
        tax=TaxTerms(percent=Decimal(18)),
    )
    coupon = CouponTerms(code="SAVE20", kind="percent_off", percent_bps=2000)

    q = quote(buy(), catalog, coupon)

    assert q.subtotal == 100_000
    assert q.slab == SlabTerms(min_credits=100, percent_bps=500)  # the highest slab reached
    assert q.slab_discount == 5_000  # 5 % of the subtotal
    assert q.offer_discount == 9_500  # 10 % of the 95,000 left
    assert q.coupon_discount == 17_100  # 20 % of the 85,500 left
    assert q.net == 68_400
    assert q.tax == 12_312  # 18 % of the net, added
    assert q.total == 80_712
    assert (q.offer_id, q.coupon_code, q.currency, q.plan_code) == ("ofr_a", "SAVE20", "INR", "basic")
    assert (q.credits, q.bonus_credits) == (100, 0)


def test_no_slab_reached_no_offer_no_coupon_charges_the_plan_price() -> None:
    catalog = Catalog(slabs=(SlabTerms(min_credits=101, percent_bps=500),))
    q = quote(buy(), catalog)
    assert (q.subtotal, q.slab_discount, q.offer_discount, q.coupon_discount, q.tax, q.total) == (
        100_000,
        0,
        0,
        0,
        0,
        100_000,
    )
    assert q.slab is None and q.offer_id is None and q.coupon_code is None


def test_the_slab_threshold_counts_credits_bought_not_bonus_credits() -> None:
    generous = PlanTerms(code="generous", credits=90, bonus_credits=50, prices={"INR": 1_000})
    catalog = Catalog(
        slabs=(SlabTerms(min_credits=100, percent_bps=1000),),
        offers=(OfferTerms(id="ofr_b", kind="bonus_credits", bonus_credits=40),),
    )
    q = quote(buy(generous), catalog)
    assert q.slab is None and q.slab_discount == 0
    assert q.bonus_credits == 90  # plan 50 + offer 40, on top of the 90 bought


def test_every_discount_rounds_down_to_a_whole_minor_unit() -> None:
    odd = PlanTerms(code="odd", credits=10, bonus_credits=0, prices={"INR": 999})
    catalog = Catalog(
        slabs=(SlabTerms(min_credits=1, percent_bps=3333),),
        offers=(OfferTerms(id="ofr_c", kind="percent_off", percent_bps=3333),),
    )
    q = quote(buy(odd), catalog, CouponTerms(code="C", kind="percent_off", percent_bps=3333))
    assert q.slab_discount == 332  # 332.97
    assert q.offer_discount == 222  # 33.33 % of 667 = 222.31
    assert q.coupon_discount == 148  # 33.33 % of 445 = 148.32
    assert q.total == 297


def test_the_best_offer_wins_by_its_worth_in_money_whatever_order_the_offers_come_in() -> None:
    ten_percent = OfferTerms(id="ofr_1", kind="percent_off", percent_bps=1000)  # 10,000 off 100,000
    fifteen_bonus = OfferTerms(id="ofr_2", kind="bonus_credits", bonus_credits=15)  # 15 credits at 1,000
    five_percent = OfferTerms(id="ofr_3", kind="percent_off", percent_bps=500)
    for offers in [(ten_percent, fifteen_bonus, five_percent), (five_percent, fifteen_bonus, ten_percent)]:
        q = quote(buy(), Catalog(offers=offers))
        assert (q.offer_id, q.offer_discount, q.offer_bonus_credits) == ("ofr_2", 0, 15)
        assert q.total == 100_000 and q.bonus_credits == 15

    q = quote(buy(), Catalog(offers=(ten_percent, five_percent)))
    assert (q.offer_id, q.offer_discount) == ("ofr_1", 10_000)


def test_a_bonus_offer_is_valued_at_the_price_per_credit_left_after_the_slab() -> None:
    # Slab 50 % leaves 50,000 for 100 credits: 500 a credit. 21 bonus credits are worth 10,500 > 10,000.
    catalog = Catalog(
        slabs=(SlabTerms(min_credits=100, percent_bps=5000),),
        offers=(
            OfferTerms(id="ofr_p", kind="percent_off", percent_bps=2000),  # 10,000 off the 50,000 left
            OfferTerms(id="ofr_b", kind="bonus_credits", bonus_credits=21),
        ),
    )
    assert quote(buy(), catalog).offer_id == "ofr_b"
    fewer = dataclasses.replace(
        catalog, offers=(catalog.offers[0], OfferTerms("ofr_b", "bonus_credits", 0, 19))
    )
    assert quote(buy(), fewer).offer_id == "ofr_p"


def test_offers_worth_the_same_go_to_percent_off_then_to_the_smaller_id() -> None:
    percent = OfferTerms(id="ofr_z", kind="percent_off", percent_bps=1000)  # 10,000
    bonus = OfferTerms(id="ofr_a", kind="bonus_credits", bonus_credits=10)  # 10 x 1,000
    assert quote(buy(), Catalog(offers=(bonus, percent))).offer_id == "ofr_z"
    twin = OfferTerms(id="ofr_y", kind="percent_off", percent_bps=1000)
    assert quote(buy(), Catalog(offers=(percent, twin))).offer_id == "ofr_y"


def test_offers_for_other_plans_do_not_apply_and_custom_quantities_take_only_offers_for_all() -> None:
    only_standard = OfferTerms(id="ofr_s", kind="percent_off", percent_bps=5000, plan_codes=("standard",))
    for_all = OfferTerms(id="ofr_all", kind="percent_off", percent_bps=100)
    catalog = Catalog(
        offers=(only_standard, for_all), unit_price=UnitPriceTerms("INR", amount=1_000, max_quantity=10_000)
    )
    assert quote(buy(BASIC), catalog).offer_id == "ofr_all"
    assert quote(buy(STANDARD), catalog).offer_id == "ofr_s"
    assert quote(Purchase(currency="INR", quantity=100), catalog).offer_id == "ofr_all"
    assert quote(buy(BASIC), Catalog(offers=(only_standard,))).offer_id is None


# ---------------------------------------------------------------- coupons


def test_an_amount_off_coupon_is_capped_at_what_is_left_and_a_hundred_percent_coupon_is_free() -> None:
    catalog = Catalog(
        offers=(OfferTerms(id="ofr_h", kind="percent_off", percent_bps=5000),), tax=TaxTerms(Decimal(18))
    )
    big = CouponTerms(code="BIG", kind="amount_off", amount_off={"INR": 80_000})
    q = quote(buy(), catalog, big)
    assert (q.offer_discount, q.coupon_discount, q.tax, q.total) == (50_000, 50_000, 0, 0)

    small = CouponTerms(code="SMALL", kind="amount_off", amount_off={"INR": 1_000, "USD": 100})
    assert quote(buy(), catalog, small).coupon_discount == 1_000
    assert quote(buy(currency="USD"), catalog, small).coupon_discount == 100

    free = CouponTerms(code="FREE", kind="percent_off", percent_bps=10_000)
    q = quote(buy(), Catalog(tax=TaxTerms(Decimal(18))), free)
    assert (q.coupon_discount, q.tax, q.total, q.credits) == (100_000, 0, 0, 100)


def test_a_bonus_coupon_adds_credits_on_top_of_the_plans_and_the_offers() -> None:
    catalog = Catalog(offers=(OfferTerms(id="ofr_b", kind="bonus_credits", bonus_credits=30),))
    coupon = CouponTerms(code="MORE", kind="bonus_credits", bonus_credits=7)
    q = quote(buy(STANDARD), catalog, coupon)
    assert (q.plan_bonus_credits, q.offer_bonus_credits, q.coupon_bonus_credits) == (25, 30, 7)
    assert q.bonus_credits == 62 and q.credits == 500 and q.total == 450_000 and q.coupon_discount == 0


def test_a_coupon_for_other_plans_or_another_currency_is_refused_not_dropped() -> None:
    only_standard = CouponTerms(code="STD", kind="percent_off", percent_bps=1000, plan_codes=("standard",))
    with pytest.raises(CouponNotApplicable) as refused:
        quote(buy(BASIC), Catalog(), only_standard)
    assert (refused.value.code, refused.value.param, refused.value.status) == (
        "coupon_not_applicable",
        "coupon",
        400,
    )
    custom = Purchase(currency="INR", quantity=5)
    with pytest.raises(CouponNotApplicable):
        quote(custom, Catalog(unit_price=UnitPriceTerms("INR", 100, 1, 100)), only_standard)
    rupees_only = CouponTerms(code="INR1", kind="amount_off", amount_off={"INR": 100})
    with pytest.raises(CouponNotApplicable):
        quote(buy(currency="USD"), Catalog(), rupees_only)


def test_the_minimum_purchase_is_compared_with_the_subtotal_before_discounts() -> None:
    catalog = Catalog(slabs=(SlabTerms(min_credits=1, percent_bps=5000),))
    at_minimum = CouponTerms(code="MIN", kind="percent_off", percent_bps=100, min_amount={"INR": 100_000})
    assert quote(buy(), catalog, at_minimum).coupon_discount == 500  # 1 % of the 50,000 left
    above = dataclasses.replace(at_minimum, min_amount={"INR": 100_001})
    with pytest.raises(CouponMinAmount) as refused:
        quote(buy(), catalog, above)
    assert refused.value.extra == {"min_amount": 100_001, "currency": "INR"}
    # No minimum in a currency means none there.
    assert quote(buy(currency="USD"), catalog, above).coupon_code == "MIN"


# ---------------------------------------------------------------- tax


def test_exclusive_tax_is_added_rounding_half_up() -> None:
    cheap = PlanTerms(code="cheap", credits=1, bonus_credits=0, prices={"INR": 50, "USD": 49})
    assert quote(buy(cheap), Catalog(tax=TaxTerms(Decimal(1)))).tax == 1  # 0.50 -> 1
    assert quote(buy(cheap, "USD"), Catalog(tax=TaxTerms(Decimal(1)))).tax == 0  # 0.49 -> 0
    q = quote(buy(cheap), Catalog(tax=TaxTerms(Decimal("12.5"))))
    assert (q.tax, q.total, q.tax_percent, q.tax_inclusive) == (6, 56, Decimal("12.5"), False)  # 6.25


def test_inclusive_tax_keeps_the_total_and_reports_the_tax_inside_it() -> None:
    plan = PlanTerms(code="p", credits=1, bonus_credits=0, prices={"INR": 118, "EUR": 100})
    q = quote(buy(plan), Catalog(tax=TaxTerms(Decimal(18), inclusive=True)))
    assert (q.total, q.tax, q.net) == (118, 18, 118)
    q = quote(buy(plan, "EUR"), Catalog(tax=TaxTerms(Decimal(18), inclusive=True)))
    assert (q.total, q.tax) == (100, 15)  # 100 x 18 / 118 = 15.25


def test_round_half_up_rounds_halves_up_and_the_rest_to_nearest() -> None:
    assert [round_half_up(Fraction(n, 4)) for n in range(9)] == [0, 0, 1, 1, 1, 1, 2, 2, 2]


# ---------------------------------------------------------------- custom quantities and refusals


def test_a_custom_quantity_costs_the_unit_price_times_the_quantity_in_credit_minor_units() -> None:
    catalog = Catalog(
        unit_price=UnitPriceTerms("INR", amount=1_000, min_quantity=10, max_quantity=1_000),
        slabs=(SlabTerms(min_credits=5_000, percent_bps=1000),),  # 50 whole credits at scale 2
        credit_scale=2,
    )
    q = quote(Purchase(currency="INR", quantity=50), catalog)
    assert (q.subtotal, q.credits, q.slab_discount, q.total, q.quantity, q.plan_code) == (
        50_000,
        5_000,
        5_000,
        45_000,
        50,
        None,
    )
    assert quote(Purchase(currency="INR", quantity=49), catalog).slab is None


@pytest.mark.parametrize("quantity", [9, 1_001])
def test_a_quantity_outside_the_unit_prices_range_is_refused(quantity: int) -> None:
    catalog = Catalog(unit_price=UnitPriceTerms("INR", amount=1_000, min_quantity=10, max_quantity=1_000))
    with pytest.raises(InvalidRequest) as refused:
        quote(Purchase(currency="INR", quantity=quantity), catalog)
    assert (refused.value.code, refused.value.param) == ("quantity_out_of_range", "quantity")
    assert refused.value.extra == {"min_quantity": 10, "max_quantity": 1_000}


@pytest.mark.parametrize(
    ("amount", "scale", "most"),
    [
        (1_000, 0, 10**12),  # the price reaches 10^15 first
        (1, 6, 10**9),  # the credits (at scale 6) reach 10^15 first
    ],
)
def test_a_custom_quantity_never_comes_to_more_than_one_order_can_hold(
    amount: int, scale: int, most: int
) -> None:
    """The unit price's own maximum (here none) is lowered to what keeps the price and the credits within
    MAX_AMOUNT: past it the quote would be an order that cannot be stored or charged."""
    catalog = Catalog(unit_price=UnitPriceTerms("INR", amount=amount, min_quantity=1), credit_scale=scale)
    q = quote(Purchase(currency="INR", quantity=most), catalog)
    assert q.subtotal <= MAX_AMOUNT and q.credits <= MAX_AMOUNT
    with pytest.raises(InvalidRequest) as refused:
        quote(Purchase(currency="INR", quantity=most + 1), catalog)
    assert (refused.value.code, refused.value.param) == ("quantity_out_of_range", "quantity")
    assert refused.value.extra == {"min_quantity": 1, "max_quantity": most}


def test_a_currency_the_plan_or_the_unit_price_is_not_sold_in_is_refused() -> None:
    with pytest.raises(InvalidRequest) as refused:
        quote(buy(currency="EUR"), Catalog())
    assert (refused.value.code, refused.value.param) == ("currency_not_available", "currency")
    assert "INR, USD" in refused.value.message
    with pytest.raises(InvalidRequest) as refused:
        quote(Purchase(currency="EUR", quantity=5), Catalog(unit_price=None))
    assert refused.value.code == "currency_not_available"


def test_a_purchase_names_a_plan_or_a_quantity_not_both() -> None:
    with pytest.raises(InvalidRequest) as refused:
        quote(Purchase(currency="INR", plan=BASIC, quantity=3), Catalog())
    assert (refused.value.code, refused.value.param) == ("conflicting_fields", "quantity")
    with pytest.raises(InvalidRequest) as refused:
        quote(Purchase(currency="INR"), Catalog())
    assert (refused.value.code, refused.value.param) == ("missing_field", "plan")


# ---------------------------------------------------------------- properties

CURRENCIES = ("INR", "USD")
bps = st.integers(min_value=1, max_value=9_999)
money = st.integers(min_value=1, max_value=10**12)
some_credits = st.integers(min_value=1, max_value=10**9)
plan_codes = st.none() | st.lists(st.sampled_from(["p1", "p2", "p3"]), min_size=1, unique=True).map(tuple)

plans = st.builds(
    PlanTerms,
    code=st.sampled_from(["p1", "p2", "p3"]),
    credits=some_credits,
    bonus_credits=st.integers(min_value=0, max_value=10**6),
    prices=st.fixed_dictionaries({"INR": money, "USD": money}),
)
slabs = st.lists(
    st.builds(SlabTerms, min_credits=some_credits, percent_bps=bps),
    max_size=5,
    unique_by=lambda s: s.min_credits,
).map(tuple)
offers = st.lists(
    st.one_of(
        st.builds(
            OfferTerms,
            id=st.text("abc", min_size=1, max_size=4),
            kind=st.just("percent_off"),
            percent_bps=bps,
            plan_codes=plan_codes,
        ),
        st.builds(
            OfferTerms,
            id=st.text("abc", min_size=1, max_size=4),
            kind=st.just("bonus_credits"),
            bonus_credits=st.integers(min_value=1, max_value=10**6),
            plan_codes=plan_codes,
        ),
    ),
    max_size=4,
    unique_by=lambda o: o.id,
).map(tuple)
coupons = st.none() | st.one_of(
    st.builds(
        CouponTerms,
        code=st.just("C1"),
        kind=st.just("percent_off"),
        percent_bps=st.integers(1, 10_000),
        plan_codes=plan_codes,
    ),
    st.builds(
        CouponTerms,
        code=st.just("C2"),
        kind=st.just("amount_off"),
        amount_off=st.fixed_dictionaries({"INR": money}, optional={"USD": money}),
        min_amount=st.fixed_dictionaries({}, optional={"INR": money, "USD": money}),
    ),
    st.builds(CouponTerms, code=st.just("C3"), kind=st.just("bonus_credits"), bonus_credits=some_credits),
)
taxes = st.builds(
    TaxTerms,
    percent=st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False),
    inclusive=st.booleans(),
)
catalogs = st.builds(
    Catalog,
    slabs=slabs,
    offers=offers,
    tax=taxes,
    credit_scale=st.integers(0, 6),
    unit_price=st.builds(
        UnitPriceTerms,
        currency=st.just("INR"),
        amount=money,
        min_quantity=st.just(1),
        max_quantity=st.just(10**6),
    ),
)
purchases = st.one_of(
    st.builds(Purchase, currency=st.sampled_from(CURRENCIES), plan=plans),
    st.builds(Purchase, currency=st.just("INR"), quantity=st.integers(1, 10**6)),
)


def _quote_or_refusal(purchase: Purchase, catalog: Catalog, coupon: CouponTerms | None) -> Quote | None:
    """The quote, or None when the coupon does not fit this purchase, or a custom quantity comes to more than
    one order can hold (a refusal is an answer too, and only for those reasons)."""
    try:
        return quote(purchase, catalog, coupon)
    except (CouponNotApplicable, CouponMinAmount):
        assert coupon is not None
        return None
    except InvalidRequest as refused:
        assert refused.code == "quantity_out_of_range" and purchase.quantity is not None
        assert catalog.unit_price is not None
        price, credits = (
            catalog.unit_price.amount * purchase.quantity,
            purchase.quantity * 10**catalog.credit_scale,
        )
        assert price > MAX_AMOUNT or credits > MAX_AMOUNT
        return None


@settings(max_examples=400, deadline=None)
@given(purchase=purchases, catalog=catalogs, coupon=coupons)
def test_quote_properties(purchase: Purchase, catalog: Catalog, coupon: CouponTerms | None) -> None:
    q = _quote_or_refusal(purchase, catalog, coupon)
    if q is None:
        return
    amounts = [
        q.subtotal,
        q.slab_discount,
        q.offer_discount,
        q.coupon_discount,
        q.tax,
        q.total,
        q.credits,
        q.bonus_credits,
    ]
    assert all(type(amount) is int for amount in amounts), amounts  # whole minor units, never a float
    assert all(amount >= 0 for amount in amounts), amounts
    assert q.subtotal <= MAX_AMOUNT and q.credits <= MAX_AMOUNT  # an order can hold it
    assert 0 <= q.total <= q.subtotal + q.tax
    assert q.net == q.subtotal - q.slab_discount - q.offer_discount - q.coupon_discount >= 0
    if catalog.tax.inclusive:
        assert q.total == q.net and q.tax <= q.total
    else:
        assert q.total == q.net + q.tax
    if purchase.plan is not None:
        assert q.credits >= purchase.plan.credits
        assert q.bonus_credits >= purchase.plan.bonus_credits
    else:
        assert q.credits == purchase.quantity * 10**catalog.credit_scale  # type: ignore[operator]
    if coupon is not None and coupon.kind == "percent_off" and coupon.percent_bps == 10_000:
        assert q.total == 0

    # The same inputs give the same quote, whatever order the slabs and offers come in.
    assert quote(purchase, catalog, coupon) == q
    shuffled = dataclasses.replace(catalog, slabs=catalog.slabs[::-1], offers=catalog.offers[::-1])
    assert quote(purchase, shuffled, coupon) == q
