"""Bots sell too, on both engines: a server key with ``orders:write`` orders for a customer named by external id
and gets a signed ``checkout_url``; the person opens it without logging in and pays: on the sandbox's hosted
page, through Razorpay Checkout's own script, or on a Stripe Checkout Session (fake Stripe over real HTTP).
The link is bound to its order, signed with the secret key, and expires with the order."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from prepaid.db import utcnow
from prepaid.payments import service as payments_service
from tests.factories import make_admin, make_api_key, make_customer
from tests.fakes.stripe import FakeStripe
from tests.payments.test_checkout_pages_support import (
    DECLINED,
    PRICES,
    external_customer,
    local,
    pay_on_sandbox,
    settings_overrides,
)
from tests.payments.test_orders_support import db_of, make_plan, order_grants, stored_order

__all__ = ["settings_overrides"]  # fixtures


async def _bot_order(app: Any, client: httpx.AsyncClient, **body: Any) -> tuple[dict[str, Any], str]:
    """A server key's order for a customer named by external id: the answer and the customer's user id."""
    admin = await make_admin(app)
    key = await make_api_key(app, admin, scopes=["orders:write"], server=True)
    user_id, external_id = await external_customer(app)
    plan = await make_plan(app, credits=100, bonus_credits=5, prices=PRICES)
    body = {"plan": plan, "currency": "INR", "customer": external_id, **body}
    answer = await client.post("/v1/orders", json=body, headers=key.headers)
    assert answer.status_code == 201, answer.text
    order: dict[str, Any] = answer.json()
    assert order["user_id"] == user_id
    return order, user_id


async def _balance(app: Any, user_id: str) -> int:
    from prepaid.ledger import service as ledger_service

    async with db_of(app).transaction(write=False) as session:
        wallet = await ledger_service.default_wallet(session, user_id=user_id)
        return wallet.balance + wallet.held


async def test_a_bots_customer_pays_through_the_checkout_url_without_logging_in(
    app: Any, client: httpx.AsyncClient
) -> None:
    order, user_id = await _bot_order(app, client, gateway="sandbox")
    url = order["checkout_url"]
    assert urlsplit(url).path == f"/checkout/{order['id']}"
    opened = await client.get(local(url))  # no credentials at all
    assert opened.status_code == 303
    assert opened.headers["location"] == order["checkout"]["redirect_url"]
    back = await pay_on_sandbox(client, opened.headers["location"])
    status_page = (await client.get(local(back))).headers["location"]
    page = await client.get(local(status_page))
    assert "100 + 5 bonus credits have been added" in page.text
    assert await _balance(app, user_id) == 105
    assert (await stored_order(app, order["id"])).status == "fulfilled"

    paid = await client.get(local(url))  # the link again, after paying: the order's status
    assert paid.status_code == 303
    assert urlsplit(paid.headers["location"]).path == f"/orders/{order['id']}/status"
    assert await order_grants(app, order["id"]) == 2


async def test_the_checkout_url_is_bound_to_its_order_signed_and_expires(
    app: Any, client: httpx.AsyncClient
) -> None:
    order, _user = await _bot_order(app, client, gateway="sandbox")
    other, _other_user = await _bot_order(app, client, gateway="sandbox")
    parts = urlsplit(order["checkout_url"])
    query = dict(parse_qsl(parts.query))
    for path in (
        f"/checkout/{other['id']}?{parts.query}",
        f"{parts.path}?{urlencode({**query, 's': 'A' * len(query['s'])})}",
        f"{parts.path}?{urlencode({**query, 'e': str(int(query['e']) + 3600)})}",
        f"{parts.path}?{urlencode({**query, 'e': '999'})}",
        parts.path,
    ):
        refused = await client.get(path)
        assert refused.status_code == 403, path
        assert "location" not in refused.headers
    # the order's own expiry: the link dies with it
    async with db_of(app).transaction() as session:
        await payments_service.expire_due_orders(session, now=utcnow() + timedelta(hours=2))
    stored = await stored_order(app, order["id"])
    assert stored.status == "expired"
    assert int(query["e"]) == int(stored.expires_at.timestamp())


async def test_a_persons_own_order_has_a_checkout_url_that_closes_with_the_order(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, prices=PRICES)
    answer = await client.post(
        "/v1/orders", json={"plan": plan, "currency": "INR", "gateway": "sandbox"}, headers=buyer.headers
    )
    order = answer.json()
    assert order["checkout_url"] is not None
    read = await client.get(f"/v1/orders/{order['id']}", headers=buyer.headers)
    assert read.json()["checkout_url"] == order["checkout_url"]
    cancelled = await client.post(f"/v1/orders/{order['id']}/cancel", json={}, headers=buyer.headers)
    assert cancelled.json()["checkout_url"] is None
    closed = await client.get(local(order["checkout_url"]))
    assert closed.status_code == 409  # a cancelled order is not paid through its old link
    assert "can no longer be paid" in closed.text
    assert "location" not in closed.headers


async def test_the_checkout_url_on_razorpay_loads_razorpay_checkout_with_the_stored_order(
    app: Any, client: httpx.AsyncClient
) -> None:
    order, _user = await _bot_order(app, client, gateway="razorpay")
    page = await client.get(local(order["checkout_url"]))
    assert page.status_code == 200, page.text
    assert '<script src="https://checkout.razorpay.com/v1/checkout.js"></script>' in page.text
    assert "https://checkout.razorpay.com" in page.headers["content-security-policy"]
    match = re.search(r'<script type="application/json" id="rzp-options">(.+?)</script>', page.text)
    assert match is not None
    options = json.loads(html.unescape(match.group(1)))
    assert options["order_id"] == order["checkout"]["gateway_order_id"]
    assert options["key"] == order["checkout"]["client"]["key_id"]
    assert (options["amount"], options["currency"]) == (order["amount"], "INR")
    assert options["callback_url"] == f"http://testserver/orders/{order['checkout']['attempt']}/return"
    assert options["redirect"] is True


async def test_the_checkout_url_on_stripe_redirects_to_a_checkout_session_and_returns_paid(
    app: Any, client: httpx.AsyncClient, stripe_api: tuple[FakeStripe, str]
) -> None:
    fake, _url = stripe_api
    order, user_id = await _bot_order(app, client, gateway="stripe", currency="USD")
    session_id = order["checkout"]["gateway_order_id"]
    assert session_id.startswith("cs_")
    opened = await client.get(local(order["checkout_url"]))
    assert opened.status_code == 303
    assert opened.headers["location"] == f"https://checkout.stripe.com/c/pay/{session_id}"
    fake.complete_session(session_id)
    back = await client.get(f"/orders/{order['checkout']['attempt']}/return?session_id={session_id}")
    assert back.status_code == 303, back.text
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert await _balance(app, user_id) == 105
    other = await client.get(f"/orders/{order['checkout']['attempt']}/return?session_id=cs_someone_else")
    assert other.status_code == 400


async def test_a_failed_order_is_tried_again_from_the_checkout_url(
    app: Any, client: httpx.AsyncClient
) -> None:
    order, user_id = await _bot_order(app, client, gateway="sandbox")
    first_attempt = order["checkout"]["attempt"]
    await pay_on_sandbox(client, order["checkout"]["redirect_url"], DECLINED)
    async with db_of(app).transaction() as session:  # the payment.failed webhook
        await payments_service.record_failure(
            session, attempt_id=first_attempt, reason="declined", now=utcnow()
        )
    page = await client.get(local(order["checkout_url"]))
    assert page.status_code == 200
    assert "Try again" in page.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    action = re.search(r'<form method="post" action="([^"]+)"', page.text)
    assert action is not None
    forged = await client.post(html.unescape(action.group(1)), data={"csrf_token": "wrong"})
    assert forged.status_code == 403
    assert (await stored_order(app, order["id"])).attempt_count == 1
    retried = await client.post(html.unescape(action.group(1)), data={"csrf_token": token.group(1)})
    assert retried.status_code == 303, retried.text
    stored = await stored_order(app, order["id"])
    assert (stored.status, stored.attempt_count) == ("pending", 2)
    assert first_attempt not in retried.headers["location"]
    back = await pay_on_sandbox(client, retried.headers["location"])
    assert (await client.get(local(back))).status_code == 303
    assert await _balance(app, user_id) == 105


@pytest.mark.parametrize("scopes", [["balance:read"], ["usage:write"]])
async def test_keys_without_orders_write_cannot_order_for_a_customer(
    app: Any, client: httpx.AsyncClient, scopes: list[str]
) -> None:
    admin = await make_admin(app)
    key = await make_api_key(app, admin, scopes=scopes, server=True)
    _user_id, external_id = await external_customer(app)
    plan = await make_plan(app, prices=PRICES)
    body = {"plan": plan, "currency": "INR", "customer": external_id}
    refused = await client.post("/v1/orders", json=body, headers=key.headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "missing_scope"
