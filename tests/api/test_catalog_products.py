"""The catalog's products over HTTP, on both engines: plans, unit prices, meters, discount slabs, offers.

Reads are public; writes are for admins (signed in, or an admin's key with the ``admin`` scope), each in the
audit log with its before and after. A refused write changes nothing. The demo seeds the catalog once.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest

from prepaid import demo
from prepaid.catalog.models import Coupon, DiscountSlab, Meter, Offer, Plan, PlanPrice, UnitPrice
from prepaid.db import Database, utcnow
from tests import factories
from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error, audit_log, count


@dataclass
class Shop:
    app: Any
    client: httpx.AsyncClient
    user: factories.TestUser
    admin: factories.TestUser
    usage: factories.TestKey  # the user's own key, usage:write
    server: factories.TestKey  # an admin's server key with every scope but admin
    server_admin: factories.TestKey  # an admin's server key with the admin scope

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database

    async def plan(self, **fields: Any) -> dict[str, Any]:
        body = {
            "code": f"plan-{secrets.token_hex(4)}",
            "name": "A plan",
            "credits": 100,
            "prices": {"INR": 100_000},
            **fields,
        }
        response = await self.client.post("/v1/plans", json=body, headers=self.admin.headers)
        assert response.status_code == 201, response.text
        plan: dict[str, Any] = response.json()
        return plan

    async def offer(self, **fields: Any) -> dict[str, Any]:
        body = {"name": "An offer", "kind": "percent_off", "percent": "10", **fields}
        response = await self.client.post("/v1/offers", json=body, headers=self.admin.headers)
        assert response.status_code == 201, response.text
        offer: dict[str, Any] = response.json()
        return offer


@pytest.fixture
async def shop(app: Any, client: httpx.AsyncClient) -> Shop:
    user = await make_customer(app)
    admin = await make_customer(app, roles=["user", "admin"])
    return Shop(
        app=app,
        client=client,
        user=user,
        admin=admin,
        usage=await make_api_key(app, user, scopes=["usage:write", "balance:read"]),
        server=await make_api_key(
            app, admin, scopes=["customers:write", "orders:write", "usage:write", "balance:read"], server=True
        ),
        server_admin=await make_api_key(app, admin, scopes=["admin"], server=True),
    )


# ---------------------------------------------------------------- plans


async def test_public_plan_list_shows_active_plans_sorted_with_their_prices(shop: Shop) -> None:
    second = await shop.plan(code="Beta", sort_order=2, prices={"INR": 450_000, "usd": 5_299}, popular=True)
    first_b = await shop.plan(code="b-first", sort_order=1)
    first_a = await shop.plan(code="a-first", sort_order=1, bonus_credits=25)
    await shop.plan(code="hidden", active=False)
    archived = await shop.plan(code="gone")
    assert (
        await shop.client.post(f"/v1/plans/{archived['id']}/archive", headers=shop.admin.headers)
    ).is_success

    response = await shop.client.get("/v1/plans")  # no credentials at all
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["has_more"] is False
    assert [plan["code"] for plan in body["data"]] == ["a-first", "b-first", "beta"]
    assert [plan["id"] for plan in body["data"]] == [first_a["id"], first_b["id"], second["id"]]
    beta = body["data"][2]
    assert beta["prices"] == {"INR": 450_000, "USD": 5_299}
    assert (beta["credits"], beta["bonus_credits"], beta["popular"], beta["asset"]) == (
        100,
        0,
        True,
        "credit",
    )
    assert body["data"][0]["bonus_credits"] == 25


async def test_archived_plan_stays_readable_and_admins_can_list_everything(shop: Shop) -> None:
    plan = await shop.plan(code="old-pack")
    inactive = await shop.plan(code="paused", active=False)
    archived = await shop.client.post(f"/v1/plans/{plan['id']}/archive", headers=shop.admin.headers)
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None and archived.json()["active"] is False

    by_id = await shop.client.get(f"/v1/plans/{plan['id']}")
    assert by_id.status_code == 200 and by_id.json()["archived_at"] is not None
    by_code = await shop.client.get("/v1/plans/OLD-PACK")
    assert by_code.json()["id"] == plan["id"]

    everything = await shop.client.get("/v1/plans?include_archived=true", headers=shop.admin.headers)
    assert {p["code"] for p in everything.json()["data"]} >= {"old-pack", "paused"}
    assert inactive["id"] in {p["id"] for p in everything.json()["data"]}
    assert_error(
        await shop.client.get("/v1/plans?include_archived=true", headers=shop.user.headers),
        403,
        "permission_error",
        "admin_required",
        "include_archived",
    )
    assert_error(
        await shop.client.get("/v1/plans?include_archived=true"),
        401,
        "authentication_error",
        "unauthenticated",
    )
    assert_error(await shop.client.get("/v1/plans/pln_nope"), 404, "not_found", "resource_missing", "plan_id")


async def test_admin_creates_updates_and_archives_a_plan_with_audit_entries(shop: Shop) -> None:
    plan = await shop.plan(code="pro", name="Pro", credits=500, prices={"INR": 450_000, "EUR": 4_899})
    assert plan["id"].startswith("pln_") and plan["code"] == "pro"

    updated = await shop.client.patch(
        f"/v1/plans/{plan['id']}",
        json={"name": "Pro plus", "bonus_credits": 50, "prices": {"USD": 5_299, "INR": 400_000}},
        headers=shop.server_admin.headers,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["prices"] == {"INR": 400_000, "USD": 5_299}  # EUR gone: the map is replaced
    assert (updated.json()["name"], updated.json()["bonus_credits"], updated.json()["credits"]) == (
        "Pro plus",
        50,
        500,
    )
    archived = await shop.client.post("/v1/plans/pro/archive", headers=shop.admin.headers)
    assert archived.status_code == 200
    again = await shop.client.post(f"/v1/plans/{plan['id']}/archive", headers=shop.admin.headers)
    assert again.status_code == 200 and again.json()["archived_at"] == archived.json()["archived_at"]

    entries = await audit_log(shop.client, shop.admin.headers, object_id=plan["id"])
    assert [entry["action"] for entry in entries] == ["plan.archive", "plan.update", "plan.create"]
    archive, update, create = entries
    assert create["before"] is None and create["after"]["prices"] == {"EUR": 4_899, "INR": 450_000}
    assert update["before"]["prices"] == {"EUR": 4_899, "INR": 450_000}
    assert update["after"]["prices"] == {"INR": 400_000, "USD": 5_299}
    assert update["actor_api_key_id"] == shop.server_admin.id
    assert archive["before"]["archived_at"] is None and archive["after"]["archived_at"] is not None

    assert_error(
        await shop.client.patch(f"/v1/plans/{plan['id']}", json={"name": "x"}, headers=shop.admin.headers),
        409,
        "conflict",
        "plan_archived",
    )


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"prices": {"XYZ": 100}}, 400, "unsupported_currency", "prices.XYZ"),
        ({"prices": {}}, 400, "invalid_field", "prices"),
        ({"prices": {"INR": 0}}, 400, "invalid_field", "prices.INR"),
        ({"prices": {"INR": "100"}}, 400, "invalid_field", "prices.INR"),
        ({"prices": {"INR": 100, "inr": 200}}, 400, "duplicate_currency", "prices.inr"),
        ({"credits": 0}, 400, "invalid_field", "credits"),
        ({"credits": 1.5}, 400, "invalid_field", "credits"),
        ({"bonus_credits": -1}, 400, "invalid_field", "bonus_credits"),
        ({"code": "has space"}, 400, "invalid_field", "code"),
        ({"name": "  "}, 400, "invalid_field", "name"),
        ({"popular": "yes"}, 400, "invalid_field", "popular"),
        ({"price": 5}, 400, "unknown_field", "price"),
        ({"code": "taken"}, 409, "plan_code_taken", "code"),
        ({"code": "TAKEN"}, 409, "plan_code_taken", "code"),
    ],
)
async def test_a_bad_plan_is_refused_and_changes_nothing(
    shop: Shop, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    await shop.plan(code="taken")
    plans_before, prices_before = await count(shop.db, Plan), await count(shop.db, PlanPrice)
    full = {
        "code": f"new-{secrets.token_hex(3)}",
        "name": "New",
        "credits": 10,
        "prices": {"INR": 100},
        **body,
    }
    response = await shop.client.post("/v1/plans", json=full, headers=shop.admin.headers)
    assert_error(response, status, "conflict" if status == 409 else "invalid_request_error", code, param)
    assert (await count(shop.db, Plan), await count(shop.db, PlanPrice)) == (plans_before, prices_before)


async def test_a_bad_plan_update_changes_nothing(shop: Shop) -> None:
    plan = await shop.plan(code="steady", prices={"INR": 1_000})
    for body, code, param in [
        ({"name": "ok", "prices": {"INR": 5, "ABC": 1}}, "unsupported_currency", "prices.ABC"),
        ({"name": None}, "invalid_field", "name"),
        ({"prices": None}, "invalid_field", "prices"),
        ({"code": "renamed"}, "unknown_field", "code"),
    ]:
        response = await shop.client.patch(f"/v1/plans/{plan['id']}", json=body, headers=shop.admin.headers)
        assert_error(response, 400, "invalid_request_error", code, param)
    now = await shop.client.get(f"/v1/plans/{plan['id']}")
    assert (now.json()["name"], now.json()["prices"]) == ("A plan", {"INR": 1_000})
    assert [e["action"] for e in await audit_log(shop.client, shop.admin.headers, object_id=plan["id"])] == [
        "plan.create"
    ]


# ---------------------------------------------------------------- who may write


async def _writes(shop: Shop) -> list[tuple[str, str, dict[str, Any] | None]]:
    plan = await shop.plan()
    meter = await shop.client.post(
        "/v1/meters",
        json={"code": f"m-{secrets.token_hex(3)}", "name": "M", "kind": "unit", "unit": "call", "price": 1},
        headers=shop.admin.headers,
    )
    offer = await shop.offer()
    return [
        ("POST", "/v1/plans", {"code": "denied", "name": "D", "credits": 1, "prices": {"INR": 100}}),
        ("PATCH", f"/v1/plans/{plan['id']}", {"name": "Denied"}),
        ("POST", f"/v1/plans/{plan['id']}/archive", None),
        ("PUT", "/v1/catalog/unit_prices", {"unit_prices": [{"currency": "INR", "unit_amount": 1}]}),
        ("POST", "/v1/meters", {"code": "denied", "name": "D", "kind": "unit", "unit": "call", "price": 1}),
        ("PATCH", f"/v1/meters/{meter.json()['code']}", {"name": "Denied"}),
        ("POST", f"/v1/meters/{meter.json()['code']}/archive", None),
        ("PUT", "/v1/discount_slabs", {"slabs": [{"min_credits": 10, "percent": 5}]}),
        ("POST", "/v1/offers", {"name": "Denied", "kind": "bonus_credits", "bonus_credits": 5}),
        ("PATCH", f"/v1/offers/{offer['id']}", {"name": "Denied"}),
        ("POST", f"/v1/offers/{offer['id']}/archive", None),
    ]


async def test_writes_are_refused_to_users_and_keys_without_admin_and_change_nothing(shop: Shop) -> None:
    writes = await _writes(shop)
    entries = len(await audit_log(shop.client, shop.admin.headers, limit=100))
    snapshot = [
        (await shop.client.get(path, headers=shop.admin.headers)).json()
        for path in ("/v1/plans?include_archived=true", "/v1/meters?include_archived=true")
    ]
    for headers in (shop.user.headers, shop.usage.headers, shop.server.headers):
        for method, path, body in writes:
            response = await shop.client.request(method, path, json=body, headers=headers)
            assert_error(response, 403, "permission_error", "admin_required")
    for method, path, body in writes:
        assert_error(
            await shop.client.request(method, path, json=body), 401, "authentication_error", "unauthenticated"
        )
    assert len(await audit_log(shop.client, shop.admin.headers, limit=100)) == entries
    assert snapshot == [
        (await shop.client.get(path, headers=shop.admin.headers)).json()
        for path in ("/v1/plans?include_archived=true", "/v1/meters?include_archived=true")
    ]
    assert (await shop.client.get("/v1/catalog/unit_prices")).json()["data"] == []
    assert (await shop.client.get("/v1/discount_slabs")).json()["data"] == []
    # The same writes with an admin's admin-scoped key succeed.
    for method, path, body in writes:
        response = await shop.client.request(method, path, json=body, headers=shop.server_admin.headers)
        assert response.is_success, f"{method} {path}: {response.text}"


async def test_admin_views_of_the_public_lists_need_the_admin_scope(shop: Shop) -> None:
    """Archived plans and meters, every offer, and an offer that is not live: admins only, and an admin's key
    only with the ``admin`` scope. Anyone else gets the public view's refusal (403, or 404 for the offer)."""
    hidden = await shop.offer(active=False)
    views = {
        "/v1/plans?include_archived=true": "include_archived",
        "/v1/meters?include_archived=true": "include_archived",
        "/v1/offers?all=true": "all",
    }
    for headers in (shop.user.headers, shop.usage.headers, shop.server.headers):
        for path, param in views.items():
            response = await shop.client.get(path, headers=headers)
            assert_error(response, 403, "permission_error", "admin_required", param)
        assert_error(
            await shop.client.get(f"/v1/offers/{hidden['id']}", headers=headers),
            404,
            "not_found",
            "resource_missing",
            "offer_id",
        )
    for headers in (shop.admin.headers, shop.server_admin.headers):
        for path in views:
            assert (await shop.client.get(path, headers=headers)).status_code == 200
        assert (await shop.client.get(f"/v1/offers/{hidden['id']}", headers=headers)).json() == hidden


