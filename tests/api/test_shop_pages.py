"""The shop's pages through the ASGI app, on both engines: the public price list at ``/`` (read from the catalog,
escaped), ``/buy`` (signed in: the plans, currencies and the user's allotted coupons), and the way from an
order to its checkout and back (a declined payment's return page, the owner-only links to the order)."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from prepaid.audit import service as audit_service
from prepaid.catalog import service as catalog_service
from prepaid.demo import seed_catalog
from tests.factories import make_user
from tests.helpers import browser_signed_in
from tests.payments.test_checkout_pages_support import DECLINED, local, pay_on_sandbox


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"gateways": "sandbox"}


async def _seed(app: Any) -> None:
    async with app.state.db.transaction() as session:
        await seed_catalog(session, credit_scale=0)


def _text(page: httpx.Response) -> str:
    """The page's text without its tags, entities decoded and spaces squeezed."""
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page.text)))


async def test_home_lists_plans_prices_slabs_models_and_offers_to_anyone(
    app: Any, client: httpx.AsyncClient
) -> None:
    await _seed(app)
    async with app.state.db.transaction() as session:
        await catalog_service.create_offer(
            session,
            actor=audit_service.Actor(user_id=None),
            name="Diwali <b>sale</b>",
            kind="percent_off",
            percent_bps=750,
        )
    page = await client.get("/")
    assert page.status_code == 200, page.text
    text = _text(page)
    for shown in ("Basic", "Standard", "Premium", "500 credits", "₹4,500.00", "$52.99", "€48.99"):
        assert shown in text, shown
    assert 'href="/buy?plan=standard"' in page.text
    assert "₹10.00" in text  # a custom quantity's price per credit
    assert re.search(r"2,000 credits 5 %", text) and "10,000 credits 10 %" in text  # the discount slabs
    assert "OpenAI GPT-4o" in text and "Credits per million tokens" in text
    row = re.search(r"OpenAI GPT-4o gpt-4o (\S+) (\S+) (\S+)", text)
    assert row is not None and row.groups() == (
        "22",
        "11",
        "85",
    )  # USD 2.50 / 1.25 / 10.00 at the demo's rates
    assert "0.1 credits per call" in text and "1 credit per 60 seconds" in text
    assert "Diwali <b>sale</b>" in text and "Diwali <b>" not in page.text  # escaped, not markup
    assert "7.5 % off on every plan and custom quantity" in text
    assert "Sign in" in text  # nobody is signed in


async def test_home_escapes_a_plan_name_holding_markup(app: Any, client: httpx.AsyncClient) -> None:
    async with app.state.db.transaction() as session:
        await catalog_service.create_plan(
            session,
            actor=audit_service.Actor(user_id=None),
            code="evil",
            name="<script>alert(1)</script>",
            description="<img src=x onerror=alert(2)>",
            credits=10,
            prices={"INR": 100_00},
        )
    page = await client.get("/")
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<img src=x" not in page.text


async def test_buy_sends_a_signed_out_visitor_to_sign_in_and_back(client: httpx.AsyncClient) -> None:
    answer = await client.get("/buy")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/buy"
    answer = await client.get("/buy?plan=standard")
    assert answer.headers["location"] == "/login?next=/buy?plan=standard"


