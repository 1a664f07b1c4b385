"""The webhook inbox on both engines: verified over the raw body (a forged or stale signature is 400 and stores
nothing), stored once per event id, processed in any order, and granting credits exactly once however the
verify call and the gateway's deliveries race."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from prepaid.catalog.models import CouponRedemption
from prepaid.payments.gateways import sandbox
from prepaid.payments.gateways.sandbox_models import SandboxWebhook
from prepaid.payments.models import PaymentGatewayEvent
from tests.factories import make_customer
from tests.fakes import razorpay as fake_razorpay
from tests.fakes import stripe as fake_stripe
from tests.fakes.razorpay import FakeRazorpay
from tests.fakes.stripe import FakeStripe
from tests.helpers import assert_error
from tests.payments.test_orders_support import (
    callback,
    captured_webhooks,
    create_order,
    db_of,
    fake,
    make_coupon,
    make_plan,
    order_grants,
    razorpay_order_id,
    send_webhook,
    stored_events,
    stored_order,
    verify,
    wallet_of,
)

__all__ = ["fake"]  # fixtures


@pytest.fixture
def settings_overrides(
    razorpay_api: tuple[FakeRazorpay, str], stripe_api: tuple[FakeStripe, str]
) -> dict[str, Any]:
    return {
        "gateways": "razorpay,stripe,sandbox",
        "razorpay_key_id": fake_razorpay.KEY_ID,
        "razorpay_key_secret": fake_razorpay.KEY_SECRET,
        "razorpay_webhook_secret": fake_razorpay.WEBHOOK_SECRET,
        "razorpay_api_base": razorpay_api[1],
        "stripe_secret_key": fake_stripe.SECRET_KEY,
        "stripe_publishable_key": fake_stripe.PUBLISHABLE_KEY,
        "stripe_webhook_secret": fake_stripe.WEBHOOK_SECRET,
        "stripe_api_base": stripe_api[1],
        "gateway_timeout": 5,
    }


async def test_a_captured_webhook_fulfils_and_a_redelivery_changes_nothing(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=10))
    payment = fake.pay(razorpay_order_id(order))
    captured, _paid = captured_webhooks(fake, payment)
    first = await send_webhook(client, captured)
    assert first.status_code == 200, first.text
    assert (first.json()["duplicate"], first.json()["processed"]) == (False, True)
    stored = await stored_order(app, order["id"])
    assert (stored.status, stored.payment_id) == ("fulfilled", payment["id"])
    assert (await wallet_of(app, buyer))["balance"] == 110
    again = await send_webhook(client, captured)
    assert again.status_code == 200
    assert (again.json()["duplicate"], again.json()["event"]) == (True, first.json()["event"])
    assert await stored_events(app) == 1
    assert await order_grants(app, order["id"]) == 2
    async with db_of(app).transaction(write=False) as session:
        event = await session.scalar(select(PaymentGatewayEvent))
    assert event is not None
    assert (event.body, event.order_id, event.type) == (captured[1], order["id"], "payment.captured")
    assert event.processed_at is not None and event.error is None


async def test_forged_and_stale_signatures_are_refused_and_store_nothing(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay, stripe_api: tuple[FakeStripe, str]
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    payment = fake.pay(razorpay_order_id(order))
    body = fake_razorpay.webhook("payment.captured", payment=payment)
    forged = fake_razorpay.signed(body, secret="not the webhook secret")
    response = await send_webhook(client, forged)
    assert_error(response, 400, "invalid_request_error", "invalid_signature")
    headers, raw = fake_razorpay.signed(body)
    tampered = raw.replace(b'"amount":100000', b'"amount":100')
    assert tampered != raw
    response = await client.post("/v1/webhooks/razorpay", content=tampered, headers=headers)
    assert_error(response, 400, "invalid_request_error", "invalid_signature")
    unsigned = {k: v for k, v in headers.items() if k != "X-Razorpay-Signature"}
    response = await client.post("/v1/webhooks/razorpay", content=raw, headers=unsigned)
    assert_error(response, 400, "invalid_request_error", "invalid_signature")
    # the sandbox signs with its own secret: Razorpay's is a forgery there
    response = await send_webhook(client, fake_razorpay.signed(body), gateway="sandbox")
    assert_error(response, 400, "invalid_request_error", "invalid_signature")

    # Stripe: a wrong secret, and a correct signature older than the 300 s tolerance
    stripe_fake = stripe_api[0]
    stripe_order = await create_order(client, buyer, plan=await make_plan(app), gateway="stripe")
    intent = stripe_fake.succeed(stripe_order["checkout"]["gateway_order_id"])
    event = fake_stripe.event("payment_intent.succeeded", intent)
    for signed in (
        fake_stripe.signed(event, secret="whsec_not_the_secret"),
        fake_stripe.signed(event, timestamp=int(time.time()) - 301),
    ):
        response = await send_webhook(client, signed, gateway="stripe")
        assert_error(response, 400, "invalid_request_error", "invalid_signature")

    assert await stored_events(app) == 0
    assert (await wallet_of(app, buyer))["balance"] == 0
    for order_id in (order["id"], stripe_order["id"]):
        assert (await stored_order(app, order_id)).status == "pending"
    unknown = await send_webhook(client, fake_razorpay.signed(body), gateway="paypal")
    assert_error(unknown, 404, "not_found", "gateway_not_found", "gateway")


async def test_a_stripe_payment_intent_succeeded_webhook_fulfils(
    app: Any, client: httpx.AsyncClient, stripe_api: tuple[FakeStripe, str]
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app), gateway="stripe")
    assert order["checkout"]["client"]["client_secret"].startswith(order["checkout"]["gateway_order_id"])
    intent = stripe_api[0].succeed(order["checkout"]["gateway_order_id"], brand="mastercard", last4="4444")
    response = await send_webhook(
        client, fake_stripe.signed(fake_stripe.event("payment_intent.succeeded", intent)), gateway="stripe"
    )
    assert response.status_code == 200, response.text
    stored = await stored_order(app, order["id"])
    assert stored.status == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100


async def test_a_late_payment_failed_after_capture_leaves_the_order_paid(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    gateway_order_id = razorpay_order_id(order)
    declined = fake.pay(gateway_order_id, status="failed", error_description="Card declined")
    payment = fake.pay(gateway_order_id)
    captured, _paid = captured_webhooks(fake, payment)
    assert (await send_webhook(client, captured)).status_code == 200
    failed = fake_razorpay.signed(fake_razorpay.webhook("payment.failed", payment=declined))
    response = await send_webhook(client, failed)
    assert response.status_code == 200 and response.json()["processed"] is True
    stored = await stored_order(app, order["id"])
    assert (stored.status, stored.failure_reason, stored.flag_reason) == ("fulfilled", None, None)
    assert (await wallet_of(app, buyer))["balance"] == 100


async def test_a_payment_failed_webhook_fails_the_order_and_releases_its_coupon(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    coupon = await make_coupon(app, kind="percent_off", percent_bps=1000)
    order = await create_order(client, buyer, plan=await make_plan(app), coupon=coupon)
    declined = fake.pay(razorpay_order_id(order), status="failed", error_description="Card declined")
    response = await send_webhook(
        client, fake_razorpay.signed(fake_razorpay.webhook("payment.failed", payment=declined))
    )
    assert response.status_code == 200
    stored = await stored_order(app, order["id"])
    assert stored.status == "failed" and "Card declined" in (stored.failure_reason or "")
    async with db_of(app).transaction(write=False) as session:
        redemption = await session.scalar(
            select(CouponRedemption).where(CouponRedemption.order_id == order["id"])
        )
    assert redemption is not None and redemption.status == "released"
    # the money arrives after all (the buyer tried again in the same checkout): the order is fulfilled
    payment = fake.pay(razorpay_order_id(order), amount=90_000)
    await send_webhook(client, captured_webhooks(fake, payment)[0])
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100


async def test_the_same_webhooks_delivered_five_times_out_of_order_grant_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=25))
    gateway_order_id = razorpay_order_id(order)
    declined = fake.pay(gateway_order_id, status="failed")
    payment = fake.pay(gateway_order_id)
    deliveries = [
        *captured_webhooks(fake, payment),
        fake_razorpay.signed(fake_razorpay.webhook("payment.failed", payment=declined)),
    ]
    sends = [delivery for delivery in deliveries for _ in range(5)]
    random.Random(5).shuffle(sends)
    answers = await asyncio.gather(*(send_webhook(client, delivery) for delivery in sends))
    assert [answer.status_code for answer in answers] == [200] * 15
    assert sum(not answer.json()["duplicate"] for answer in answers) == 3
    assert await stored_events(app) == 3
    stored = await stored_order(app, order["id"])
    assert (stored.status, stored.payment_id, stored.flag_reason) == ("fulfilled", payment["id"], None)
    assert await wallet_of(app, buyer) == {
        "balance": 125,
        "paid": 100,
        "promotional": 25,
        "refund": 0,
        "adjustment": 0,
    }
    assert await order_grants(app, order["id"]) == 2


async def test_the_verify_call_and_the_webhooks_racing_grant_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    gateway_order_id = razorpay_order_id(order)
    payment = fake.pay(gateway_order_id)
    fields = callback(gateway_order_id, payment["id"])
    captured, paid = captured_webhooks(fake, payment)
    answers = await asyncio.gather(
        verify(client, buyer, order["id"], fields),
        send_webhook(client, captured),
        send_webhook(client, paid),
        verify(client, buyer, order["id"], fields),
        send_webhook(client, captured),
    )
    assert [answer.status_code for answer in answers] == [200] * 5, [a.text for a in answers]
    assert answers[0].json()["status"] == answers[3].json()["status"] == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100
    assert await order_grants(app, order["id"]) == 1
    assert (await stored_order(app, order["id"])).flag_reason is None


async def test_a_second_captured_payment_on_a_fulfilled_order_is_flagged(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    gateway_order_id = razorpay_order_id(order)
    first = fake.pay(gateway_order_id)
    await send_webhook(client, captured_webhooks(fake, first)[0])
    second = fake.pay(gateway_order_id)
    await send_webhook(client, captured_webhooks(fake, second)[0])
    stored = await stored_order(app, order["id"])
    assert stored.status == "fulfilled" and stored.payment_id == first["id"]
    assert (stored.flag_reason or "").startswith("duplicate_payment") and second["id"] in (
        stored.flag_reason or ""
    )
    admin = await make_customer(app, roles=["user", "admin"])
    flagged = await client.get("/v1/orders", params={"flagged": "true"}, headers=admin.headers)
    assert [o["id"] for o in flagged.json()["data"]] == [order["id"]]
    assert (await wallet_of(app, buyer))["balance"] == 100


async def test_a_webhook_for_no_order_of_ours_is_kept_and_grants_nothing(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    payment = {
        "id": "pay_NotOurs00000001",
        "entity": "payment",
        "amount": 5000,
        "currency": "INR",
        "status": "captured",
        "order_id": "order_NotOurs0000001",
        "method": "upi",
    }
    response = await send_webhook(
        client, fake_razorpay.signed(fake_razorpay.webhook("payment.captured", payment=payment))
    )
    assert response.status_code == 200 and response.json()["processed"] is True
    async with db_of(app).transaction(write=False) as session:
        event = await session.scalar(select(PaymentGatewayEvent))
    assert event is not None and event.order_id is None and event.processed_at is not None
    assert "No order" in (event.error or "")


async def test_the_sandbox_checkout_pays_and_its_webhooks_fulfil(app: Any, client: httpx.AsyncClient) -> None:
    """The built-in sandbox: a test card paid on its checkout, its signed callback verified, and its queued
    webhooks (delivered here through the ASGI app rather than over the network) find the order fulfilled."""
    buyer = await make_customer(app)
    plan = await make_plan(app)
    declined = await create_order(client, buyer, plan=plan, gateway="sandbox")
    checkout = declined["checkout"]
    assert checkout["redirect_url"].endswith(f"/sandbox/checkout/{checkout['attempt']}")
    gateway = app.state.gateways["sandbox"]
    card = sandbox.read_card("4000 0000 0000 0002", "12/40", "123", "Test", today=date.today())
    settled = await sandbox.pay(
        db_of(app), gateway.config, checkout["attempt"], method="card", outcome=card.outcome, card=card
    )
    assert settled.status == "failed"
    await _deliver_sandbox_webhooks(app, client)
    assert (await stored_order(app, declined["id"])).status == "failed"

    retried = await client.post(f"/v1/orders/{declined['id']}/retry", headers=buyer.headers)
    assert retried.status_code == 200, retried.text
    attempt = retried.json()["checkout"]["attempt"]
    card = sandbox.read_card("4111 1111 1111 1111", "12/40", "123", "Test", today=date.today())
    settled = await sandbox.pay(
        db_of(app), gateway.config, attempt, method="card", outcome=card.outcome, card=card
    )
    assert settled.status == "captured"
    fields = dict(httpx.URL(settled.redirect_url).params)
    answer = await verify(client, buyer, declined["id"], fields)
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["card_last4"]) == ("fulfilled", "1111")
    await _deliver_sandbox_webhooks(app, client)
    assert (await wallet_of(app, buyer))["balance"] == 100
    assert await order_grants(app, declined["id"]) == 1


async def _deliver_sandbox_webhooks(app: Any, client: httpx.AsyncClient) -> None:
    async with db_of(app).transaction() as session:
        rows = list(await session.scalars(select(SandboxWebhook).where(SandboxWebhook.status == "pending")))
        for row in rows:
            row.status = "delivered"
    config = app.state.gateways["sandbox"].config
    for row in rows:
        raw = row.body.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": config.webhook_signature(raw),
            "x-razorpay-event-id": row.event_id,
        }
        response = await client.post("/v1/webhooks/sandbox", content=raw, headers=headers)
        assert response.status_code == 200, response.text
        assert json.loads(raw)["event"] in ("payment.captured", "order.paid", "payment.failed")


async def test_a_stripe_return_is_verified_by_asking_stripe(
    app: Any, client: httpx.AsyncClient, stripe_api: tuple[FakeStripe, str]
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app), gateway="stripe")
    intent_id = order["checkout"]["gateway_order_id"]
    secret = order["checkout"]["client"]["client_secret"]
    fields = {"payment_intent": intent_id, "payment_intent_client_secret": secret}
    unpaid = await verify(client, buyer, order["id"], fields)
    assert unpaid.status_code == 200 and unpaid.json()["status"] == "pending"
    wrong = await verify(client, buyer, order["id"], {"payment_intent": "pi_someone_else"})
    assert_error(wrong, 400, "invalid_request_error", "invalid_signature", "payment_intent")
    stripe_api[0].succeed(intent_id, brand="visa", last4="4242")
    paid = await verify(client, buyer, order["id"], fields)
    assert paid.status_code == 200, paid.text
    assert (paid.json()["status"], paid.json()["card_last4"]) == ("fulfilled", "4242")
    assert (await wallet_of(app, buyer))["balance"] == 100