# ---------------------------------------------------------------- unit prices


async def test_unit_prices_are_replaced_whole_and_read_publicly(shop: Shop) -> None:
    first = await shop.client.put(
        "/v1/catalog/unit_prices",
        json={
            "unit_prices": [
                {"currency": "inr", "unit_amount": 1_000, "min_quantity": 10, "max_quantity": 100_000},
                {"currency": "USD", "unit_amount": 12},
            ]
        },
        headers=shop.admin.headers,
    )
    assert first.status_code == 200, first.text
    listed = (await shop.client.get("/v1/catalog/unit_prices")).json()["data"]
    assert [(p["currency"], p["unit_amount"], p["min_quantity"], p["max_quantity"]) for p in listed] == [
        ("INR", 1_000, 10, 100_000),
        ("USD", 12, 1, 10**15),
    ]
    replaced = await shop.client.put(
        "/v1/catalog/unit_prices",
        json={"unit_prices": [{"currency": "EUR", "unit_amount": 11, "min_quantity": 5, "max_quantity": 5}]},
        headers=shop.admin.headers,
    )
    assert [p["currency"] for p in replaced.json()["data"]] == ["EUR"]
    assert await count(shop.db, UnitPrice) == 1
    entries = await audit_log(shop.client, shop.admin.headers, action="unit_prices.replace")
    assert len(entries) == 2
    assert [p["currency"] for p in entries[0]["before"]["unit_prices"]] == ["INR", "USD"]
    assert entries[0]["after"]["unit_prices"] == [
        {"currency": "EUR", "unit_amount": 11, "min_quantity": 5, "max_quantity": 5}
    ]