async def test_buy_shows_the_plans_currencies_and_the_users_coupons(app: Any) -> None:
    await _seed(app)
    user = await make_user(app)
    other = await make_user(app)
    admin = audit_service.Actor(user_id=None)
    async with app.state.db.transaction() as session:
        for code, visibility in (("VIP20", "assigned"), ("OTHER5", "assigned")):
            await catalog_service.create_coupon(
                session,
                actor=admin,
                code=code,
                kind="percent_off",
                percent_bps=2_000,
                description=f"{code} <i>just for you</i>",
                visibility=visibility,
            )
        await catalog_service.assign_coupon(session, code="VIP20", user_ids=[user.id], actor=admin)
        await catalog_service.assign_coupon(session, code="OTHER5", user_ids=[other.id], actor=admin)
    async with browser_signed_in(app, user) as (browser, _csrf):
        page = await browser.get("/buy?plan=premium&currency=USD")
        assert page.status_code == 200, page.text
        assert 'src="/static/buy.js"' in page.text
        assert re.search(r'value="premium"[^>]*checked', page.text)
        assert re.search(r'<option value="USD" selected>', page.text)
        assert "Your coupons" in page.text
        assert 'value="VIP20"' in page.text and "VIP20 &lt;i&gt;just for you&lt;/i&gt;" in page.text
        assert "OTHER5" not in page.text  # someone else's coupon
        for currency in ("INR", "USD", "EUR"):
            assert f'<option value="{currency}"' in page.text
        custom = await browser.get("/buy?quantity=2500")
        assert re.search(r'value="custom"[^>]*checked', custom.text)
        assert 'value="2500"' in custom.text
        odd = await browser.get("/buy?plan=nope&currency=XXX&quantity=12abc")
        assert odd.status_code == 200
        assert re.search(r'value="standard"[^>]*checked', odd.text)  # the popular plan
        assert re.search(r'<option value="INR" selected>', odd.text)  # the sandbox's (Razorpay's) currency


async def test_an_order_from_the_buy_page_opens_the_checkout_and_a_decline_says_so(app: Any) -> None:
    await _seed(app)
    user = await make_user(app)
    stranger = await make_user(app)
    async with browser_signed_in(app, user) as (browser, csrf):
        headers = {"X-CSRF-Token": csrf, "Idempotency-Key": "buy_test_1"}
        body = {"plan": "standard", "currency": "INR", "coupon": "WELCOME10"}
        quote = await browser.post("/v1/quotes", json=body, headers={"X-CSRF-Token": csrf})
        assert quote.status_code == 200, quote.text
        first = await browser.post("/v1/orders", json=body, headers=headers)
        again = await browser.post("/v1/orders", json=body, headers=headers)  # a double click
        assert first.status_code == 201, first.text
        order = first.json()
        assert again.json()["id"] == order["id"]
        assert order["amount"] == quote.json()["total"] == 4_050_00
        assert order["checkout_url"], order

        opened = await browser.get(local(order["checkout_url"]))
        assert opened.status_code == 303
        sandbox_page = opened.headers["location"]
        assert "/sandbox/checkout/" in sandbox_page
        back = await pay_on_sandbox(browser, sandbox_page, DECLINED)
        returned = await browser.get(local(back))
        assert returned.status_code == 200
        text = _text(returned)
        assert "Payment declined" in text and "declined by the bank" in text
        attempt = order["checkout"]["attempt"]
        assert f'href="/buy/attempts/{attempt}/pay"' in returned.text and 'href="/account"' in returned.text
        assert (
            "4,050" not in text and order["id"] not in text
        )  # the unsigned return page names no order detail

        try_again = await browser.get(f"/buy/attempts/{attempt}/pay")
        assert try_again.status_code == 303
        assert urlsplit(try_again.headers["location"]).path == f"/checkout/{order['id']}"

        pay_again = await browser.get(f"/buy/orders/{order['id']}/pay")
        assert pay_again.status_code == 303
        assert urlsplit(pay_again.headers["location"]).path == f"/checkout/{order['id']}"
        follow = await browser.get(f"/buy/orders/{order['id']}")
        assert follow.status_code == 303
        assert urlsplit(follow.headers["location"]).path == f"/orders/{order['id']}/status"
        status_page = await browser.get(local(follow.headers["location"]))
        assert status_page.status_code == 200 and 'href="/account"' in status_page.text

    async with browser_signed_in(app, stranger) as (browser, _csrf):
        for path in (
            f"/buy/orders/{order['id']}",
            f"/buy/orders/{order['id']}/pay",
            f"/buy/attempts/{attempt}/pay",
        ):
            refused = await browser.get(path)
            assert refused.status_code == 404
            assert "4,050" not in refused.text
