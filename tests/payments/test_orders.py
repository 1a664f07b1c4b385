"""Orders over HTTP on both engines: created at the catalog's quote, paid at the fake Razorpay server (the
official SDK over real HTTP), verified, retried, cancelled, expired; and who may see which order."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select

from prepaid.catalog.models import CouponRedemption
from prepaid.db import utcnow
from prepaid.payments import jobs as payments_jobs
from prepaid.payments import service as payments_service
from prepaid.payments.models import PaymentAttempt, PaymentOrder
from tests.factories import make_admin, make_api_key, make_customer
from tests.fakes.razorpay import FakeRazorpay
from tests.helpers import assert_error, audit_log, count
from tests.payments.test_orders_support import (
    callback,
    create_order,
    db_of,
    fake,
    make_coupon,
    make_plan,
    order_grants,
    razorpay_order_id,
    settings_overrides,
    stored_order,
    verify,
    wallet_of,
)

__all__ = ["fake", "settings_overrides"]  # fixtures


async def test_an_order_paid_at_the_gateway_and_verified_grants_its_credits_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, credits=100, bonus_credits=20, prices={"INR": 100_000})
    order = await create_order(client, buyer, plan=plan)
    assert (order["status"], order["amount"], order["currency"]) == ("pending", 100_000, "INR")
    assert (order["credits"], order["bonus_credits"], order["quote"]["total"]) == (100, 20, 100_000)
    checkout = order["checkout"]
    assert checkout["client"]["key_id"] == "rzp_test_FakeKeyId0001"
    assert checkout["attempt"] == order["attempts"][0]["id"]
    # the gateway order carries our attempt id as its receipt, and the quote's amount
    gateway_order_id = razorpay_order_id(order)
    assert fake.orders[gateway_order_id]["receipt"] == checkout["attempt"]
    assert fake.orders[gateway_order_id]["amount"] == 100_000

    payment = fake.pay(gateway_order_id, network="Visa", last4="4242")
    fields = callback(gateway_order_id, payment["id"])
    first = await verify(client, buyer, order["id"], fields)
    assert first.status_code == 200, first.text
    paid = first.json()
    assert paid["status"] == "fulfilled"
    assert (paid["payment_id"], paid["amount_paid"]) == (payment["id"], 100_000)
    assert (paid["payment_method"], paid["card_brand"], paid["card_last4"]) == ("card", "Visa", "4242")
    assert paid["checkout"] is None and len(paid["transactions"]) == 2
    assert paid["user_agent"].startswith("python-httpx") and paid["client_ip"]
    assert await wallet_of(app, buyer) == {
        "balance": 120,
        "paid": 100,
        "promotional": 20,
        "refund": 0,
        "adjustment": 0,
    }

    again = await verify(client, buyer, order["id"], fields)
    assert again.status_code == 200 and again.json()["status"] == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 120
    assert await order_grants(app, order["id"]) == 2
    me = await client.get("/v1/me", headers=buyer.headers)
    assert me.json()["total_spent"] == {"INR": 100_000} and me.json()["lifetime_credits"] == 120


async def test_the_client_never_sets_the_price(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app)
    response = await client.post(
        "/v1/orders",
        json={"plan": plan, "currency": "INR", "gateway": "razorpay", "amount": 100},
        headers=buyer.headers,
    )
    assert_error(response, 400, "invalid_request_error", "unknown_field", "amount")
    assert await count(db_of(app), PaymentOrder) == 0


async def test_a_zero_total_order_is_fulfilled_without_a_gateway(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, credits=50)
    coupon = await make_coupon(app, kind="percent_off", percent_bps=10_000)
    order = await create_order(client, buyer, plan=plan, coupon=coupon.lower())
    assert (order["status"], order["amount"], order["gateway"], order["attempts"]) == (
        "fulfilled",
        0,
        None,
        [],
    )
    assert fake.calls("POST", "/v1/orders") == []
    assert (await wallet_of(app, buyer))["paid"] == 50
    async with db_of(app).transaction(write=False) as session:
        redemption = await session.scalar(
            select(CouponRedemption).where(CouponRedemption.order_id == order["id"])
        )
    assert redemption is not None and redemption.status == "redeemed"


async def test_a_total_under_the_gateways_minimum_is_refused_before_any_call(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, prices={"INR": 50})
    response = await client.post(
        "/v1/orders", json={"plan": plan, "currency": "INR", "gateway": "razorpay"}, headers=buyer.headers
    )
    error = assert_error(response, 400, "invalid_request_error", "amount_below_minimum", "amount")
    assert (error["minimum"], error["currency"]) == (100, "INR")
    not_enabled = await client.post(
        "/v1/orders", json={"plan": plan, "currency": "INR", "gateway": "stripe"}, headers=buyer.headers
    )
    assert_error(not_enabled, 400, "invalid_request_error", "gateway_not_enabled", "gateway")
    assert fake.calls("POST", "/v1/orders") == []
    assert await count(db_of(app), PaymentOrder) == 0


async def test_a_forged_callback_is_refused_and_changes_nothing(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    gateway_order_id = razorpay_order_id(order)
    payment = fake.pay(gateway_order_id)
    forged = callback(gateway_order_id, payment["id"], secret="not the key secret")
    response = await verify(client, buyer, order["id"], forged)
    assert_error(response, 400, "invalid_request_error", "invalid_signature")
    # a signature made for another gateway order (the client's own razorpay_order_id) is refused outright
    other = await create_order(client, buyer, plan=await make_plan(app))
    other_id = razorpay_order_id(other)
    response = await verify(client, buyer, order["id"], callback(other_id, payment["id"]))
    assert_error(response, 400, "invalid_request_error", "invalid_signature", "razorpay_order_id")
    assert (await stored_order(app, order["id"])).status == "pending"
    assert (await wallet_of(app, buyer))["balance"] == 0
    assert fake.calls("GET", f"/v1/orders/{gateway_order_id}") == []


async def test_a_tampered_amount_is_flagged_not_fulfilled(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    gateway_order_id = razorpay_order_id(order)
    payment = fake.pay(gateway_order_id, amount=100)  # ₹1 captured for a ₹1,000 order
    response = await verify(client, buyer, order["id"], callback(gateway_order_id, payment["id"]))
    assert response.status_code == 200, response.text
    flagged = response.json()
    assert flagged["status"] == "flagged"
    assert flagged["flag_reason"].startswith("amount_mismatch")
    assert (flagged["amount_paid"], flagged["transactions"]) == (100, [])
    assert (await wallet_of(app, buyer))["balance"] == 0
    assert await order_grants(app, order["id"]) == 0
    admin = await make_customer(app, roles=["user", "admin"])
    listed = await client.get("/v1/orders", params={"status": "flagged"}, headers=admin.headers)
    assert [o["id"] for o in listed.json()["data"]] == [order["id"]]


async def test_an_authorised_payment_does_not_fulfil(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    gateway_order_id = razorpay_order_id(order)
    payment = fake.pay(gateway_order_id, status="authorized")
    fields = callback(gateway_order_id, payment["id"])
    response = await verify(client, buyer, order["id"], fields)
    assert response.status_code == 200 and response.json()["status"] == "pending"
    assert (await wallet_of(app, buyer))["balance"] == 0
    fake.capture(payment["id"])
    response = await verify(client, buyer, order["id"], fields)
    assert response.json()["status"] == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100


async def test_another_users_order_is_not_found(app: Any, client: httpx.AsyncClient) -> None:
    buyer, other = await make_customer(app), await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    for method, path, body in [
        ("GET", f"/v1/orders/{order['id']}", None),
        (
            "POST",
            f"/v1/orders/{order['id']}/verify",
            {"razorpay_payment_id": "pay_x", "razorpay_signature": "x"},
        ),
        ("POST", f"/v1/orders/{order['id']}/retry", {}),
        ("POST", f"/v1/orders/{order['id']}/cancel", {}),
    ]:
        response = await client.request(method, path, json=body, headers=other.headers)
        assert_error(response, 404, "not_found", "resource_missing", "order_id")
    listed = await client.get("/v1/orders", headers=other.headers)
    assert listed.json()["data"] == []
    assert_error(
        await client.get("/v1/orders", params={"user": buyer.id}, headers=other.headers),
        403,
        "permission_error",
        "customer_forbidden",
        "user",
    )
    assert (await stored_order(app, order["id"])).status == "pending"
    own = await client.get("/v1/orders", headers=buyer.headers)
    assert [o["id"] for o in own.json()["data"]] == [order["id"]]
    assert own.json()["data"][0]["checkout"]["gateway"] == "razorpay"


async def test_admins_and_server_keys_list_everyones_orders_with_filters(
    app: Any, client: httpx.AsyncClient
) -> None:
    first, second = await make_customer(app), await make_customer(app)
    admin = await make_admin(app)
    server = await make_api_key(app, admin, scopes=["orders:write"], server=True)
    plan = await make_plan(app)
    one = await create_order(client, first, plan=plan)
    two = await create_order(client, second, plan=plan)
    everyone = await client.get("/v1/orders", headers=admin.headers)
    assert [o["id"] for o in everyone.json()["data"]] == [two["id"], one["id"]]
    by_user = await client.get("/v1/orders", params={"user": first.id}, headers=server.headers)
    assert [o["id"] for o in by_user.json()["data"]] == [one["id"]]
    later = await client.get(
        "/v1/orders",
        params={"created_after": (utcnow() + timedelta(minutes=1)).isoformat()},
        headers=admin.headers,
    )
    assert later.json()["data"] == []
    by_gateway = await client.get("/v1/orders", params={"gateway": "sandbox"}, headers=admin.headers)
    assert by_gateway.json()["data"] == []
    # a server key buys for a customer named by id
    bought = await client.post(
        "/v1/orders",
        json={"plan": plan, "currency": "INR", "gateway": "razorpay", "customer": first.id},
        headers=server.headers,
    )
    assert bought.status_code == 201 and bought.json()["user_id"] == first.id
    cancelled = await client.post(f"/v1/orders/{one['id']}/cancel", headers=admin.headers)
    assert cancelled.status_code == 200
    # an admin's or a server key's change to someone's order is audited; the buyer's own is not
    created = await audit_log(client, admin.headers, action="order.create")
    assert [(e["object_id"], e["actor_api_key_id"]) for e in created] == [(bought.json()["id"], server.id)]
    entries = await audit_log(client, admin.headers, action="order.cancel", object_id=one["id"])
    assert [(e["before"]["status"], e["after"]["status"]) for e in entries] == [("pending", "cancelled")]
    refused = await client.post(
        "/v1/orders",
        json={"plan": plan, "currency": "INR", "gateway": "razorpay", "customer": second.id},
        headers=first.headers,
    )
    assert_error(refused, 403, "permission_error", "customer_forbidden", "customer")


async def test_cancel_releases_the_coupon_and_a_paid_order_cannot_be_cancelled(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app)
    coupon = await make_coupon(app, kind="percent_off", percent_bps=1000, max_redemptions=1)
    order = await create_order(client, buyer, plan=plan, coupon=coupon)
    assert order["amount"] == 90_000
    # the one use is reserved: nobody else can take it now
    taken = await client.post(
        "/v1/orders",
        json={"plan": plan, "currency": "INR", "gateway": "razorpay", "coupon": coupon},
        headers=(await make_customer(app)).headers,
    )
    assert_error(taken, 409, "conflict", "coupon_exhausted", "coupon")
    cancelled = await client.post(f"/v1/orders/{order['id']}/cancel", headers=buyer.headers)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["attempts"][0]["status"] == "cancelled"
    again = await client.post(f"/v1/orders/{order['id']}/cancel", headers=buyer.headers)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    second = await create_order(client, buyer, plan=plan, coupon=coupon)  # the use came back
    gateway_order_id = razorpay_order_id(second)
    payment = fake.pay(gateway_order_id, amount=90_000)
    assert (await verify(client, buyer, second["id"], callback(gateway_order_id, payment["id"]))).json()[
        "status"
    ] == "fulfilled"
    refused = await client.post(f"/v1/orders/{second['id']}/cancel", headers=buyer.headers)
    assert_error(refused, 409, "conflict", "order_not_cancellable", "order_id")


async def test_expiry_releases_the_coupon_and_a_retry_pays_at_the_same_quote(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app)
    coupon = await make_coupon(app, kind="percent_off", percent_bps=1000, max_redemptions=1)
    order = await create_order(client, buyer, plan=plan, coupon=coupon)
    first_attempt = order["attempts"][0]["id"]
    # the runner's job, once the order is past PREPAID_ORDER_TTL
    async with db_of(app).transaction() as session:
        row = await session.get(PaymentOrder, order["id"])
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
    assert await payments_jobs.expire_orders(db_of(app), app.state.settings) == 1
    expired = await client.get(f"/v1/orders/{order['id']}", headers=buyer.headers)
    assert (expired.json()["status"], expired.json()["checkout"]) == ("expired", None)
    async with db_of(app).transaction(write=False) as session:
        redemption = await session.scalar(
            select(CouponRedemption).where(CouponRedemption.order_id == order["id"])
        )
    assert redemption is not None and redemption.status == "released"

    retried = await client.post(f"/v1/orders/{order['id']}/retry", json={}, headers=buyer.headers)
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert (body["status"], body["attempt_count"], body["amount"]) == ("pending", 2, 90_000)
    assert body["attempts"][1]["retry_of"] == first_attempt
    assert body["checkout"]["attempt"] == body["attempts"][1]["id"]
    gateway_order_id = razorpay_order_id(body)
    payment = fake.pay(gateway_order_id)
    paid = await verify(client, buyer, order["id"], callback(gateway_order_id, payment["id"]))
    assert paid.json()["status"] == "fulfilled"
    async with db_of(app).transaction(write=False) as session:
        redemption = await session.scalar(
            select(CouponRedemption).where(CouponRedemption.order_id == order["id"])
        )
    assert redemption is not None and redemption.status == "redeemed"
    again = await client.post(f"/v1/orders/{order['id']}/retry", json={}, headers=buyer.headers)
    assert_error(again, 409, "conflict", "order_not_retryable", "order_id")


async def test_a_retry_after_the_quote_lapsed_is_refused(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    async with db_of(app).transaction() as session:
        row = await session.get(PaymentOrder, order["id"])
        assert row is not None
        row.status, row.quote_expires_at = "failed", utcnow() - timedelta(seconds=1)
    response = await client.post(f"/v1/orders/{order['id']}/retry", json={}, headers=buyer.headers)
    assert_error(response, 409, "conflict", "quote_expired", "order_id")
    assert await count(db_of(app), PaymentAttempt) == 1


async def test_a_gateway_outage_fails_the_order_and_a_retry_opens_a_new_attempt(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app)
    fake.fail_next(503, {"error": {"code": "SERVER_ERROR", "description": "down"}})
    response = await client.post(
        "/v1/orders", json={"plan": plan, "currency": "INR", "gateway": "razorpay"}, headers=buyer.headers
    )
    assert_error(response, 502, "gateway_error", "gateway_unavailable")
    listed = (await client.get("/v1/orders", headers=buyer.headers)).json()["data"]
    assert [(o["status"], o["attempt_count"]) for o in listed] == [("failed", 1)]
    retried = await client.post(f"/v1/orders/{listed[0]['id']}/retry", headers=buyer.headers)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "pending"
    assert [a["status"] for a in retried.json()["attempts"]] == ["failed", "pending"]


async def test_a_payment_after_expiry_still_fulfils(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    async with db_of(app).transaction() as session:
        assert await payments_service.expire_due_orders(session, now=utcnow() + timedelta(hours=1)) == 1
    gateway_order_id = razorpay_order_id({"checkout": {**order["checkout"]}})
    payment = fake.pay(gateway_order_id)
    response = await verify(client, buyer, order["id"], callback(gateway_order_id, payment["id"]))
    assert response.json()["status"] == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100


async def test_a_late_payment_on_an_earlier_attempt_is_verified_and_a_second_one_flagged(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    first_gateway_order = razorpay_order_id(order)
    async with db_of(app).transaction() as session:
        await payments_service.record_failure(
            session, attempt_id=order["checkout"]["attempt"], reason="declined", now=utcnow()
        )
    retried = (await client.post(f"/v1/orders/{order['id']}/retry", headers=buyer.headers)).json()
    second_gateway_order = razorpay_order_id(retried)
    assert second_gateway_order != first_gateway_order
    # the buyer's first checkout went through after all: its callback names the first attempt's gateway order
    late = fake.pay(first_gateway_order)
    paid = await verify(client, buyer, order["id"], callback(first_gateway_order, late["id"]))
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["payment_id"]) == ("fulfilled", late["id"])
    assert [a["status"] for a in paid.json()["attempts"]] == ["paid", "pending"]
    # and the second checkout too: the money came in twice, the order is flagged, credits stay once
    again = fake.pay(second_gateway_order)
    answer = await verify(client, buyer, order["id"], callback(second_gateway_order, again["id"]))
    assert answer.status_code == 200
    assert answer.json()["status"] == "fulfilled"
    assert answer.json()["flag_reason"].startswith(f"duplicate_payment: {again['id']}")
    assert (await wallet_of(app, buyer))["balance"] == 100
    assert await order_grants(app, order["id"]) == 1