@pytest.mark.parametrize(
    ("items", "code", "param"),
    [
        ([{"currency": "XXX", "unit_amount": 1}], "unsupported_currency", "unit_prices.0.currency"),
        ([{"currency": "INR", "unit_amount": 0}], "invalid_field", "unit_prices.0.unit_amount"),
        (
            [{"currency": "INR", "unit_amount": 1, "min_quantity": 0}],
            "invalid_field",
            "unit_prices.0.min_quantity",
        ),
        (
            [{"currency": "INR", "unit_amount": 1, "min_quantity": 10, "max_quantity": 9}],
            "invalid_quantity_range",
            "unit_prices.0.max_quantity",
        ),
        (
            [{"currency": "INR", "unit_amount": 1}, {"currency": "inr", "unit_amount": 2}],
            "duplicate_currency",
            "unit_prices.1.currency",
        ),
    ],
)
async def test_a_bad_unit_price_list_changes_nothing(
    shop: Shop, items: list[dict[str, Any]], code: str, param: str
) -> None:
    good = {"unit_prices": [{"currency": "INR", "unit_amount": 1_000}]}
    assert (
        await shop.client.put("/v1/catalog/unit_prices", json=good, headers=shop.admin.headers)
    ).is_success
    response = await shop.client.put(
        "/v1/catalog/unit_prices", json={"unit_prices": items}, headers=shop.admin.headers
    )
    assert_error(response, 400, "invalid_request_error", code, param)
    listed = (await shop.client.get("/v1/catalog/unit_prices")).json()["data"]
    assert [(p["currency"], p["unit_amount"]) for p in listed] == [("INR", 1_000)]


