"""``fulfil`` on both engines, through the service as the routes and jobs call it: exactly once under real
concurrency (separate transactions), the coupon use redeemed with the grant, and every reason an order is
flagged instead of fulfilled; and a webhook whose processing failed is processed by the runner later."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from prepaid.catalog.models import CouponRedemption
from prepaid.db import utcnow
from prepaid.errors import InvalidRequest
from prepaid.payments import jobs as payments_jobs
from prepaid.payments import service as payments_service
from prepaid.payments.models import PaymentGatewayEvent
from tests.factories import make_customer
from tests.fakes import razorpay as fake_razorpay
from tests.fakes.razorpay import FakeRazorpay
from tests.helpers import assert_error
from tests.payments.test_orders_support import (
    captured_webhooks,
    create_order,
    db_of,
    fake,
    make_coupon,
    make_plan,
    order_grants,
    razorpay_order_id,
    send_webhook,
    settings_overrides,
    stored_order,
    wallet_of,
)

__all__ = ["fake", "settings_overrides"]  # fixtures


def _paid(
    order: dict[str, Any], payment_id: str = "pay_Test000000001", **values: Any
) -> payments_service.PaymentFacts:
    facts = {"payment_id": payment_id, "amount": order["amount"], "currency": order["currency"], **values}
    return payments_service.PaymentFacts(**facts)


async def _fulfil(app: Any, order_id: str, payment: payments_service.PaymentFacts) -> str:
    async with db_of(app).transaction() as session:
        fulfilled = await payments_service.fulfil(session, order_id=order_id, payment=payment, now=utcnow())
        return fulfilled.status


async def test_many_concurrent_fulfilments_grant_once(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=5))
    statuses = await asyncio.gather(*(_fulfil(app, order["id"], _paid(order)) for _ in range(10)))
    assert statuses == ["fulfilled"] * 10
    assert await wallet_of(app, buyer) == {
        "balance": 105,
        "paid": 100,
        "promotional": 5,
        "refund": 0,
        "adjustment": 0,
    }
    assert await order_grants(app, order["id"]) == 2
    assert (await stored_order(app, order["id"])).flag_reason is None


async def test_another_currency_is_flagged_and_grants_nothing(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    assert await _fulfil(app, order["id"], _paid(order, currency="USD")) == "flagged"
    stored = await stored_order(app, order["id"])
    assert (stored.flag_reason or "").startswith("amount_mismatch: paid 100000 USD")
    assert (await wallet_of(app, buyer))["balance"] == 0
    # a flagged order is an admin's: a later payment adds to the flag, never grants on its own
    assert await _fulfil(app, order["id"], _paid(order, payment_id="pay_Test000000002")) == "flagged"
    assert "duplicate_payment" in ((await stored_order(app, order["id"])).flag_reason or "")
    assert await order_grants(app, order["id"]) == 0


async def test_a_coupon_used_up_while_the_order_had_lapsed_flags_the_late_payment(
    app: Any, client: httpx.AsyncClient
) -> None:
    plan = await make_plan(app)
    coupon = await make_coupon(app, kind="percent_off", percent_bps=1000, max_redemptions=1)
    late = await make_customer(app)
    order = await create_order(client, late, plan=plan, coupon=coupon)
    async with db_of(app).transaction() as session:
        assert await payments_service.expire_due_orders(session, now=utcnow() + timedelta(hours=1)) == 1
    other = await make_customer(app)
    taken = await create_order(client, other, plan=plan, coupon=coupon)
    assert await _fulfil(app, taken["id"], _paid(taken)) == "fulfilled"
    # the first buyer's money arrives after the coupon's one use went to someone else
    assert await _fulfil(app, order["id"], _paid(order, payment_id="pay_Late00000000001")) == "flagged"
    stored = await stored_order(app, order["id"])
    assert (stored.flag_reason or "").startswith("coupon_unavailable")
    assert (await wallet_of(app, late))["balance"] == 0
    async with db_of(app).transaction(write=False) as session:
        statuses = dict(
            (await session.execute(select(CouponRedemption.order_id, CouponRedemption.status))).all()
        )
    assert statuses == {order["id"]: "released", taken["id"]: "redeemed"}


async def test_a_zero_total_needs_no_payment_but_a_priced_order_does(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    async with db_of(app).transaction() as session:
        with pytest.raises(InvalidRequest) as refused:
            await payments_service.fulfil(session, order_id=order["id"], payment=None, now=utcnow())
    assert refused.value.code == "payment_required"
    assert (await stored_order(app, order["id"])).status == "pending"


async def test_a_webhook_whose_processing_failed_is_processed_by_the_runner(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay, monkeypatch: pytest.MonkeyPatch
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    payment = fake.pay(razorpay_order_id(order))
    real_fulfil = payments_service.fulfil

    async def failing(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionResetError("the database went away mid-request")

    monkeypatch.setattr(payments_service, "fulfil", failing)
    response = await send_webhook(client, captured_webhooks(fake, payment)[0])
    assert response.status_code == 200  # stored: the gateway need not send it again
    assert response.json()["processed"] is False
    async with db_of(app).transaction(write=False) as session:
        event = await session.scalar(select(PaymentGatewayEvent))
    assert event is not None and event.processed_at is None and "ConnectionResetError" in (event.error or "")
    assert (await wallet_of(app, buyer))["balance"] == 0

    monkeypatch.setattr(payments_service, "fulfil", real_fulfil)
    assert await payments_jobs.process_events(db_of(app), app.state.settings) == 0  # not due yet (30 s)
    async with db_of(app).transaction() as session:
        row = await session.get(PaymentGatewayEvent, event.id)
        assert row is not None
        row.received_at = utcnow() - timedelta(minutes=1)
    assert await payments_jobs.process_events(db_of(app), app.state.settings) == 1
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100
    assert await payments_jobs.process_events(db_of(app), app.state.settings) == 0


async def test_an_incomplete_captured_event_is_kept_unprocessed(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await create_order(client, buyer, plan=await make_plan(app))
    payment = fake.pay(razorpay_order_id(order))
    payment.pop("amount")
    response = await send_webhook(
        client, fake_razorpay.signed(fake_razorpay.webhook("payment.captured", payment=payment))
    )
    assert response.status_code == 200 and response.json()["processed"] is False
    assert (await wallet_of(app, buyer))["balance"] == 0
    cancel = await client.post(f"/v1/orders/{order['id']}/cancel", headers=buyer.headers)
    assert cancel.status_code == 200
    bad_cancel = await client.post("/v1/orders/ord_nothing/cancel", headers=buyer.headers)
    assert_error(bad_cancel, 404, "not_found", "resource_missing", "order_id")
