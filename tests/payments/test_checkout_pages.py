"""The buyer's return page and the order's signed status page, on both engines: the sandbox's signed redirect
(GET) and Razorpay Checkout's callback (POST) checked against the attempt's stored gateway order id and sent
through the orders service's verify path; a forged callback changes nothing; a payment confirmed by a webhook
after the buyer came back shows up on the status page's poll."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import select

from prepaid.payments.models import PaymentAttempt, PaymentGatewayEvent
from tests.factories import make_customer
from tests.fakes import razorpay as fake_razorpay
from tests.fakes.razorpay import FakeRazorpay
from tests.payments.test_checkout_pages_support import (
    PRICES,
    local,
    pay_on_sandbox,
    settings_overrides,
)
from tests.payments.test_orders_support import (
    captured_webhooks,
    create_order,
    db_of,
    make_plan,
    order_grants,
    razorpay_order_id,
    send_webhook,
    stored_order,
    wallet_of,
)

__all__ = ["settings_overrides"]  # fixtures


@pytest.fixture
def fake(razorpay_api: tuple[FakeRazorpay, str]) -> FakeRazorpay:
    return razorpay_api[0]


async def _sandbox_order(app: Any, client: httpx.AsyncClient, buyer: Any, **body: Any) -> dict[str, Any]:
    plan = await make_plan(app, credits=100, bonus_credits=20, prices=PRICES)
    return await create_order(client, buyer, plan=plan, gateway="sandbox", **body)


async def _status(client: httpx.AsyncClient, status_page: str) -> dict[str, Any]:
    path = urlsplit(status_page).path + ".json?" + urlsplit(status_page).query
    answer = await client.get(path)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_sandbox_return_verifies_the_callback_and_shows_the_credits_once(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    order = await _sandbox_order(app, client, buyer)
    back = await pay_on_sandbox(client, order["checkout"]["redirect_url"])
    attempt = order["checkout"]["attempt"]
    assert urlsplit(back).path == f"/orders/{attempt}/return"

    returned = await client.get(local(back))  # a browser with no credentials: the signature is the proof
    assert returned.status_code == 303, returned.text
    status_page = returned.headers["location"]
    assert urlsplit(status_page).path == f"/orders/{order['id']}/status"
    page = await client.get(local(status_page))
    assert page.status_code == 200
    assert "100 + 20 bonus credits have been added" in page.text
    assert "INR 1,000.00" in page.text
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 120

    again = await client.get(local(back))  # reloaded, or the link opened twice
    assert again.status_code == 303
    assert await order_grants(app, order["id"]) == 2  # the credits bought and the bonus, once each
    view = await _status(client, status_page)
    assert (view["status"], view["credited"], view["final"]) == ("fulfilled", True, True)
    assert set(view) >= {"order", "amount", "currency", "credits", "bonus_credits"}
    assert "user_id" not in view and "wallet_id" not in view and "balance" not in view


@pytest.mark.parametrize(
    "tamper",
    [
        {"razorpay_signature": "0" * 64},
        {"razorpay_order_id": "order_sbx_someoneelse"},
        {"razorpay_payment_id": "pay_sbx_other"},
        {"razorpay_signature": None},
    ],
)
async def test_a_forged_return_changes_nothing_and_opens_no_status_page(
    app: Any, client: httpx.AsyncClient, tamper: dict[str, str | None]
) -> None:
    buyer = await make_customer(app)
    order = await _sandbox_order(app, client, buyer)
    back = await pay_on_sandbox(client, order["checkout"]["redirect_url"])
    fields = dict(parse_qsl(urlsplit(back).query))
    for name, value in tamper.items():
        if value is None:
            fields.pop(name)
        else:
            fields[name] = value
    forged = await client.get(f"{urlsplit(back).path}?{urlencode(fields)}")
    assert forged.status_code in (200, 400), forged.text
    assert "location" not in forged.headers
    assert order["id"] not in forged.text
    stored = await stored_order(app, order["id"])
    assert stored.status == "pending"
    assert await order_grants(app, order["id"]) == 0
    assert (await wallet_of(app, buyer))["balance"] == 0


async def test_razorpay_posts_back_before_the_capture_and_the_late_webhook_shows_on_the_status_poll(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, credits=100, prices=PRICES)
    order = await create_order(client, buyer, plan=plan, gateway="razorpay")
    gateway_order_id = razorpay_order_id(order)
    payment = fake.pay(gateway_order_id, status="authorized")  # authorised, not yet captured
    fields = {
        "razorpay_payment_id": payment["id"],
        "razorpay_order_id": gateway_order_id,
        "razorpay_signature": fake_razorpay.payment_signature(gateway_order_id, payment["id"]),
    }
    attempt = order["checkout"]["attempt"]
    returned = await client.post(f"/orders/{attempt}/return", data=fields)  # Razorpay Checkout's form post
    assert returned.status_code == 303, returned.text
    status_page = returned.headers["location"]
    page = await client.get(local(status_page))
    assert "Waiting for the payment to be confirmed" in page.text
    assert 'src="/static/checkout/status.js"' in page.text
    poll = re.search(r'data-poll-url="([^"]+)"', page.text)
    assert poll is not None
    view = await _status(client, status_page)
    assert (view["status"], view["credited"], view["final"]) == ("pending", False, False)

    fake.capture(payment["id"])
    with fake.lock:
        captured = dict(fake.payments[payment["id"]])
    captured.pop("_card", None)
    for signed in captured_webhooks(fake, captured):
        assert (await send_webhook(client, signed)).status_code == 200
    polled = await client.get(poll.group(1).replace("&amp;", "&"))
    assert polled.status_code == 200
    assert (polled.json()["status"], polled.json()["credited"]) == ("fulfilled", True)
    assert "100 credits have been added" in polled.json()["message"]
    assert (await wallet_of(app, buyer))["balance"] == 100
    assert await order_grants(app, order["id"]) == 1


async def test_a_failed_payment_return_says_so_without_showing_the_order(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    order = await _sandbox_order(app, client, buyer)
    back = await pay_on_sandbox(client, order["checkout"]["redirect_url"], "4000 0000 0000 0002")
    assert "error%5Bdescription%5D" in back or "error[description]" in back
    page = await client.get(local(back))
    assert page.status_code == 200
    assert "did not go through" in page.text
    assert "location" not in page.headers
    assert (await stored_order(app, order["id"])).status == "pending"  # the webhook decides, not the URL


async def test_status_links_are_signed_per_order_and_expire(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    first = await _sandbox_order(app, client, buyer)
    second = await _sandbox_order(app, client, buyer)
    back = await pay_on_sandbox(client, first["checkout"]["redirect_url"])
    status_page = (await client.get(local(back))).headers["location"]
    query = dict(parse_qsl(urlsplit(status_page).query))
    assert (await client.get(local(status_page))).status_code == 200

    other_order = f"/orders/{second['id']}/status?{urlencode(query)}"
    tampered = f"{urlsplit(status_page).path}?{urlencode({**query, 's': query['s'][:-2] + 'AA'})}"
    later = f"{urlsplit(status_page).path}?{urlencode({**query, 'e': str(int(query['e']) + 1)})}"
    expired = f"{urlsplit(status_page).path}?{urlencode({**query, 'e': '1000'})}"
    for path in (other_order, tampered, later, expired, urlsplit(status_page).path):
        refused = await client.get(path)
        assert refused.status_code == 403, path
        assert "INR" not in refused.text
    answer = await client.get(f"/orders/{second['id']}/status.json?{urlencode(query)}")
    assert answer.status_code == 403
    assert answer.json()["error"]["type"] == "permission_error"


async def test_unknown_attempts_and_odd_paths_are_404_pages(app: Any, client: httpx.AsyncClient) -> None:
    for path in ("/orders/att_01JD3AAAAAAAAAAAAAAAAAAAAA/return", "/orders/..%2Fetc/return"):
        page = await client.get(path + "?razorpay_payment_id=pay_x&razorpay_signature=abc")
        assert page.status_code == 404
    async with db_of(app).transaction(write=False) as session:
        assert list(await session.scalars(select(PaymentAttempt))) == []
        assert list(await session.scalars(select(PaymentGatewayEvent))) == []


async def test_a_forged_return_for_an_order_already_paid_gets_no_status_link(
    app: Any, client: httpx.AsyncClient
) -> None:
    """The orders service answers a granted order without checking the callback; the page checks it first."""
    buyer = await make_customer(app)
    order = await _sandbox_order(app, client, buyer)
    back = await pay_on_sandbox(client, order["checkout"]["redirect_url"])
    assert (await client.get(local(back))).status_code == 303
    fields = dict(parse_qsl(urlsplit(back).query))
    forged = await client.get(
        f"{urlsplit(back).path}?{urlencode({**fields, 'razorpay_signature': '1' * 64})}"
    )
    assert forged.status_code == 400
    assert "location" not in forged.headers and "/status" not in forged.text
    assert await order_grants(app, order["id"]) == 2