# ---------------------------------------------------------------- meters


async def test_meters_and_model_prices(shop: Shop) -> None:
    unit = await shop.client.post(
        "/v1/meters",
        json={
            "code": "Voice_Second",
            "name": "Voice",
            "kind": "unit",
            "unit": "second",
            "price": 1,
            "per": 60,
        },
        headers=shop.admin.headers,
    )
    assert unit.status_code == 201, unit.text
    assert unit.json()["id"].startswith("mtr_")
    assert (unit.json()["code"], unit.json()["price"], unit.json()["per"], unit.json()["input_price"]) == (
        "voice_second",
        1,
        60,
        None,
    )
    model = await shop.client.post(
        "/v1/meters",
        json={"code": "gpt-4o", "name": "GPT-4o", "kind": "model", "input_price": 22, "output_price": 85},
        headers=shop.admin.headers,
    )
    assert model.status_code == 201, model.text
    assert (model.json()["unit"], model.json()["cached_input_price"], model.json()["price"]) == (
        "token",
        22,
        None,
    )
    image = await shop.client.post(
        "/v1/meters",
        json={"code": "image", "name": "Image", "kind": "unit", "unit": "image", "price": 2},
        headers=shop.admin.headers,
    )
    assert image.json()["per"] == 1

    listed = (await shop.client.get("/v1/meters")).json()["data"]
    assert [m["code"] for m in listed] == ["gpt-4o", "image", "voice_second"]
    assert (await shop.client.get("/v1/meters/GPT-4O")).json()["id"] == model.json()["id"]

    patched = await shop.client.patch(
        "/v1/meters/gpt-4o", json={"output_price": 90, "cached_input_price": 11}, headers=shop.admin.headers
    )
    assert (patched.json()["output_price"], patched.json()["cached_input_price"]) == (90, 11)
    archived = await shop.client.post("/v1/meters/image/archive", headers=shop.admin.headers)
    assert archived.status_code == 200 and archived.json()["archived_at"] is not None
    assert [m["code"] for m in (await shop.client.get("/v1/meters")).json()["data"]] == [
        "gpt-4o",
        "voice_second",
    ]
    assert (await shop.client.get("/v1/meters/image")).json()["archived_at"] is not None
    everything = await shop.client.get("/v1/meters?include_archived=true", headers=shop.server_admin.headers)
    assert len(everything.json()["data"]) == 3
    assert_error(
        await shop.client.patch("/v1/meters/image", json={"price": 3}, headers=shop.admin.headers),
        409,
        "conflict",
        "meter_archived",
    )
    assert_error(await shop.client.get("/v1/meters/nope"), 404, "not_found", "resource_missing", "code")

    entries = await audit_log(shop.client, shop.admin.headers, object_type="meter")
    assert sorted(e["action"] for e in entries) == [
        "meter.archive",
        "meter.create",
        "meter.create",
        "meter.create",
        "meter.update",
    ]
    update = next(e for e in entries if e["action"] == "meter.update")
    assert (update["before"]["output_price"], update["after"]["output_price"]) == (85, 90)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"kind": "unit", "unit": "call"}, 400, "field_required_for_kind", "price"),
        ({"kind": "unit", "price": 1}, 400, "field_required_for_kind", "unit"),
        (
            {"kind": "unit", "unit": "call", "price": 1, "input_price": 3},
            400,
            "field_not_for_kind",
            "input_price",
        ),
        ({"kind": "unit", "unit": "call", "price": -1}, 400, "invalid_field", "price"),
        ({"kind": "unit", "unit": "call", "price": 1, "per": 0}, 400, "invalid_field", "per"),
        ({"kind": "model", "input_price": 1}, 400, "field_required_for_kind", "output_price"),
        (
            {"kind": "model", "input_price": 1, "output_price": 1, "price": 1},
            400,
            "field_not_for_kind",
            "price",
        ),
        (
            {"kind": "model", "input_price": 1, "output_price": 1, "unit": "image"},
            400,
            "invalid_unit",
            "unit",
        ),
        ({"kind": "flat", "unit": "call", "price": 1}, 400, "invalid_field", "kind"),
        ({"kind": "unit", "unit": "Calls!", "price": 1}, 400, "invalid_field", "unit"),
        ({"kind": "unit", "unit": "call", "price": 1, "code": "taken"}, 409, "meter_code_taken", "code"),
    ],
)
async def test_a_bad_meter_is_refused_and_changes_nothing(
    shop: Shop, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    taken = {"code": "taken", "name": "T", "kind": "unit", "unit": "call", "price": 1}
    assert (await shop.client.post("/v1/meters", json=taken, headers=shop.admin.headers)).status_code == 201
    full = {"code": f"m-{secrets.token_hex(3)}", "name": "M", **body}
    response = await shop.client.post("/v1/meters", json=full, headers=shop.admin.headers)
    assert_error(response, status, "conflict" if status == 409 else "invalid_request_error", code, param)
    assert await count(shop.db, Meter) == 1


async def test_a_meter_update_keeps_to_its_kind(shop: Shop) -> None:
    body = {"code": "chat", "name": "Chat", "kind": "model", "input_price": 5, "output_price": 7}
    assert (await shop.client.post("/v1/meters", json=body, headers=shop.admin.headers)).status_code == 201
    for patch, code, param in [
        ({"price": 3}, "field_not_for_kind", "price"),
        ({"input_price": None}, "invalid_field", "input_price"),
        ({"kind": "unit"}, "unknown_field", "kind"),
    ]:
        response = await shop.client.patch("/v1/meters/chat", json=patch, headers=shop.admin.headers)
        assert_error(response, 400, "invalid_request_error", code, param)
    meter = (await shop.client.get("/v1/meters/chat")).json()
    assert (meter["input_price"], meter["output_price"], meter["price"]) == (5, 7, None)


# ---------------------------------------------------------------- discount slabs


async def test_discount_slabs_are_replaced_whole(shop: Shop) -> None:
    body = {
        "slabs": [
            {"min_credits": 1_000, "percent": 5},
            {"min_credits": 5_000, "percent": "7.5"},
            {"min_credits": 10_000, "percent": 12.25},
        ]
    }
    response = await shop.client.put("/v1/discount_slabs", json=body, headers=shop.admin.headers)
    assert response.status_code == 200, response.text
    listed = (await shop.client.get("/v1/discount_slabs")).json()["data"]
    assert [(s["min_credits"], s["percent"], s["percent_bps"]) for s in listed] == [
        (1_000, "5", 500),
        (5_000, "7.5", 750),
        (10_000, "12.25", 1_225),
    ]
    assert all(s["id"].startswith("slb_") and s["asset"] == "credit" for s in listed)
    second = await shop.client.put(
        "/v1/discount_slabs",
        json={"slabs": [{"min_credits": 2_000, "percent": "0.01"}]},
        headers=shop.admin.headers,
    )
    assert [(s["min_credits"], s["percent"]) for s in second.json()["data"]] == [(2_000, "0.01")]
    entries = await audit_log(shop.client, shop.admin.headers, action="discount_slabs.replace")
    assert entries[0]["before"]["slabs"] == [
        {"min_credits": 1_000, "percent_bps": 500},
        {"min_credits": 5_000, "percent_bps": 750},
        {"min_credits": 10_000, "percent_bps": 1_225},
    ]
    assert entries[0]["after"]["slabs"] == [{"min_credits": 2_000, "percent_bps": 1}]
    cleared = await shop.client.put("/v1/discount_slabs", json={"slabs": []}, headers=shop.admin.headers)
    assert cleared.json()["data"] == [] and await count(shop.db, DiscountSlab) == 0


@pytest.mark.parametrize(
    ("slabs", "code", "param"),
    [
        (
            [{"min_credits": 100, "percent": 5}, {"min_credits": 100, "percent": 6}],
            "slabs_not_ascending",
            "slabs.1.min_credits",
        ),
        (
            [{"min_credits": 200, "percent": 5}, {"min_credits": 100, "percent": 6}],
            "slabs_not_ascending",
            "slabs.1.min_credits",
        ),
        (
            [{"min_credits": 100, "percent": 8}, {"min_credits": 200, "percent": 6}],
            "slab_percent_decreasing",
            "slabs.1.percent",
        ),
        ([{"min_credits": 100, "percent": 0}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": 100}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": "-5"}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": "7.125"}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": 7.125}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": "NaN"}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": True}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 100, "percent": "abc"}], "invalid_field", "slabs.0.percent"),
        ([{"min_credits": 0, "percent": 5}], "invalid_field", "slabs.0.min_credits"),
        ([{"min_credits": 100}], "missing_field", "slabs.0.percent"),
    ],
)
async def test_a_bad_slab_list_changes_nothing(
    shop: Shop, slabs: list[dict[str, Any]], code: str, param: str
) -> None:
    good = {"slabs": [{"min_credits": 50, "percent": 2}]}
    assert (await shop.client.put("/v1/discount_slabs", json=good, headers=shop.admin.headers)).is_success
    response = await shop.client.put("/v1/discount_slabs", json={"slabs": slabs}, headers=shop.admin.headers)
    assert_error(response, 400, "invalid_request_error", code, param)
    listed = (await shop.client.get("/v1/discount_slabs")).json()["data"]
    assert [(s["min_credits"], s["percent_bps"]) for s in listed] == [(50, 200)]
    assert len(await audit_log(shop.client, shop.admin.headers, action="discount_slabs.replace")) == 1


