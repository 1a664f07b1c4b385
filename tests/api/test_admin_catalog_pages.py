"""The admin panel's catalog pages through the ASGI app, as a browser posts their forms: lists render and escape,
create, edit and archive go through the same services as ``/v1`` (checked there, and in the audit log), a
refused form shows each error next to its field and changes nothing, non-admins get 403, and a post without
the session's CSRF token is refused."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
import pytest

from prepaid.demo import seed_catalog
from prepaid.notify import realtime, webhooks_out
from tests.factories import TestUser, make_admin, make_user
from tests.helpers import audit_log, browser_signed_in

XSS = "<script>window.pwned=1</script><svg onload=alert(1)>"
PAGES = [
    "/admin/plans",
    "/admin/unit-prices",
    "/admin/meters",
    "/admin/slabs",
    "/admin/offers",
    "/admin/coupons",
    "/admin/webhooks",
]


def field_errors(page: str) -> dict[str, str]:
    """The non-empty error messages shown next to fields, by the field they are for."""
    found = re.findall(r'data-error-for="([^"]+)" role="alert">([^<]*)<', page)
    return {html.unescape(name): html.unescape(text) for name, text in found if text.strip()}


async def seeded(app: Any) -> None:
    async with app.state.db.transaction() as session:
        await seed_catalog(session, credit_scale=app.state.settings.credit_scale)


async def api_get(client: httpx.AsyncClient, admin: TestUser, path: str) -> Any:
    response = await client.get(path, headers=admin.headers)
    return response


# ---------------------------------------------------------------- access


async def test_every_catalog_page_is_for_admins_and_sends_others_to_sign_in(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    for path in PAGES:
        anonymous = await client.get(path)
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next=")
    async with browser_signed_in(app, user) as (browser, csrf):
        for path in PAGES:
            page = await browser.get(path)
            assert page.status_code == 403, path
            assert "Admins only" in page.text
        refused = await browser.post(
            "/admin/coupons",
            data={"csrf_token": csrf, "code": "SNEAKY", "kind": "percent_off", "percent": "50"},
        )
        assert refused.status_code == 403
    admin = await make_admin(app)
    assert (await client.get("/v1/coupons/SNEAKY", headers=admin.headers)).status_code == 404


async def test_a_form_post_without_the_csrf_token_is_refused_and_changes_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, _csrf):
        form = {"code": "NOCSRF", "kind": "percent_off", "percent": "10", "visibility": "public"}
        missing = await browser.post("/admin/coupons", data=form)
        wrong = await browser.post("/admin/coupons", data={**form, "csrf_token": "not-the-token"})
        plan = await browser.post(
            "/admin/plans", data={"code": "nocsrf", "name": "N", "credits": "1", "prices.INR": "1"}
        )
    assert (missing.status_code, wrong.status_code, plan.status_code) == (403, 403, 403)
    assert "Form expired" in missing.text
    assert (await client.get("/v1/coupons/NOCSRF", headers=admin.headers)).status_code == 404
    assert (await client.get("/v1/plans/nocsrf")).status_code == 404


# ---------------------------------------------------------------- plans


async def test_plans_are_created_edited_and_archived_through_the_forms_and_audited(
    app: Any, client: httpx.AsyncClient
) -> None:
    await seeded(app)
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        created = await browser.post(
            "/admin/plans",
            data={
                "csrf_token": csrf,
                "code": "gold",
                "name": f"Gold {XSS}",
                "credits": "1,000",
                "bonus_credits": "50",
                "prices.INR": "1299.50",
                "prices.USD": "15",
                "popular": "1",
                "active": "1",
                "sort_order": "5",
            },
        )
        assert created.status_code == 303 and created.headers["location"] == "/admin/plans?done=created"
        listing = await browser.get("/admin/plans")
        assert XSS not in listing.text and html.escape(f"Gold {XSS}", quote=False) in listing.text
        assert "₹1,299.50" in listing.text and "standard" in listing.text  # the seeded plans too

        read = (await client.get("/v1/plans/gold")).json()
        scale = 10**app.state.settings.credit_scale
        assert read["credits"] == 1000 * scale and read["bonus_credits"] == 50 * scale
        assert read["prices"] == {"INR": 129950, "USD": 1500} and read["popular"] is True
        assert read["sort_order"] == 5

        edit = await browser.get("/admin/plans/gold")
        assert 'value="1299.50"' in edit.text
        saved = await browser.post(
            "/admin/plans/gold",
            data={
                "csrf_token": csrf,
                "name": "Gold",
                "credits": "2000",
                "prices.EUR": "20.00",
                "active": "1",
            },
        )
        assert saved.status_code == 303 and saved.headers["location"] == "/admin/plans/gold?done=saved"
        read = (await client.get("/v1/plans/gold")).json()
        assert read["name"] == "Gold" and read["credits"] == 2000 * scale
        assert read["prices"] == {"EUR": 2000} and read["popular"] is False and read["bonus_credits"] == 0

        archived = await browser.post("/admin/plans/gold/archive", data={"csrf_token": csrf})
        assert archived.status_code == 303
        assert (await client.get("/v1/plans/gold")).json()["archived_at"] is not None
        page = await browser.get("/admin/plans/gold")
        assert "Archived" in page.text and "Save plan" not in page.text
        refused = await browser.post(
            "/admin/plans/gold", data={"csrf_token": csrf, "name": "Again", "credits": "1", "prices.INR": "1"}
        )
        assert refused.status_code == 409 and "archived" in field_errors(refused.text)["form"]

    entries = await audit_log(client, admin.headers, object_type="plan")
    mine = [e for e in entries if e["object_id"] == read["id"]]
    assert sorted(e["action"] for e in mine) == ["plan.archive", "plan.create", "plan.update"]
    assert all(e["actor_user_id"] == admin.id for e in mine)


async def test_a_bad_plan_form_shows_errors_next_to_fields_and_creates_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    await seeded(app)
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        bad = await browser.post(
            "/admin/plans",
            data={
                "csrf_token": csrf,
                "code": "silver",
                "name": f"Silver {XSS}",
                "credits": "-5",
                "prices.INR": "abc",
                "prices.USD": "1.234",
            },
        )
        assert bad.status_code == 400
        errors = field_errors(bad.text)
        assert set(errors) >= {"credits", "prices.INR", "prices.USD"}, errors
        assert 'value="abc"' in bad.text and XSS not in bad.text  # the form keeps what was typed, escaped
        no_price = await browser.post(
            "/admin/plans", data={"csrf_token": csrf, "code": "silver", "name": "Silver", "credits": "10"}
        )
        assert "prices" in field_errors(no_price.text)
        taken = await browser.post(
            "/admin/plans",
            data={"csrf_token": csrf, "code": "standard", "name": "Again", "credits": "1", "prices.INR": "1"},
        )
        assert taken.status_code == 409 and "code" in field_errors(taken.text)
        blank = await browser.post(
            "/admin/plans/standard",
            data={"csrf_token": csrf, "name": "Std", "credits": "", "prices.INR": "1"},
        )
        assert blank.status_code == 400 and "credits" in field_errors(blank.text)
    assert (await client.get("/v1/plans/silver")).status_code == 404
    assert (await client.get("/v1/plans/standard")).json()["name"] != "Std"
    assert (await client.get("/v1/plans/standard")).json()["name"] != "Again"


# ---------------------------------------------------------------- unit prices and slabs


async def test_unit_prices_are_replaced_from_the_table_and_a_bad_row_changes_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        saved = await browser.post(
            "/admin/unit-prices",
            data={
                "csrf_token": csrf,
                "unit_prices.INR.unit_amount": "1.50",
                "unit_prices.INR.min_quantity": "100",
                "unit_prices.JPY.unit_amount": "2",
            },
        )
        assert saved.status_code == 303
        prices = {p["currency"]: p for p in (await client.get("/v1/catalog/unit_prices")).json()["data"]}
        assert set(prices) == {"INR", "JPY"}
        assert (prices["INR"]["unit_amount"], prices["INR"]["min_quantity"]) == (150, 100)
        assert prices["JPY"]["unit_amount"] == 2
        assert 'value="1.50"' in (await browser.get("/admin/unit-prices")).text

        bad = await browser.post(
            "/admin/unit-prices",
            data={
                "csrf_token": csrf,
                "unit_prices.INR.unit_amount": "3",
                "unit_prices.USD.unit_amount": "0.10",
                "unit_prices.USD.min_quantity": "50",
                "unit_prices.USD.max_quantity": "10",
                "unit_prices.EUR.unit_amount": "-1",
            },
        )
        assert bad.status_code == 400
        errors = field_errors(bad.text)
        assert "unit_prices.EUR.unit_amount" in errors, errors
        worse = await browser.post(
            "/admin/unit-prices",
            data={
                "csrf_token": csrf,
                "unit_prices.USD.unit_amount": "0.10",
                "unit_prices.USD.min_quantity": "50",
                "unit_prices.USD.max_quantity": "10",
            },
        )
        assert "unit_prices.USD.max_quantity" in field_errors(worse.text)
    after = {
        p["currency"]: p["unit_amount"] for p in (await client.get("/v1/catalog/unit_prices")).json()["data"]
    }
    assert after == {"INR": 150, "JPY": 2}


async def test_discount_slabs_are_replaced_from_the_editable_table(
    app: Any, client: httpx.AsyncClient
) -> None:
    await seeded(app)
    admin = await make_admin(app)
    before = (await client.get("/v1/discount_slabs")).json()["data"]
    assert before, "the demo catalog has slabs"
    async with browser_signed_in(app, admin) as (browser, csrf):
        page = await browser.get("/admin/slabs")
        rows = int(re.search(r'name="rows" value="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        assert rows == len(before) + 3

        not_ascending = await browser.post(
            "/admin/slabs",
            data={
                "csrf_token": csrf,
                "rows": "4",
                "slabs.0.min_credits": "1000",
                "slabs.0.percent": "5",
                "slabs.2.min_credits": "500",  # row 1 is blank and left out; the error names the table's row 2
                "slabs.2.percent": "7.5",
                "slabs.3.min_credits": "5000",
                "slabs.3.percent": "120",
            },
        )
        assert not_ascending.status_code == 400
        errors = field_errors(not_ascending.text)
        assert "slabs.3.percent" in errors, errors
        assert 'value="500"' in not_ascending.text
        fixed = await browser.post(
            "/admin/slabs",
            data={
                "csrf_token": csrf,
                "rows": "4",
                "slabs.0.min_credits": "1000",
                "slabs.0.percent": "5",
                "slabs.2.min_credits": "500",
                "slabs.2.percent": "7.5",
            },
        )
        assert "slabs.2.min_credits" in field_errors(fixed.text)
        assert (await client.get("/v1/discount_slabs")).json()["data"] == before

        saved = await browser.post(
            "/admin/slabs",
            data={
                "csrf_token": csrf,
                "rows": "3",
                "slabs.0.min_credits": "500",
                "slabs.0.percent": "5",
                "slabs.2.min_credits": "1000",
                "slabs.2.percent": "7.5",
            },
        )
        assert saved.status_code == 303
    scale = 10**app.state.settings.credit_scale
    slabs = [
        (s["min_credits"], s["percent"]) for s in (await client.get("/v1/discount_slabs")).json()["data"]
    ]
    assert slabs == [(500 * scale, "5"), (1000 * scale, "7.5")]
    actions = [e["action"] for e in await audit_log(client, admin.headers, object_type="discount_slabs")]
    assert actions.count("discount_slabs.replace") >= 1


# ---------------------------------------------------------------- meters


async def test_meters_are_created_edited_and_archived_and_a_bad_one_is_refused(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    scale = 10**app.state.settings.credit_scale
    async with browser_signed_in(app, admin) as (browser, csrf):
        model = await browser.post(
            "/admin/meters",
            data={
                "csrf_token": csrf,
                "code": "gpt-x",
                "name": f"GPT {XSS}",
                "kind": "model",
                "input_price": "2",
                "output_price": "8",
                "active": "1",
            },
        )
        assert model.status_code == 303
        listing = await browser.get("/admin/meters")
        assert XSS not in listing.text and "gpt-x" in listing.text
        read = (await client.get("/v1/meters/gpt-x")).json()
        assert (read["input_price"], read["cached_input_price"], read["output_price"]) == (
            2 * scale,
            2 * scale,
            8 * scale,
        )

        unit_without_price = await browser.post(
            "/admin/meters",
            data={"csrf_token": csrf, "code": "calls", "name": "Calls", "kind": "unit", "unit": "call"},
        )
        assert unit_without_price.status_code == 400 and "price" in field_errors(unit_without_price.text)
        assert (await client.get("/v1/meters/calls")).status_code == 404

        saved = await browser.post(
            "/admin/meters/gpt-x",
            data={
                "csrf_token": csrf,
                "name": "GPT X",
                "input_price": "3",
                "cached_input_price": "1",
                "output_price": "9",
                "active": "1",
            },
        )
        assert saved.status_code == 303
        read = (await client.get("/v1/meters/gpt-x")).json()
        assert (read["name"], read["input_price"], read["cached_input_price"]) == (
            "GPT X",
            3 * scale,
            1 * scale,
        )

        negative = await browser.post(
            "/admin/meters/gpt-x",
            data={
                "csrf_token": csrf,
                "name": "GPT X",
                "input_price": "-1",
                "output_price": "9",
                "active": "1",
            },
        )
        assert negative.status_code == 400 and "input_price" in field_errors(negative.text)
        assert (await client.get("/v1/meters/gpt-x")).json()["input_price"] == 3 * scale

        archived = await browser.post("/admin/meters/gpt-x/archive", data={"csrf_token": csrf})
        assert archived.status_code == 303
        assert (await client.get("/v1/meters/gpt-x")).json()["archived_at"] is not None
        assert (await browser.get("/admin/meters/nope")).status_code == 404
    actions = {e["action"] for e in await audit_log(client, admin.headers, object_type="meter")}
    assert {"meter.create", "meter.update", "meter.archive"} <= actions


# ---------------------------------------------------------------- offers


async def test_offers_are_created_edited_and_archived_and_bad_values_create_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    await seeded(app)
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        bad = await browser.post(
            "/admin/offers",
            data={"csrf_token": csrf, "name": "Bad", "kind": "percent_off", "percent": "-5", "active": "1"},
        )
        assert bad.status_code == 400 and "percent" in field_errors(bad.text)
        backwards = await browser.post(
            "/admin/offers",
            data={
                "csrf_token": csrf,
                "name": "Backwards",
                "kind": "percent_off",
                "percent": "5",
                "starts_at": "2030-01-02T00:00",
                "ends_at": "2030-01-01T00:00",
                "active": "1",
            },
        )
        assert backwards.status_code == 400 and "ends_at" in field_errors(backwards.text)
        assert 'value="2030-01-01T00:00"' in backwards.text
        unknown_plan = await browser.post(
            "/admin/offers",
            data={
                "csrf_token": csrf,
                "name": "Nope",
                "kind": "bonus_credits",
                "bonus_credits": "10",
                "plan_codes": "no-such-plan",
                "active": "1",
            },
        )
        assert "plan_codes" in field_errors(unknown_plan.text)
        offers = (await client.get("/v1/offers", params={"all": "true"}, headers=admin.headers)).json()[
            "data"
        ]
        assert not [o for o in offers if o["name"] in {"Bad", "Backwards", "Nope"}]

        created = await browser.post(
            "/admin/offers",
            data={
                "csrf_token": csrf,
                "name": f"Diwali {XSS}",
                "kind": "percent_off",
                "percent": "12.5",
                "plan_codes": ["standard", "basic"],
                "starts_at": "2026-01-01T00:00",
                "ends_at": "2036-01-01T00:00",
                "active": "1",
            },
        )
        assert created.status_code == 303
        listing = await browser.get("/admin/offers")
        assert XSS not in listing.text and "12.5% off" in listing.text
        offers = (await client.get("/v1/offers", params={"all": "true"}, headers=admin.headers)).json()[
            "data"
        ]
        (offer,) = [o for o in offers if o["name"].startswith("Diwali")]
        assert offer["percent"] == "12.5" and sorted(offer["plan_codes"]) == ["basic", "standard"]
        assert offer["starts_at"].startswith("2026-01-01T00:00:00") and offer["ends_at"].startswith("2036")

        saved = await browser.post(
            f"/admin/offers/{offer['id']}",
            data={"csrf_token": csrf, "name": "Diwali", "percent": "15", "active": "1"},
        )
        assert saved.status_code == 303
        read = (await client.get(f"/v1/offers/{offer['id']}", headers=admin.headers)).json()
        assert (read["name"], read["percent"], read["plan_codes"], read["starts_at"]) == (
            "Diwali",
            "15",
            None,
            None,
        )

        archived = await browser.post(f"/admin/offers/{offer['id']}/archive", data={"csrf_token": csrf})
        assert archived.status_code == 303
        read = (await client.get(f"/v1/offers/{offer['id']}", headers=admin.headers)).json()
        assert read["archived_at"] is not None
    actions = {e["action"] for e in await audit_log(client, admin.headers, object_type="offer")}
    assert {"offer.create", "offer.update", "offer.archive"} <= actions


# ---------------------------------------------------------------- coupons


async def test_a_coupon_is_created_allotted_by_email_withdrawn_and_archived(
    app: Any, client: httpx.AsyncClient
) -> None:
    await seeded(app)
    admin = await make_admin(app)
    buyer = await make_user(app, name=f"Buyer {XSS}")
    async with browser_signed_in(app, admin) as (browser, csrf):
        created = await browser.post(
            "/admin/coupons",
            data={
                "csrf_token": csrf,
                "code": "vip-20",
                "description": f"For {XSS}",
                "kind": "amount_off",
                "amount_off.INR": "100",
                "amount_off.USD": "1.50",
                "min_amount.INR": "500",
                "max_redemptions": "10",
                "max_per_user": "1",
                "plan_codes": "standard",
                "visibility": "assigned",
                "ends_at": "2036-01-01T00:00",
                "active": "1",
            },
        )
        assert (
            created.status_code == 303 and created.headers["location"] == "/admin/coupons/VIP-20?done=created"
        )
        read = (await client.get("/v1/coupons/VIP-20", headers=admin.headers)).json()
        assert read["amount_off"] == {"INR": 10000, "USD": 150} and read["min_amount"] == {"INR": 50000}
        assert (read["max_redemptions"], read["max_per_user"], read["visibility"]) == (10, 1, "assigned")
        assert read["plan_codes"] == ["standard"]

        listing = await browser.get("/admin/coupons")
        assert "VIP-20" in listing.text and "₹100.00" in listing.text and "Allotted users" in listing.text

        unknown = await browser.post(
            "/admin/coupons/VIP-20/assignments",
            data={"csrf_token": csrf, "emails": f"{buyer.email}\nnobody@example.com"},
        )
        assert unknown.status_code == 400 and "nobody@example.com" in field_errors(unknown.text)["emails"]
        assert (await client.get("/v1/me/coupons", headers=buyer.headers)).json()["data"] == []

        allotted = await browser.post(
            "/admin/coupons/vip-20/assignments", data={"csrf_token": csrf, "emails": buyer.email.upper()}
        )
        assert allotted.status_code == 303
        mine = (await client.get("/v1/me/coupons", headers=buyer.headers)).json()["data"]
        assert [c["code"] for c in mine] == ["VIP-20"]
        detail = await browser.get("/admin/coupons/VIP-20")
        assert buyer.email in detail.text and XSS not in detail.text
        assert html.escape(f"Buyer {XSS}", quote=False) in detail.text

        withdrawn = await browser.post(
            "/admin/coupons/VIP-20/withdraw", data={"csrf_token": csrf, "user_id": buyer.id}
        )
        assert withdrawn.status_code == 303
        assert (await client.get("/v1/me/coupons", headers=buyer.headers)).json()["data"] == []
        again = await browser.post(
            "/admin/coupons/VIP-20/withdraw", data={"csrf_token": csrf, "user_id": buyer.id}
        )
        assert again.status_code == 404 and "not allotted" in field_errors(again.text)["form"]

        edit = await browser.get("/admin/coupons/VIP-20")
        assert 'name="amount_off.USD"' in edit.text and 'value="1.50"' in edit.text
        assert 'name="percent"' not in edit.text  # an amount-off coupon stays one
        bad_edit = await browser.post(
            "/admin/coupons/VIP-20",
            data={"csrf_token": csrf, "visibility": "assigned", "amount_off.INR": "-3", "max_per_user": "2"},
        )
        assert bad_edit.status_code == 400 and "amount_off.INR" in field_errors(bad_edit.text)
        no_amount = await browser.post(
            "/admin/coupons/VIP-20", data={"csrf_token": csrf, "visibility": "public", "active": "1"}
        )
        assert no_amount.status_code == 400 and "amount_off" in field_errors(no_amount.text)
        unchanged = (await client.get("/v1/coupons/VIP-20", headers=admin.headers)).json()
        assert (unchanged["max_per_user"], unchanged["visibility"]) == (1, "assigned")
        saved = await browser.post(
            "/admin/coupons/VIP-20",
            data={
                "csrf_token": csrf,
                "description": "Twenty off",
                "visibility": "public",
                "amount_off.INR": "200",
                "max_per_user": "3",
                "starts_at": "2026-01-01T00:00",
                "active": "1",
            },
        )
        assert saved.status_code == 303
        read = (await client.get("/v1/coupons/VIP-20", headers=admin.headers)).json()
        assert (read["description"], read["visibility"], read["amount_off"]) == (
            "Twenty off",
            "public",
            {"INR": 20000},
        )
        assert (read["max_redemptions"], read["max_per_user"], read["plan_codes"]) == (None, 3, None)
        assert (
            read["min_amount"] == {}
            and read["ends_at"] is None
            and read["starts_at"].startswith("2026-01-01")
        )

        archived = await browser.post("/admin/coupons/VIP-20/archive", data={"csrf_token": csrf})
        assert archived.status_code == 303
        assert (await client.get("/v1/coupons/VIP-20", headers=admin.headers)).json()[
            "archived_at"
        ] is not None
        assert (await browser.get("/admin/coupons/NOPE")).status_code == 404
    actions = {e["action"] for e in await audit_log(client, admin.headers, object_type="coupon")}
    assert {"coupon.create", "coupon.assign", "coupon.unassign", "coupon.update", "coupon.archive"} <= actions


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"kind": "percent_off", "percent": "-10"}, "percent"),
        ({"kind": "percent_off", "percent": "150"}, "percent"),
        ({"kind": "percent_off"}, "percent"),
        ({"kind": "amount_off", "amount_off.INR": "-1"}, "amount_off.INR"),
        ({"kind": "bonus_credits", "bonus_credits": "0"}, "bonus_credits"),
        ({"kind": "percent_off", "percent": "5", "max_per_user": "0"}, "max_per_user"),
        (
            {
                "kind": "percent_off",
                "percent": "5",
                "starts_at": "2030-02-01T00:00",
                "ends_at": "2030-01-01T00:00",
            },
            "ends_at",
        ),
        ({"kind": "percent_off", "percent": "5", "starts_at": "yesterday"}, "starts_at"),
    ],
)
async def test_a_bad_coupon_form_shows_the_error_next_to_its_field_and_creates_nothing(
    app: Any, client: httpx.AsyncClient, form: dict[str, str], field: str
) -> None:
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        bad = await browser.post(
            "/admin/coupons", data={"csrf_token": csrf, "code": "BAD1", "visibility": "public", **form}
        )
    assert bad.status_code == 400
    assert field in field_errors(bad.text), field_errors(bad.text)
    assert (await client.get("/v1/coupons/BAD1", headers=admin.headers)).status_code == 404


# ---------------------------------------------------------------- webhook endpoints


async def test_a_webhook_endpoint_shows_its_secret_once_lists_deliveries_redelivers_and_is_deleted(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        bad = await browser.post(
            "/admin/webhooks",
            data={"csrf_token": csrf, "url": "https://example.com/hook", "event_types": ["nope.event"]},
        )
        assert bad.status_code == 400 and "event_types" in field_errors(bad.text)
        none_ticked = await browser.post(
            "/admin/webhooks", data={"csrf_token": csrf, "url": "https://x.example"}
        )
        assert "event_types" in field_errors(none_ticked.text)
        assert (await client.get("/v1/webhook_endpoints", headers=admin.headers)).json()["data"] == []

        created = await browser.post(
            "/admin/webhooks",
            data={
                "csrf_token": csrf,
                "url": "https://example.com/hook",
                "description": XSS,
                "event_types": ["order.paid", "usage.recorded"],
            },
        )
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"  # the secret stays out of every cache
        secret = re.search(r'<code id="webhook-secret">([^<]+)</code>', created.text).group(1)  # type: ignore[union-attr]
        assert secret.startswith("whsec_")
        assert XSS not in created.text
        listing = await browser.get("/admin/webhooks")
        assert secret not in listing.text and "https://example.com/hook" in listing.text
        (endpoint,) = (await client.get("/v1/webhook_endpoints", headers=admin.headers)).json()["data"]
        assert endpoint["event_types"] == ["order.paid", "usage.recorded"]

        async with app.state.db.transaction() as session:
            (delivery,) = await webhooks_out.enqueue(
                session, user_id=None, event=realtime.make_event(type="order.paid", data={"order": "ord_x"})
            )
        page = await browser.get(f"/admin/webhooks/{endpoint['id']}")
        assert page.status_code == 200 and delivery.event_id in page.text and secret not in page.text
        again = await browser.post(
            f"/admin/webhooks/{endpoint['id']}/deliveries/{delivery.id}/redeliver", data={"csrf_token": csrf}
        )
        assert again.status_code == 303
        deliveries = (
            await client.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", headers=admin.headers)
        ).json()["data"]
        assert [d["redelivery_of"] for d in deliveries] == [delivery.id, None]
        missing = await browser.post(
            f"/admin/webhooks/{endpoint['id']}/deliveries/wdl_nope/redeliver", data={"csrf_token": csrf}
        )
        assert missing.status_code == 404 and "wdl_nope" in field_errors(missing.text)["form"]

        deleted = await browser.post(f"/admin/webhooks/{endpoint['id']}/delete", data={"csrf_token": csrf})
        assert deleted.status_code == 303
        assert (await browser.get(f"/admin/webhooks/{endpoint['id']}")).status_code == 404
        assert "https://example.com/hook" not in (await browser.get("/admin/webhooks")).text
        assert (await client.get("/v1/webhook_endpoints", headers=admin.headers)).json()["data"] == []
    actions = {e["action"] for e in await audit_log(client, admin.headers)}
    assert {"webhook_endpoint.create", "webhook_delivery.redeliver", "webhook_endpoint.delete"} <= actions


# ---------------------------------------------------------------- odd input


@pytest.mark.parametrize(
    "path",
    [
        "/admin/plans/%00",
        "/admin/plans/%C3%A9",
        "/admin/meters/%00",
        "/admin/offers/%00",
        "/admin/coupons/%00",
        "/admin/webhooks/%00",
        "/admin/offers?after=%00",
        "/admin/coupons?after=%00",
        "/admin/webhooks?after=%00",
    ],
)
async def test_an_odd_id_or_cursor_in_the_url_is_a_page_not_a_crash(app: Any, path: str) -> None:
    """A NUL or non-ASCII id reaches no database driver (PostgreSQL refuses NUL in text): a 404 page, or an
    empty list for a cursor."""
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        page = await browser.get(path)
        assert page.status_code in (200, 404), page.text
        assert page.headers["content-type"].startswith("text/html")
        if "?" not in path:
            posted = await browser.post(f"{path}/archive", data={"csrf_token": csrf})
            assert posted.status_code in (404, 405), posted.text  # webhooks have no archive route


async def test_odd_amounts_and_nul_characters_are_errors_next_to_their_fields(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        plan = {"csrf_token": csrf, "code": "odd", "name": "Odd", "credits": "10"}
        cases = [
            ({"prices.INR": "1e999999999"}, "prices.INR", "Enter a number"),  # once decimal.Overflow: a 500
            ({"prices.INR": "1e-999999999"}, "prices.INR", "decimal places"),
            ({"prices.INR": "1.0000000000000000000000000001"}, "prices.INR", "decimal places"),
            ({"prices.INR": "NaN"}, "prices.INR", "Enter a number"),
            ({"prices.INR": "\u0661\u0662"}, "prices.INR", "Enter a number"),
            ({"prices.INR": "12", "credits": "1.5"}, "credits", "whole number"),
            ({"prices.INR": "12", "description": "a\x00b"}, "description", "control characters"),
        ]
        for change, field, text in cases:
            refused = await browser.post("/admin/plans", data={**plan, **change})
            assert refused.status_code == 400, (change, refused.text)
            assert text in field_errors(refused.text).get(field, ""), (change, field_errors(refused.text))
        exact = await browser.post("/admin/plans", data={**plan, "prices.INR": "1,299.50"})
        assert exact.status_code == 303, field_errors(exact.text)

        await browser.post(
            "/admin/coupons",
            data={
                "csrf_token": csrf,
                "code": "ODD",
                "kind": "percent_off",
                "percent": "5",
                "visibility": "public",
            },
        )
        allot = await browser.post(
            "/admin/coupons/ODD/assignments", data={"csrf_token": csrf, "emails": "a\x00@example.com"}
        )
        assert allot.status_code == 400 and "control characters" in field_errors(allot.text)["emails"]
    found = (await client.get("/v1/plans/odd")).json()
    assert found["prices"]["INR"] == 129950
