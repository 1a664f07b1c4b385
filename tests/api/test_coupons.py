"""Coupons over HTTP and their reservations, on both engines: admin CRUD with the audit trail, allotment and
withdrawal, ``GET /v1/me/coupons``, every reason ``POST /v1/coupons/validate`` gives (each from its own
situation), case-insensitive codes, and the reservation life cycle an order drives (reserve, redeem, release,
lapse).

Who may call which route is pinned by the authorisation matrix; ``test_admin_routes_refuse_...`` below
checks the admin-only ones here too. The quote's arithmetic is tests/unit/test_quote.py and
tests/api/test_quotes.py; concurrent reservations are tests/api/test_coupon_concurrency.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from prepaid.audit import service as audit_service
from prepaid.catalog import pricing
from prepaid.catalog import service as catalog_service
from prepaid.catalog.models import Coupon, CouponAssignment, CouponRedemption
from prepaid.db import Database, utcnow
from prepaid.errors import Conflict, InvalidRequest, NotFound
from tests import factories
from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error, audit_log, count

# ---------------------------------------------------------------- the store


@dataclass
class Store:
    app: Any
    client: httpx.AsyncClient
    admin: factories.TestUser
    user: factories.TestUser
    other: factories.TestUser

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database

    async def create(self, **fields: Any) -> dict[str, Any]:
        """A coupon made by the admin over HTTP (percent_off 10 % unless told otherwise)."""
        body = {"kind": "percent_off", "percent": 10, **fields}
        if body["kind"] != "percent_off" and fields.get("percent") is None:
            body.pop("percent")
        response = await self.client.post("/v1/coupons", json=body, headers=self.admin.headers)
        assert response.status_code == 201, response.text
        coupon: dict[str, Any] = response.json()
        return coupon

    async def validate(
        self,
        coupon: str,
        *,
        who: factories.TestUser | None = None,
        plan: str | None = "basic",
        quantity: int | None = None,
        currency: str = "INR",
    ) -> httpx.Response:
        body: dict[str, Any] = {"coupon": coupon, "currency": currency}
        if plan is not None:
            body["plan"] = plan
        if quantity is not None:
            body["quantity"] = quantity
        headers = who.headers if who is not None else {}
        return await self.client.post("/v1/coupons/validate", json=body, headers=headers)

    async def reserve(
        self,
        code: str,
        user: factories.TestUser | None,
        order_id: str,
        *,
        expires_at: datetime | None = None,
        now: datetime | None = None,
    ) -> CouponRedemption:
        now = now or utcnow()
        async with self.db.transaction() as session:
            return await catalog_service.reserve_coupon(
                session,
                code=code,
                user_id=user.id if user else None,
                order_id=order_id,
                expires_at=expires_at or now + timedelta(minutes=30),
                now=now,
            )

    async def redeem(self, order_id: str) -> CouponRedemption:
        async with self.db.transaction() as session:
            return await catalog_service.redeem_reservation(session, order_id)

    async def release(self, order_id: str) -> CouponRedemption | None:
        async with self.db.transaction() as session:
            return await catalog_service.release_reservation(session, order_id)

    async def my_coupons(self, who: factories.TestUser) -> list[str]:
        response = await self.client.get("/v1/me/coupons", headers=who.headers)
        assert response.status_code == 200, response.text
        return [coupon["code"] for coupon in response.json()["data"]]


async def make_plans(app: Any, admin_id: str) -> None:
    """basic: 100 credits for 1,000 rupees (or 12 dollars); standard: 500 (+25 bonus) for 4,500 rupees."""
    actor = audit_service.Actor(user_id=admin_id)
    async with app.state.db.transaction() as session:
        await catalog_service.create_plan(
            session,
            actor=actor,
            code="basic",
            name="Basic",
            credits=100,
            prices={"INR": 100_000, "USD": 1_200},
        )
        await catalog_service.create_plan(
            session,
            actor=actor,
            code="standard",
            name="Standard",
            credits=500,
            bonus_credits=25,
            prices={"INR": 450_000},
        )


@pytest.fixture
async def store(app: Any, client: httpx.AsyncClient) -> Store:
    admin = await make_customer(app, roles=["user", "admin"])
    await make_plans(app, admin.id)
    return Store(app, client, admin, await make_customer(app), await make_customer(app))


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- admin CRUD


async def test_an_admin_creates_a_coupon_stored_upper_case_and_found_in_any_case(store: Store) -> None:
    created = await store.create(
        code="Diwali-25",
        percent="12.5",
        description="Festival",
        plan_codes=["Basic"],
        min_amount={"inr": 50_000},
        max_redemptions=100,
        max_per_user=2,
    )
    assert created["object"] == "coupon" and created["id"].startswith("cpn_")
    assert (created["code"], created["percent"], created["percent_bps"]) == ("DIWALI-25", "12.5", 1250)
    assert created["plan_codes"] == ["basic"] and created["min_amount"] == {"INR": 50_000}
    assert (created["max_redemptions"], created["max_per_user"], created["visibility"]) == (100, 2, "public")
    assert (created["times_redeemed"], created["reserved"], created["active"]) == (0, 0, True)

    for spelling in ("diwali-25", "DIWALI-25", "Diwali-25"):
        found = await store.client.get(f"/v1/coupons/{spelling}", headers=store.admin.headers)
        assert found.status_code == 200 and found.json()["id"] == created["id"]
    listed = await store.client.get("/v1/coupons", headers=store.admin.headers)
    assert [c["code"] for c in listed.json()["data"]] == ["DIWALI-25"]

    (entry,) = await audit_log(store.client, store.admin.headers, action="coupon.create")
    assert entry["object_id"] == created["id"] and entry["actor_user_id"] == store.admin.id
    assert entry["before"] is None and entry["after"]["code"] == "DIWALI-25"


async def test_each_kind_takes_its_own_value(store: Store) -> None:
    amount = await store.create(code="FLAT", kind="amount_off", amount_off={"INR": 20_000, "usd": 300})
    assert amount["amount_off"] == {"INR": 20_000, "USD": 300} and amount["percent"] is None
    bonus = await store.create(code="EXTRA", kind="bonus_credits", bonus_credits=40)
    assert bonus["bonus_credits"] == 40 and bonus["amount_off"] == {}
    free = await store.create(code="FREE", percent=100)
    assert (free["percent"], free["percent_bps"]) == ("100", 10_000)


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"kind": "percent_off"}, 400, "field_required_for_kind", "percent"),
        ({"kind": "amount_off"}, 400, "field_required_for_kind", "amount_off"),
        ({"kind": "bonus_credits", "percent": 5}, 400, "field_required_for_kind", "bonus_credits"),
        (
            {"kind": "percent_off", "percent": 5, "bonus_credits": 3},
            400,
            "field_not_for_kind",
            "bonus_credits",
        ),
        ({"kind": "percent_off", "percent": "100.5"}, 400, "invalid_field", "percent"),
        ({"kind": "percent_off", "percent": 0}, 400, "invalid_field", "percent"),
        ({"kind": "percent_off", "percent": "1.234"}, 400, "invalid_field", "percent"),
        ({"kind": "amount_off", "amount_off": {"XYZ": 5}}, 400, "unsupported_currency", "amount_off.XYZ"),
        ({"kind": "amount_off", "amount_off": {"INR": 0}}, 400, "invalid_field", "amount_off.INR"),
        ({"percent": 5, "kind": "percent_off", "plan_codes": ["nope"]}, 400, "unknown_plan", "plan_codes.0"),
        ({"percent": 5, "kind": "percent_off", "max_per_user": 0}, 400, "invalid_field", "max_per_user"),
        (
            {
                "percent": 5,
                "kind": "percent_off",
                "starts_at": "2030-01-02T00:00:00Z",
                "ends_at": "2030-01-01T00:00:00Z",
            },
            400,
            "invalid_window",
            "ends_at",
        ),
        ({"percent": 5, "kind": "percent_off", "visibility": "secret"}, 400, "invalid_field", "visibility"),
        ({"percent": 5, "kind": "percent_off", "code": "no spaces"}, 400, "invalid_field", "code"),
        ({"percent": 5, "kind": "percent_off", "colour": "red"}, 400, "unknown_field", "colour"),
        ({"percent": 5, "kind": "percent_off", "code": "Validate"}, 400, "reserved_code", "code"),
    ],
)
async def test_a_bad_coupon_is_refused_and_nothing_is_made(
    store: Store, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    response = await store.client.post(
        "/v1/coupons", json={"code": "BAD", **body}, headers=store.admin.headers
    )
    assert_error(response, status, "invalid_request_error", code, param, well_formed=True)
    assert await count(store.db, Coupon) == 0


async def test_the_validate_path_is_not_a_coupon_code(store: Store) -> None:
    for method in ("GET", "PATCH"):
        response = await store.client.request(method, "/v1/coupons/validate", headers=store.admin.headers)
        assert_error(response, 405, "invalid_request_error", "method_not_allowed")
        assert response.headers["allow"] == "POST"


async def test_a_code_is_unique_whatever_its_case(store: Store) -> None:
    await store.create(code="SAVE")
    again = await store.client.post(
        "/v1/coupons", json={"code": "save", "kind": "percent_off", "percent": 5}, headers=store.admin.headers
    )
    assert_error(again, 409, "conflict", "coupon_code_taken", "code")
    assert await count(store.db, Coupon) == 1


async def test_an_admin_updates_a_coupon_and_the_change_is_audited(store: Store) -> None:
    created = await store.create(code="SPRING", max_redemptions=5)
    changed = await store.client.patch(
        "/v1/coupons/spring",
        json={"percent": 15, "max_redemptions": None, "visibility": "assigned", "min_amount": {"INR": 1_000}},
        headers=store.admin.headers,
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["percent_bps"], body["max_redemptions"], body["visibility"]) == (1500, None, "assigned")
    assert body["min_amount"] == {"INR": 1_000}
    (entry,) = await audit_log(store.client, store.admin.headers, action="coupon.update")
    assert entry["object_id"] == created["id"]
    assert (entry["before"]["percent_bps"], entry["after"]["percent_bps"]) == (1000, 1500)
    assert (entry["before"]["max_redemptions"], entry["after"]["max_redemptions"]) == (5, None)

    refused = await store.client.patch(
        "/v1/coupons/SPRING", json={"bonus_credits": 5}, headers=store.admin.headers
    )
    assert_error(refused, 400, "invalid_request_error", "field_not_for_kind", "bonus_credits")
    null = await store.client.patch("/v1/coupons/SPRING", json={"active": None}, headers=store.admin.headers)
    assert_error(null, 400, "invalid_request_error", "invalid_field", "active")
    missing = await store.client.patch("/v1/coupons/NOPE", json={"percent": 5}, headers=store.admin.headers)
    assert_error(missing, 404, "not_found", "coupon_not_found", "code")  # the path's code
    unknown = await store.client.get("/v1/coupons/nope", headers=store.admin.headers)
    assert_error(unknown, 404, "not_found", "coupon_not_found", "code")
    assert len(await audit_log(store.client, store.admin.headers, action="coupon.update")) == 1


async def test_archiving_ends_a_coupon_once_and_an_archived_coupon_does_not_change(store: Store) -> None:
    await store.create(code="OLD")
    allotted = await store.client.post(
        "/v1/coupons/OLD/assignments", json={"user_ids": [store.other.id]}, headers=store.admin.headers
    )
    assert allotted.status_code == 200
    first = await store.client.post("/v1/coupons/old/archive", headers=store.admin.headers)
    again = await store.client.post("/v1/coupons/OLD/archive", headers=store.admin.headers)
    assert first.status_code == again.status_code == 200
    assert first.json()["archived_at"] is not None and first.json()["active"] is False
    assert again.json()["archived_at"] == first.json()["archived_at"]
    assert len(await audit_log(store.client, store.admin.headers, action="coupon.archive")) == 1
    edit = await store.client.patch("/v1/coupons/OLD", json={"active": True}, headers=store.admin.headers)
    assert_error(edit, 409, "conflict", "coupon_archived")
    assign = await store.client.post(
        "/v1/coupons/OLD/assignments", json={"user_ids": [store.user.id]}, headers=store.admin.headers
    )
    assert_error(assign, 409, "conflict", "coupon_archived")
    withdraw = await store.client.delete(
        f"/v1/coupons/OLD/assignments/{store.other.id}", headers=store.admin.headers
    )
    assert_error(withdraw, 409, "conflict", "coupon_archived")
    assert await count(store.db, CouponAssignment) == 1
    assert len(await audit_log(store.client, store.admin.headers, action="coupon.unassign")) == 0
    assert_error(await store.validate("OLD"), 400, "invalid_request_error", "coupon_expired", "coupon")


async def test_admin_routes_refuse_users_and_keys_without_the_admin_scope(store: Store) -> None:
    await store.create(code="GUARDED")
    usage_key = await make_api_key(store.app, store.user, scopes=["usage:write", "balance:read"])
    server_key = await make_api_key(
        store.app,
        store.admin,
        scopes=["customers:write", "orders:write", "usage:write", "balance:read"],
        server=True,
    )
    admin_key = await make_api_key(store.app, store.admin, scopes=["admin"], server=True)
    calls = [
        ("GET", "/v1/coupons", None),
        ("POST", "/v1/coupons", {"code": "NEW", "kind": "percent_off", "percent": 5}),
        ("GET", "/v1/coupons/guarded", None),
        ("PATCH", "/v1/coupons/guarded", {"percent": 50}),
        ("GET", "/v1/coupons/guarded/assignments", None),
        ("POST", "/v1/coupons/guarded/assignments", {"user_ids": [store.user.id]}),
        ("DELETE", f"/v1/coupons/guarded/assignments/{store.user.id}", None),
        ("POST", "/v1/coupons/guarded/archive", None),
    ]
    for method, path, body in calls:
        anonymous = await store.client.request(method, path, json=body)
        assert_error(anonymous, 401, "authentication_error", "unauthenticated")
        for headers in (store.user.headers, usage_key.headers, server_key.headers):
            refused = await store.client.request(method, path, json=body, headers=headers)
            assert_error(refused, 403, "permission_error", "admin_required")
    # Nothing the refused calls sent took effect.
    async with store.db.transaction(write=False) as session:
        coupon = await catalog_service.get_coupon(session, "GUARDED")
        assert (coupon.percent_bps, coupon.archived_at) == (1000, None)
    assert await count(store.db, Coupon) == 1 and await count(store.db, CouponAssignment) == 0
    allowed = await store.client.patch("/v1/coupons/guarded", json={"percent": 20}, headers=admin_key.headers)
    assert allowed.status_code == 200 and allowed.json()["percent_bps"] == 2000
    (entry,) = await audit_log(store.client, store.admin.headers, action="coupon.update")
    assert entry["actor_api_key_id"] == admin_key.id


# ---------------------------------------------------------------- allotment and /v1/me/coupons


async def test_allotting_and_withdrawing_a_coupon(store: Store) -> None:
    coupon = await store.create(code="VIP", visibility="assigned", max_per_user=3)
    assigned = await store.client.post(
        "/v1/coupons/vip/assignments",
        json={"user_ids": [store.user.id, store.other.id, store.user.id]},
        headers=store.admin.headers,
    )
    assert assigned.status_code == 200, assigned.text
    assert sorted(a["user_id"] for a in assigned.json()["data"]) == sorted([store.user.id, store.other.id])
    assert {a["coupon"] for a in assigned.json()["data"]} == {"VIP"}
    again = await store.client.post(
        "/v1/coupons/VIP/assignments", json={"user_ids": [store.user.id]}, headers=store.admin.headers
    )
    assert [a["id"] for a in again.json()["data"]] == [
        a["id"] for a in assigned.json()["data"] if a["user_id"] == store.user.id
    ]
    listed = await store.client.get("/v1/coupons/VIP/assignments", headers=store.admin.headers)
    assert len(listed.json()["data"]) == 2
    (entry,) = await audit_log(store.client, store.admin.headers, action="coupon.assign")
    assert entry["object_id"] == coupon["id"] and sorted(entry["after"]["user_ids"]) == sorted(
        [store.user.id, store.other.id]
    )

    mine = await store.client.get("/v1/me/coupons", headers=store.user.headers)
    (item,) = mine.json()["data"]
    assert (item["object"], item["id"], item["code"]) == ("coupon", coupon["id"], "VIP")
    assert (item["uses_left"], item["percent"], item["asset"]) == (3, "10", "credit")
    assert (await store.validate("vip", who=store.user)).status_code == 200

    withdrawn = await store.client.delete(
        f"/v1/coupons/vip/assignments/{store.user.id}", headers=store.admin.headers
    )
    assert withdrawn.status_code == 200 and withdrawn.json()["deleted"] is True
    assert await store.my_coupons(store.user) == []
    assert await store.my_coupons(store.other) == ["VIP"]
    assert_error(
        await store.validate("VIP", who=store.user), 403, "permission_error", "coupon_not_assigned", "coupon"
    )
    twice = await store.client.delete(
        f"/v1/coupons/vip/assignments/{store.user.id}", headers=store.admin.headers
    )
    assert_error(twice, 404, "not_found", "coupon_assignment_not_found", "user_id")
    (entry,) = await audit_log(store.client, store.admin.headers, action="coupon.unassign")
    assert entry["before"]["user_ids"] == [store.user.id]


async def test_a_blank_user_id_is_refused_as_the_document_says(store: Store) -> None:
    """Bodies are trimmed, so " " is an empty id: the document's pattern says so too (schemathesis sent " ",
    which the document allowed, and the server refused)."""
    await store.create(code="VIP", visibility="assigned")
    response = await store.client.post(
        "/v1/coupons/VIP/assignments", json={"user_ids": [store.user.id, " "]}, headers=store.admin.headers
    )
    assert_error(response, 400, "invalid_request_error", "invalid_field", "user_ids.1")
    assert await count(store.db, CouponAssignment) == 0
    item = store.app.openapi()["components"]["schemas"]["CouponAssign"]["properties"]["user_ids"]["items"]
    assert re.search(item["pattern"], " ") is None and re.search(item["pattern"], store.user.id)


async def test_only_ascii_letters_fold_when_coupon_codes_are_matched(store: Store) -> None:
    """Unicode upper-casing turns "ß" into "SS": the path "ß" found the coupon SS."""
    await store.create(code="SS")
    assert (await store.client.get("/v1/coupons/ss", headers=store.admin.headers)).status_code == 200
    missing = await store.client.get("/v1/coupons/\u00df", headers=store.admin.headers)
    assert_error(missing, 404, "not_found", "coupon_not_found", "code")


async def test_allotting_to_an_unknown_user_allots_to_nobody(store: Store) -> None:
    await store.create(code="VIP", visibility="assigned")
    response = await store.client.post(
        "/v1/coupons/VIP/assignments",
        json={"user_ids": [store.user.id, "usr_nobody"]},
        headers=store.admin.headers,
    )
    assert_error(response, 404, "not_found", "resource_missing", "user_ids.1")
    assert await count(store.db, CouponAssignment) == 0
    missing = await store.client.post(
        "/v1/coupons/NOPE/assignments", json={"user_ids": [store.user.id]}, headers=store.admin.headers
    )
    assert_error(missing, 404, "not_found", "coupon_not_found", "code")


async def test_my_coupons_lists_only_what_i_can_still_use(store: Store) -> None:
    now = utcnow()
    await store.create(code="USABLE", visibility="assigned")
    await store.create(code="LATER", starts_at=_iso(now + timedelta(days=1)))
    await store.create(
        code="ENDED", ends_at=_iso(now - timedelta(seconds=1)), starts_at=_iso(now - timedelta(days=2))
    )
    await store.create(code="PAUSED", active=False)
    await store.create(code="GONE")
    await store.create(code="USED", max_per_user=1)
    await store.create(code="SOLD", max_redemptions=1)
    await store.create(code="NOT-MINE")
    for code in ("USABLE", "LATER", "ENDED", "PAUSED", "GONE", "USED", "SOLD"):
        response = await store.client.post(
            f"/v1/coupons/{code}/assignments", json={"user_ids": [store.user.id]}, headers=store.admin.headers
        )
        assert response.status_code == 200, response.text
    await store.client.post("/v1/coupons/GONE/archive", headers=store.admin.headers)
    await store.reserve("USED", store.user, "ord_used")
    await store.redeem("ord_used")
    await store.reserve("SOLD", store.other, "ord_sold")

    assert sorted(await store.my_coupons(store.user)) == ["LATER", "USABLE"]
    assert await store.my_coupons(store.other) == []


# ---------------------------------------------------------------- every reason a coupon does not apply


async def test_a_valid_coupon_answers_the_quote_whatever_the_case_of_its_code(store: Store) -> None:
    await store.create(code="Save10")
    for spelling in ("save10", "SAVE10", "Save10"):
        response = await store.validate(spelling)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["object"] == "quote" and body["applied"]["coupon"] == "SAVE10"
        assert (body["subtotal"], body["coupon_discount"], body["total"]) == (100_000, 10_000, 90_000)


async def test_coupon_not_found(store: Store) -> None:
    assert_error(
        await store.validate("NOSUCH"), 404, "not_found", "coupon_not_found", "coupon", well_formed=True
    )


async def test_coupon_expired(store: Store) -> None:
    now = utcnow()
    await store.create(
        code="PAST", starts_at=_iso(now - timedelta(days=2)), ends_at=_iso(now - timedelta(seconds=1))
    )
    error = assert_error(
        await store.validate("past"), 400, "invalid_request_error", "coupon_expired", "coupon"
    )
    assert "expired" in error["message"]


async def test_a_deactivated_coupon_is_expired_too(store: Store) -> None:
    await store.create(code="PAUSED", active=False)
    assert_error(await store.validate("PAUSED"), 400, "invalid_request_error", "coupon_expired", "coupon")


async def test_coupon_not_started(store: Store) -> None:
    starts = utcnow() + timedelta(hours=1)
    await store.create(code="SOON", starts_at=_iso(starts))
    error = assert_error(
        await store.validate("soon"), 400, "invalid_request_error", "coupon_not_started", "coupon"
    )
    assert error["starts_at"].startswith(starts.isoformat()[:19])


async def test_coupon_exhausted_counts_redeemed_and_live_reservations_but_not_lapsed_ones(
    store: Store,
) -> None:
    await store.create(code="ONCE", max_redemptions=1)
    past = utcnow() - timedelta(hours=1)
    await store.reserve("ONCE", store.other, "ord_lapsed", now=past, expires_at=past + timedelta(minutes=30))
    assert (await store.validate("ONCE", who=store.user)).status_code == 200  # a lapsed reservation is free

    await store.reserve("ONCE", store.other, "ord_live")
    assert_error(await store.validate("once", who=store.user), 409, "conflict", "coupon_exhausted", "coupon")
    await store.release("ord_live")
    assert (await store.validate("ONCE", who=store.user)).status_code == 200
    await store.reserve("ONCE", store.other, "ord_paid")
    await store.redeem("ord_paid")
    assert_error(await store.validate("ONCE"), 409, "conflict", "coupon_exhausted", "coupon")
    read = await store.client.get("/v1/coupons/ONCE", headers=store.admin.headers)
    assert (read.json()["times_redeemed"], read.json()["reserved"]) == (1, 0)


async def test_coupon_per_user_limit(store: Store) -> None:
    await store.create(code="TWICE", max_per_user=2)
    await store.reserve("TWICE", store.user, "ord_1")
    await store.redeem("ord_1")
    await store.reserve("TWICE", store.user, "ord_2")
    error = assert_error(
        await store.validate("twice", who=store.user), 409, "conflict", "coupon_per_user_limit", "coupon"
    )
    assert error["max_per_user"] == 2
    assert (await store.validate("TWICE", who=store.other)).status_code == 200


async def test_a_coupon_with_a_per_user_limit_needs_a_signed_in_user(store: Store) -> None:
    await store.create(code="PERUSER", max_per_user=1)
    assert_error(await store.validate("PERUSER"), 403, "permission_error", "coupon_not_assigned", "coupon")


async def test_coupon_not_applicable(store: Store) -> None:
    await store.create(code="STDONLY", plan_codes=["standard"])
    await store.create(code="RUPEES", kind="amount_off", amount_off={"INR": 100})
    assert_error(
        await store.validate("stdonly"), 400, "invalid_request_error", "coupon_not_applicable", "coupon"
    )
    assert (await store.validate("STDONLY", plan="standard")).status_code == 200
    assert_error(
        await store.validate("RUPEES", currency="USD"),
        400,
        "invalid_request_error",
        "coupon_not_applicable",
        "coupon",
    )


async def test_coupon_min_amount(store: Store) -> None:
    await store.create(code="BIGSPEND", min_amount={"INR": 100_001})
    error = assert_error(
        await store.validate("bigspend"), 400, "invalid_request_error", "coupon_min_amount", "coupon"
    )
    assert (error["min_amount"], error["currency"]) == (100_001, "INR")
    assert (await store.validate("BIGSPEND", plan="standard")).status_code == 200


async def test_coupon_not_assigned(store: Store) -> None:
    await store.create(code="INVITE", visibility="assigned")
    await store.client.post(
        "/v1/coupons/INVITE/assignments", json={"user_ids": [store.user.id]}, headers=store.admin.headers
    )
    assert (await store.validate("invite", who=store.user)).status_code == 200
    assert_error(
        await store.validate("INVITE", who=store.other),
        403,
        "permission_error",
        "coupon_not_assigned",
        "coupon",
    )
    assert_error(await store.validate("INVITE"), 403, "permission_error", "coupon_not_assigned", "coupon")


async def test_validate_needs_a_coupon_and_a_purchase(store: Store) -> None:
    await store.create(code="OK")
    no_coupon = await store.client.post("/v1/coupons/validate", json={"plan": "basic", "currency": "INR"})
    assert_error(no_coupon, 400, "invalid_request_error", "missing_field", "coupon")
    no_purchase = await store.validate("OK", plan=None)
    assert_error(no_purchase, 400, "invalid_request_error", "missing_field", "plan")


# ---------------------------------------------------------------- reservations (the payments issue drives these)


async def test_a_reservation_is_redeemed_once_and_then_cannot_be_released(store: Store) -> None:
    await store.create(code="ORDER", max_redemptions=2)
    reservation = await store.reserve("order", store.user, "ord_a")
    assert reservation.id.startswith("rsv_") and reservation.status == "reserved"
    again = await store.reserve("ORDER", store.user, "ord_a")  # the same order asks again: the same use
    assert again.id == reservation.id
    redeemed = await store.redeem("ord_a")
    assert redeemed.status == "redeemed" and redeemed.redeemed_at is not None
    assert (await store.redeem("ord_a")).status == "redeemed"
    with pytest.raises(Conflict) as refused:
        await store.release("ord_a")
    assert refused.value.code == "reservation_redeemed"
    assert await count(store.db, CouponRedemption) == 1


async def test_a_released_reservation_gives_its_use_back_and_can_be_taken_again(store: Store) -> None:
    await store.create(code="ONE", max_redemptions=1)
    await store.reserve("ONE", store.user, "ord_a")
    with pytest.raises(pricing.CouponExhausted):
        await store.reserve("ONE", store.other, "ord_b")
    released = await store.release("ord_a")
    assert released is not None and released.status == "released"
    assert (await store.release("ord_a")) is not None  # twice: the same
    assert await store.release("ord_without_coupon") is None
    taken = await store.reserve("ONE", store.other, "ord_b")
    assert taken.status == "reserved"
    with pytest.raises(pricing.CouponExhausted):  # ord_a's retry finds the use taken
        await store.reserve("ONE", store.user, "ord_a")


async def test_a_lapsed_reservation_stops_counting_and_is_redeemed_only_if_a_use_is_left(
    store: Store,
) -> None:
    await store.create(code="ONE", max_redemptions=1)
    past = utcnow() - timedelta(hours=1)
    await store.reserve("ONE", store.user, "ord_late", now=past, expires_at=past + timedelta(minutes=15))
    await store.reserve("ONE", store.other, "ord_on_time")
    with pytest.raises(pricing.CouponExhausted):
        await store.redeem("ord_late")  # its use lapsed and another order holds the only one
    assert (await store.redeem("ord_on_time")).status == "redeemed"

    await store.create(code="MANY", max_redemptions=5)
    await store.reserve("MANY", store.user, "ord_slow", now=past, expires_at=past + timedelta(minutes=15))
    assert (await store.redeem("ord_slow")).status == "redeemed"  # a use was left: the paid order keeps it


async def test_reservations_check_what_validation_checks(store: Store) -> None:
    now = utcnow()
    await store.create(code="INVITE", visibility="assigned")
    await store.create(code="SOON", starts_at=_iso(now + timedelta(hours=1)))
    await store.create(code="TWICE", max_per_user=1)
    with pytest.raises(pricing.CouponNotAssigned):
        await store.reserve("INVITE", store.user, "ord_1")
    with pytest.raises(pricing.CouponNotStarted):
        await store.reserve("SOON", store.user, "ord_2")
    with pytest.raises(pricing.CouponNotFound):
        await store.reserve("NOPE", store.user, "ord_3")
    with pytest.raises(pricing.CouponNotAssigned):  # a per-user limit needs a user
        await store.reserve("TWICE", None, "ord_4")
    await store.reserve("TWICE", store.user, "ord_5")
    with pytest.raises(pricing.CouponPerUserLimit):
        await store.reserve("TWICE", store.user, "ord_6")
    with pytest.raises(InvalidRequest) as past:
        await store.reserve("TWICE", store.other, "ord_7", expires_at=now - timedelta(seconds=1), now=now)
    assert past.value.code == "invalid_expiry"
    with pytest.raises(Conflict) as other_coupon:  # one order, one coupon
        await store.reserve("SOON", store.user, "ord_5")
    assert other_coupon.value.code == "order_coupon_mismatch"
    with pytest.raises(NotFound) as unknown:
        await store.redeem("ord_unknown")
    assert unknown.value.code == "reservation_not_found"
    assert await count(store.db, CouponRedemption) == 1