# ---------------------------------------------------------------- offers


async def test_the_public_sees_only_offers_live_now(shop: Shop) -> None:
    now = utcnow()
    live = await shop.offer(name="Live", starts_at=(now - timedelta(days=1)).isoformat())
    open_ended = await shop.offer(name="Open", kind="bonus_credits", percent=None, bonus_credits=50)
    past = await shop.offer(
        name="Past",
        starts_at=(now - timedelta(days=10)).isoformat(),
        ends_at=(now - timedelta(days=1)).isoformat(),
    )
    future = await shop.offer(name="Future", starts_at=(now + timedelta(days=1)).isoformat())
    inactive = await shop.offer(name="Off", active=False)
    archived = await shop.offer(name="Archived")
    assert (
        await shop.client.post(f"/v1/offers/{archived['id']}/archive", headers=shop.admin.headers)
    ).is_success

    public = (await shop.client.get("/v1/offers")).json()
    assert [o["id"] for o in public["data"]] == [live["id"], open_ended["id"]]
    assert public["data"][0]["percent"] == "10" and public["data"][0]["percent_bps"] == 1_000
    assert (public["data"][1]["bonus_credits"], public["data"][1]["percent"]) == (50, None)

    everything = await shop.client.get("/v1/offers?all=true", headers=shop.admin.headers)
    ids = [o["id"] for o in everything.json()["data"]]
    assert ids == [o["id"] for o in (archived, inactive, future, past, open_ended, live)]  # newest first
    paged = await shop.client.get("/v1/offers?all=true&limit=2", headers=shop.admin.headers)
    assert [o["id"] for o in paged.json()["data"]] == ids[:2] and paged.json()["has_more"] is True
    assert_error(
        await shop.client.get("/v1/offers?all=true", headers=shop.user.headers),
        403,
        "permission_error",
        "admin_required",
        "all",
    )

    assert (await shop.client.get(f"/v1/offers/{live['id']}")).status_code == 200
    for hidden in (past, future, inactive, archived):
        assert_error(
            await shop.client.get(f"/v1/offers/{hidden['id']}"),
            404,
            "not_found",
            "resource_missing",
            "offer_id",
        )
        shown = await shop.client.get(f"/v1/offers/{hidden['id']}", headers=shop.admin.headers)
        assert shown.status_code == 200


