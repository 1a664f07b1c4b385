"""``POST /v1/quotes`` on both engines: the catalog state (plans, unit prices, slabs, offers, coupons, tax
settings) priced by the one quote function, exactly as the payments issue will charge it.

The arithmetic's edges and properties are tests/unit/test_quote.py; here the numbers come from real catalog
rows through real HTTP.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from prepaid.audit import service as audit_service
from prepaid.catalog import service as catalog_service
from prepaid.catalog.schemas import QuoteRead
from prepaid.db import utcnow
from tests.api.test_coupons import Store, make_plans
from tests.factories import make_customer
from tests.helpers import assert_error


@pytest.fixture
async def store(app: Any, client: httpx.AsyncClient) -> Store:
    admin = await make_customer(app, roles=["user", "admin"])
    await make_plans(app, admin.id)
    return Store(app, client, admin, await make_customer(app), await make_customer(app))


def _actor(store: Store) -> audit_service.Actor:
    return audit_service.Actor(user_id=store.admin.id)


async def _slabs(store: Store, *slabs: tuple[int, int]) -> None:
    async with store.db.transaction() as session:
        await catalog_service.replace_discount_slabs(
            session, actor=_actor(store), slabs=[catalog_service.SlabInput(*slab) for slab in slabs]
        )


async def _offer(store: Store, **fields: Any) -> str:
    async with store.db.transaction() as session:
        offer = await catalog_service.create_offer(session, actor=_actor(store), name="Offer", **fields)
    return offer.id


async def _unit_price(store: Store, currency: str, amount: int, least: int, most: int) -> None:
    async with store.db.transaction() as session:
        await catalog_service.replace_unit_prices(
            session,
            actor=_actor(store),
            prices=[catalog_service.UnitPriceInput(currency, amount, least, most)],
        )


async def _quote(store: Store, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    response = await store.client.post("/v1/quotes", json=body, headers=headers or {})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("settings_overrides", [{"tax_percent": Decimal(18)}])
async def test_slab_then_offer_then_coupon_then_exclusive_tax(
    store: Store, settings_overrides: dict[str, Any]
) -> None:
    await _slabs(store, (50, 200), (100, 500))
    offer_id = await _offer(store, kind="percent_off", percent_bps=1000)
    await store.create(code="SAVE20", percent=20)

    q = await _quote(store, plan="basic", currency="INR", coupon="save20")

    assert q["object"] == "quote" and (q["currency"], q["plan"], q["quantity"]) == ("INR", "basic", None)
    assert (q["subtotal"], q["slab_discount"], q["offer_discount"], q["coupon_discount"]) == (
        100_000,
        5_000,
        9_500,
        17_100,
    )
    assert (q["tax"], q["tax_percent"], q["tax_inclusive"], q["total"]) == (12_312, "18", False, 80_712)
    assert (q["credits"], q["bonus_credits"], q["asset"]) == (100, 0, "credit")
    assert q["applied"] == {
        "slab": {"min_credits": 100, "percent": "5", "percent_bps": 500},
        "offer": offer_id,
        "coupon": "SAVE20",
    }


@pytest.mark.parametrize("settings_overrides", [{"tax_percent": Decimal("18"), "tax_inclusive": True}])
async def test_inclusive_tax_keeps_the_total_and_reports_the_tax_inside(
    store: Store, settings_overrides: dict[str, Any]
) -> None:
    q = await _quote(store, plan="basic", currency="INR")
    assert (q["subtotal"], q["total"], q["tax"], q["tax_inclusive"]) == (100_000, 100_000, 15_254, True)


@pytest.mark.parametrize("settings_overrides", [{"tax_percent": Decimal(18)}])
async def test_a_hundred_percent_coupon_makes_the_purchase_free_tax_and_all(
    store: Store, settings_overrides: dict[str, Any]
) -> None:
    await _offer(store, kind="percent_off", percent_bps=1000)
    await store.create(code="FREE", percent=100)
    q = await _quote(store, plan="standard", currency="INR", coupon="FREE")
    assert (q["coupon_discount"], q["tax"], q["total"]) == (405_000, 0, 0)
    assert (q["credits"], q["bonus_credits"]) == (500, 25)


async def test_bonus_credits_add_up_from_the_plan_the_best_offer_and_the_coupon(store: Store) -> None:
    await _offer(store, kind="percent_off", percent_bps=100)  # 4,500 off: worth less than 30 credits at 900
    best = await _offer(store, kind="bonus_credits", bonus_credits=30, plan_codes=["standard"])
    await store.create(code="MORE", kind="bonus_credits", bonus_credits=7)
    q = await _quote(store, plan="standard", currency="INR", coupon="more")
    assert q["applied"]["offer"] == best
    assert (q["plan_bonus_credits"], q["offer_bonus_credits"], q["coupon_bonus_credits"]) == (25, 30, 7)
    assert (q["bonus_credits"], q["credits"], q["total"], q["offer_discount"]) == (62, 500, 450_000, 0)


async def test_offers_outside_their_window_or_for_other_plans_do_not_apply(store: Store) -> None:
    now = utcnow()
    await _offer(
        store,
        kind="percent_off",
        percent_bps=5000,
        ends_at=now - timedelta(seconds=1),
        starts_at=now - timedelta(days=1),
    )
    await _offer(store, kind="percent_off", percent_bps=5000, starts_at=now + timedelta(hours=1))
    await _offer(store, kind="percent_off", percent_bps=5000, plan_codes=["standard"])
    await _offer(store, kind="percent_off", percent_bps=5000, active=False)
    q = await _quote(store, plan="basic", currency="INR")
    assert (q["offer_discount"], q["applied"]["offer"], q["total"]) == (0, None, 100_000)


async def test_a_custom_quantity_is_priced_at_the_unit_price(store: Store) -> None:
    await _unit_price(store, "INR", 1_000, 10, 1_000)
    await _slabs(store, (200, 1_000))
    q = await _quote(store, quantity=250, currency="inr")
    assert (q["plan"], q["quantity"], q["credits"], q["subtotal"], q["slab_discount"], q["total"]) == (
        None,
        250,
        250,
        250_000,
        25_000,
        225_000,
    )
    for quantity in (9, 1_001):
        refused = await store.client.post("/v1/quotes", json={"quantity": quantity, "currency": "INR"})
        error = assert_error(refused, 400, "invalid_request_error", "quantity_out_of_range", "quantity")
        assert (error["min_quantity"], error["max_quantity"]) == (10, 1_000)
    no_price = await store.client.post("/v1/quotes", json={"quantity": 50, "currency": "USD"})
    assert_error(no_price, 400, "invalid_request_error", "currency_not_available", "currency")


async def test_a_custom_quantity_is_limited_to_what_one_order_can_hold(store: Store) -> None:
    """The unit price's default maximum is 10^15 credits: at 1,000 paise a credit that was a quote of 10^18
    paise, more than an order can hold and more than a JavaScript client reads exactly. The quote lowers the
    maximum to what keeps the price (and the credits) within 10^15, and says so."""
    put = await store.client.put(
        "/v1/catalog/unit_prices",
        json={"unit_prices": [{"currency": "INR", "unit_amount": 1_000}]},
        headers=store.admin.headers,
    )
    assert put.status_code == 200 and put.json()["data"][0]["max_quantity"] == 10**15
    refused = await store.client.post("/v1/quotes", json={"quantity": 10**15, "currency": "INR"})
    error = assert_error(refused, 400, "invalid_request_error", "quantity_out_of_range", "quantity")
    assert (error["min_quantity"], error["max_quantity"]) == (1, 10**12)
    largest = await _quote(store, quantity=10**12, currency="INR")
    assert (largest["subtotal"], largest["total"], largest["credits"]) == (10**15, 10**15, 10**12)


@pytest.mark.parametrize(
    ("body", "status", "type_", "code", "param"),
    [
        (
            {"plan": "basic", "currency": "EUR"},
            400,
            "invalid_request_error",
            "currency_not_available",
            "currency",
        ),
        (
            {"plan": "basic", "currency": "XYZ"},
            400,
            "invalid_request_error",
            "unsupported_currency",
            "currency",
        ),
        ({"plan": "basic", "currency": "RUPEES"}, 400, "invalid_request_error", "invalid_field", "currency"),
        ({"plan": "nope", "currency": "INR"}, 404, "not_found", "resource_missing", "plan"),
        (
            {"plan": "basic", "quantity": 5, "currency": "INR"},
            400,
            "invalid_request_error",
            "conflicting_fields",
            "quantity",
        ),
        ({"currency": "INR"}, 400, "invalid_request_error", "missing_field", "plan"),
        ({"plan": "basic"}, 400, "invalid_request_error", "missing_field", "currency"),
        (
            {"plan": "basic", "currency": "INR", "price": 1},
            400,
            "invalid_request_error",
            "unknown_field",
            "price",
        ),
        ({"quantity": 0, "currency": "INR"}, 400, "invalid_request_error", "invalid_field", "quantity"),
        ({"quantity": "5", "currency": "INR"}, 400, "invalid_request_error", "invalid_field", "quantity"),
        (
            {"plan": "basic", "currency": "INR", "coupon": "NOPE"},
            404,
            "not_found",
            "coupon_not_found",
            "coupon",
        ),
    ],
)
async def test_a_purchase_that_cannot_be_priced_gets_a_clear_error(
    store: Store, body: dict[str, Any], status: int, type_: str, code: str, param: str
) -> None:
    response = await store.client.post("/v1/quotes", json=body)
    assert_error(response, status, type_, code, param, well_formed=True)


async def test_an_archived_plan_is_not_for_sale(store: Store) -> None:
    async with store.db.transaction() as session:
        plan = await catalog_service.get_plan_by_code(session, "basic")
        await catalog_service.archive_plan(session, plan_id=plan.id, actor=_actor(store))
    response = await store.client.post("/v1/quotes", json={"plan": "basic", "currency": "INR"})
    assert_error(response, 400, "invalid_request_error", "plan_not_available", "plan")


async def test_a_coupon_that_needs_a_user_is_not_assigned_to_an_anonymous_caller(store: Store) -> None:
    await store.create(code="INVITE", visibility="assigned")
    await store.client.post(
        "/v1/coupons/INVITE/assignments", json={"user_ids": [store.user.id]}, headers=store.admin.headers
    )
    body = {"plan": "basic", "currency": "INR", "coupon": "invite"}
    anonymous = await store.client.post("/v1/quotes", json=body)
    assert_error(anonymous, 403, "permission_error", "coupon_not_assigned", "coupon")
    signed_in = await _quote(store, store.user.headers, **body)
    assert (signed_in["coupon_discount"], signed_in["total"]) == (10_000, 90_000)


@pytest.mark.parametrize("settings_overrides", [{"tax_percent": Decimal("7.25")}])
async def test_the_answer_is_exactly_the_quote_function_over_the_catalog(
    store: Store, settings_overrides: dict[str, Any]
) -> None:
    """What the payments issue will charge: ``build_quote`` on the same state gives the same answer."""
    await _slabs(store, (100, 250), (500, 750))
    await _offer(store, kind="percent_off", percent_bps=333)
    await store.create(code="FLAT", kind="amount_off", amount_off={"INR": 12_345})
    answer = await _quote(store, store.user.headers, plan="standard", currency="INR", coupon="flat")
    async with store.db.transaction(write=False) as session:
        quote = await catalog_service.build_quote(
            session,
            currency="INR",
            settings=store.app.state.settings,
            now=utcnow(),
            plan_code="standard",
            coupon_code="FLAT",
            user_id=store.user.id,
        )
    assert answer == QuoteRead.of(quote).model_dump(mode="json")
    assert (answer["slab_discount"], answer["offer_discount"], answer["coupon_discount"]) == (
        33_750,
        13_861,
        12_345,
    )
    assert (answer["tax"], answer["total"]) == (28_278, 418_322)  # 7.25 % of 390,044 = 28,278.19