async def test_offers_on_chosen_plans_are_validated_and_audited(shop: Shop) -> None:
    await shop.plan(code="basic")
    await shop.plan(code="premium")
    offer = await shop.offer(plan_codes=["BASIC", "premium", "basic"], percent=7.5)
    assert (offer["plan_codes"], offer["percent"], offer["percent_bps"]) == (["basic", "premium"], "7.5", 750)

    patched = await shop.client.patch(
        f"/v1/offers/{offer['id']}", json={"plan_codes": None, "percent": "12.5"}, headers=shop.admin.headers
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["plan_codes"], patched.json()["percent_bps"]) == (None, 1_250)
    archived = await shop.client.post(f"/v1/offers/{offer['id']}/archive", headers=shop.admin.headers)
    assert archived.json()["archived_at"] is not None
    assert_error(
        await shop.client.patch(f"/v1/offers/{offer['id']}", json={"name": "x"}, headers=shop.admin.headers),
        409,
        "conflict",
        "offer_archived",
    )
    entries = await audit_log(shop.client, shop.admin.headers, object_id=offer["id"])
    assert [e["action"] for e in entries] == ["offer.archive", "offer.update", "offer.create"]
    assert (entries[1]["before"]["plan_codes"], entries[1]["after"]["plan_codes"]) == (
        ["basic", "premium"],
        None,
    )
    assert (entries[1]["before"]["percent_bps"], entries[1]["after"]["percent_bps"]) == (750, 1_250)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"kind": "percent_off"}, "field_required_for_kind", "percent"),
        ({"kind": "percent_off", "percent": 10, "bonus_credits": 5}, "field_not_for_kind", "bonus_credits"),
        ({"kind": "bonus_credits"}, "field_required_for_kind", "bonus_credits"),
        ({"kind": "bonus_credits", "bonus_credits": 5, "percent": 3}, "field_not_for_kind", "percent"),
        ({"kind": "bonus_credits", "bonus_credits": 0}, "invalid_field", "bonus_credits"),
        ({"kind": "percent_off", "percent": 100}, "invalid_field", "percent"),
        ({"kind": "percent_off", "percent": "1.005"}, "invalid_field", "percent"),
        ({"kind": "percent_off", "percent": 5, "plan_codes": ["nope"]}, "unknown_plan", "plan_codes.0"),
        ({"kind": "percent_off", "percent": 5, "plan_codes": []}, "invalid_field", "plan_codes"),
        (
            {
                "kind": "percent_off",
                "percent": 5,
                "starts_at": "2030-01-02T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
            },
            "invalid_window",
            "ends_at",
        ),
        ({"kind": "percent_off", "percent": 5, "starts_at": "2030-01-02"}, "invalid_field", "starts_at"),
        ({"kind": "free", "percent": 5}, "invalid_field", "kind"),
    ],
)
async def test_a_bad_offer_is_refused_and_changes_nothing(
    shop: Shop, body: dict[str, Any], code: str, param: str
) -> None:
    response = await shop.client.post("/v1/offers", json={"name": "Bad", **body}, headers=shop.admin.headers)
    assert_error(response, 400, "invalid_request_error", code, param)
    assert await count(shop.db, Offer) == 0


async def test_a_bad_offer_update_changes_nothing(shop: Shop) -> None:
    now = utcnow()
    offer = await shop.offer(starts_at=now.isoformat(), ends_at=(now + timedelta(days=2)).isoformat())
    for body, code, param in [
        ({"ends_at": (now - timedelta(days=1)).isoformat()}, "invalid_window", "ends_at"),
        ({"bonus_credits": 5}, "field_not_for_kind", "bonus_credits"),
        ({"percent": None}, "invalid_field", "percent"),
        ({"kind": "bonus_credits"}, "unknown_field", "kind"),
    ]:
        response = await shop.client.patch(f"/v1/offers/{offer['id']}", json=body, headers=shop.admin.headers)
        assert_error(response, 400, "invalid_request_error", code, param)
    assert (await shop.client.get(f"/v1/offers/{offer['id']}")).json() == offer


@pytest.mark.parametrize("percent", [1e30, 6.8e307, -1.6e308])
async def test_a_percent_far_out_of_range_is_refused_not_a_crash(shop: Shop, percent: float) -> None:
    """Found by schemathesis: a JSON number too large to round to two places crashed the percent reader
    (500) on slabs and offers. It is a percentage out of range like any other."""
    admin = shop.admin.headers
    offer = await shop.offer()
    slabs = await shop.client.put(
        "/v1/discount_slabs", json={"slabs": [{"min_credits": 10, "percent": percent}]}, headers=admin
    )
    assert_error(slabs, 400, "invalid_request_error", "invalid_field", "slabs.0.percent", well_formed=True)
    created = await shop.client.post(
        "/v1/offers", json={"name": "Huge", "kind": "percent_off", "percent": percent}, headers=admin
    )
    assert_error(created, 400, "invalid_request_error", "invalid_field", "percent")
    patched = await shop.client.patch(f"/v1/offers/{offer['id']}", json={"percent": percent}, headers=admin)
    assert_error(patched, 400, "invalid_request_error", "invalid_field", "percent")
    coupon = await shop.client.post(
        "/v1/coupons", json={"code": "HUGE", "kind": "percent_off", "percent": percent}, headers=admin
    )
    assert_error(coupon, 400, "invalid_request_error", "invalid_field", "percent")
    assert (
        await count(shop.db, DiscountSlab),
        await count(shop.db, Offer),
        await count(shop.db, Coupon),
    ) == (
        0,
        1,
        0,
    )
    assert (await shop.client.get(f"/v1/offers/{offer['id']}")).json() == offer


async def test_only_ascii_letters_fold_when_codes_are_matched(shop: Shop) -> None:
    """Codes are ASCII. Unicode case mapping would let other characters fold into one: the Kelvin sign
    lower-cases to "k", so a path with it found the plan or meter "kit"."""
    plan = await shop.plan(code="kit")
    meter = await shop.client.post(
        "/v1/meters",
        json={"code": "kit", "name": "Kit", "kind": "unit", "unit": "call", "price": 1},
        headers=shop.admin.headers,
    )
    assert meter.status_code == 201
    assert (await shop.client.get("/v1/plans/KIT")).json()["id"] == plan["id"]
    assert (await shop.client.get("/v1/meters/KIT")).json()["id"] == meter.json()["id"]
    assert_error(await shop.client.get("/v1/plans/\u212ait"), 404, "not_found", "resource_missing", "plan_id")
    assert_error(await shop.client.get("/v1/meters/\u212ait"), 404, "not_found", "resource_missing", "code")


# ---------------------------------------------------------------- the demo


async def test_demo_seeds_the_catalog_once(shop: Shop) -> None:
    for _ in range(2):
        async with shop.db.transaction() as session:
            await demo.seed(session)
    plans = (await shop.client.get("/v1/plans")).json()["data"]
    assert [(p["code"], p["credits"], p["prices"]["INR"], p["popular"]) for p in plans] == [
        ("basic", 100, 1_000_00, False),
        ("standard", 500, 4_500_00, True),
        ("premium", 1_000, 8_000_00, False),
        ("enterprise", 3_000, 20_000_00, False),
        ("ultimate", 5_000, 30_000_00, False),
    ]
    assert all(set(p["prices"]) == {"INR", "USD", "EUR"} for p in plans)
    units = {p["currency"]: p for p in (await shop.client.get("/v1/catalog/unit_prices")).json()["data"]}
    assert (units["INR"]["unit_amount"], units["INR"]["min_quantity"], units["INR"]["max_quantity"]) == (
        1_000,
        10,
        100_000,
    )
    slabs = (await shop.client.get("/v1/discount_slabs")).json()["data"]
    assert len(slabs) == 3 and await count(shop.db, DiscountSlab) == 3
    meters = {m["code"]: m for m in (await shop.client.get("/v1/meters")).json()["data"]}
    assert {"gpt-4o", "gpt-4o-mini", "claude-sonnet", "claude-haiku", "gemini-flash"} <= set(meters)
    assert {"api_call", "image", "voice_second", "voice_minute"} <= set(meters)
    # gpt-4o: USD 2.50 / 1.25 / 10.00 per million tokens at 85 INR per USD and 10 INR per credit, rounded up.
    gpt = meters["gpt-4o"]
    assert (gpt["input_price"], gpt["cached_input_price"], gpt["output_price"]) == (22, 11, 85)
    assert (await count(shop.db, Plan), await count(shop.db, Meter), await count(shop.db, UnitPrice)) == (
        5,
        9,
        3,
    )
    # The demo coupon: 10 % off, public, so anyone can try it.
    assert await count(shop.db, Coupon) == 1
    welcome = await shop.client.post(
        "/v1/quotes", json={"plan": "basic", "currency": "INR", "coupon": "welcome10"}
    )
    assert welcome.status_code == 200, welcome.text
    assert (welcome.json()["coupon_discount"], welcome.json()["total"]) == (10_000, 90_000)
    # Seeded through the catalog's service: each addition is in the audit log once, by no user.
    created = await audit_log(shop.client, shop.admin.headers, action="plan.create", limit=100)
    assert len(created) == 5 and {entry["actor_user_id"] for entry in created} == {None}
    assert len(await audit_log(shop.client, shop.admin.headers, action="coupon.create")) == 1


async def test_demo_keeps_an_admins_changes(shop: Shop) -> None:
    async with shop.db.transaction() as session:
        await demo.seed(session)
    response = await shop.client.patch("/v1/plans/basic", json={"credits": 150}, headers=shop.admin.headers)
    assert response.status_code == 200
    async with shop.db.transaction() as session:
        await demo.seed(session)
    assert (await shop.client.get("/v1/plans/basic")).json()["credits"] == 150


def test_demo_prices_follow_the_credit_scale() -> None:
    assert demo.usd_to_credits("2.50", credit_scale=0) == 22  # 21.25 credits, rounded up
    assert demo.usd_to_credits("2.50", credit_scale=2) == 2_125
    assert demo.usd_to_credits("0.025", credit_scale=6) == 212_500
    assert demo._credit_units("0.1", 0) == (1, 10)  # 0.1 credit per call: 1 credit per 10 calls
    assert demo._credit_units("0.1", 6) == (100_000, 1)


async def test_one_code_created_many_times_at_once_is_made_once_and_the_rest_are_409(shop: Shop) -> None:
    """On PostgreSQL concurrent creations all pass the "is the code taken?" check, and all but one then hit the
    unique index: that must be the same 409 as a code taken earlier, never a 500."""
    bodies = {
        "/v1/plans": {"code": "rush", "name": "Rush", "credits": 1, "prices": {"INR": 100}},
        "/v1/meters": {"code": "rush", "name": "Rush", "kind": "unit", "unit": "call", "price": 1},
        "/v1/coupons": {"code": "RUSH", "kind": "percent_off", "percent": 5},
    }
    for path, body in bodies.items():
        answers = await asyncio.gather(
            *(shop.client.post(path, json=body, headers=shop.admin.headers) for _ in range(8))
        )
        assert sorted(answer.status_code for answer in answers) == [201] + [409] * 7, [
            a.text for a in answers
        ]
        taken = {answer.json()["error"]["code"] for answer in answers if answer.status_code == 409}
        assert taken == {f"{path.removeprefix('/v1/').removesuffix('s')}_code_taken"}
    assert (await count(shop.db, Plan), await count(shop.db, Meter), await count(shop.db, Coupon)) == (
        1,
        1,
        1,
    )


async def test_concurrent_list_replacements_never_merge(shop: Shop) -> None:
    """Each PUT replaces the whole list: run at once, the survivor is exactly one of them, never a mix."""
    lists = [
        {"slabs": [{"min_credits": 100 * (i + 1) + j, "percent": j + 1} for j in range(3)]} for i in range(6)
    ]
    prices = [
        {"unit_prices": [{"currency": currency, "unit_amount": 10}]} for currency in ("INR", "USD", "EUR")
    ]
    answers = await asyncio.gather(
        *(shop.client.put("/v1/discount_slabs", json=body, headers=shop.admin.headers) for body in lists),
        *(
            shop.client.put("/v1/catalog/unit_prices", json=body, headers=shop.admin.headers)
            for body in prices
        ),
    )
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    slabs = (await shop.client.get("/v1/discount_slabs")).json()["data"]
    survivor = [{"min_credits": s["min_credits"], "percent": s["percent_bps"] // 100} for s in slabs]
    assert survivor in [body["slabs"] for body in lists]
    units = (await shop.client.get("/v1/catalog/unit_prices")).json()["data"]
    assert len(units) == 1
