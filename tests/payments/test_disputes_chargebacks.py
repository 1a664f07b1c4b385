"""Chargebacks on both engines: the gateway's dispute webhooks (Razorpay ``payment.dispute.*``, Stripe
``charge.dispute.*``, signed as documented, through ``POST /v1/webhooks/{gateway}``) open one dispute per
gateway dispute, move the order to ``disputed`` and hold its credits; won releases them, lost takes them back
(into debt when they were spent). Duplicated and out-of-order deliveries move nothing twice."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from prepaid.ledger import service as ledger_service
from prepaid.payments.models import PaymentGatewayEvent
from tests.fakes import stripe as fake_stripe
from tests.fakes.razorpay import FakeRazorpay
from tests.fakes.stripe import FakeStripe
from tests.helpers import assert_error
from tests.payments.test_disputes_support import (
    buyer_and_admin,
    chargebacks_of,
    dispute_transactions,
    new_dispute_id,
    paid_order,
    razorpay_dispute_webhook,
    resolve,
    settings_overrides,
    wallet_state,
)
from tests.payments.test_orders_support import (
    create_order,
    db_of,
    fake,
    make_plan,
    order_grants,
    send_webhook,
    stored_order,
)

__all__ = ["fake", "settings_overrides"]  # fixtures


async def _deliver(
    app: Any, client: httpx.AsyncClient, signed: tuple[dict[str, str], bytes], gateway: str = "razorpay"
) -> None:
    """Send a signed webhook; it must be stored and processed (else the failure the inbox kept is shown)."""
    response = await client.post(f"/v1/webhooks/{gateway}", content=signed[1], headers=signed[0])
    assert response.status_code == 200, response.text
    if not response.json()["processed"]:
        async with db_of(app).transaction(write=False) as session:
            row = await session.get(PaymentGatewayEvent, response.json()["event"])
        raise AssertionError(row.error if row is not None else response.text)


async def _spend(app: Any, wallet_id: str, amount: int) -> None:
    async with db_of(app).transaction() as session:
        await ledger_service.spend(
            session, wallet_id=wallet_id, amount=amount, idempotency_key=f"test:{secrets.token_hex(8)}"
        )


async def test_a_chargeback_holds_the_credits_and_a_won_dispute_releases_them(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    dispute_id = new_dispute_id()
    opened = razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    await _deliver(app, client, opened)
    duplicate = await send_webhook(client, opened)
    assert duplicate.json()["duplicate"] is True
    # the same dispute again under other event ids: no second dispute, no second hold
    await _deliver(
        app, client, razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    )
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook(
            "payment.dispute.under_review", payment, dispute_id=dispute_id, status="under_review"
        ),
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert (chargeback.status, chargeback.held_credits, chargeback.gateway_status) == (
        "open",
        110,
        "under_review",
    )
    assert (chargeback.amount, chargeback.currency, chargeback.user_id) == (100_000, "INR", buyer.id)
    assert (await stored_order(app, order["id"])).status == "disputed"
    assert await wallet_state(app, buyer) == {"available": 0, "held": 110, "debt": 0}
    # the buyer sees it among their disputes; nobody resolves a chargeback by hand; no refund meanwhile
    listed = (await client.get("/v1/disputes?kind=chargeback", headers=buyer.headers)).json()["data"]
    assert [(d["id"], d["held_credits"], d["status"]) for d in listed] == [(chargeback.id, 110, "open")]
    by_hand = await resolve(client, admin, chargeback.id, resolution="reject")
    assert_error(by_hand, 409, "conflict", "chargeback_not_resolvable", "dispute_id")
    refund = await client.post(
        f"/v1/orders/{order['id']}/refunds", json={"clawback": "available"}, headers=admin.headers
    )
    assert_error(refund, 409, "conflict", "order_disputed", "order_id")

    won = razorpay_dispute_webhook("payment.dispute.won", payment, dispute_id=dispute_id, status="won")
    await _deliver(app, client, won)
    await _deliver(
        app, client, razorpay_dispute_webhook("payment.dispute.won", payment, dispute_id=dispute_id)
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.status == "won"
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert await wallet_state(app, buyer) == {"available": 110, "held": 0, "debt": 0}
    assert await dispute_transactions(app, chargeback.id) == ["hold", "release"]
    # a stale "lost" after the win changes nothing
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000),
    )
    assert await wallet_state(app, buyer) == {"available": 110, "held": 0, "debt": 0}
    assert await order_grants(app, order["id"]) == 2


async def test_a_lost_chargeback_takes_the_credits_back_into_debt_when_spent(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, _admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    await _spend(app, order["wallet_id"], 80)
    dispute_id = new_dispute_id()
    await _deliver(
        app, client, razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.held_credits == 30  # what is left of the 110
    assert await wallet_state(app, buyer) == {"available": 0, "held": 30, "debt": 0}
    lost = razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000)
    await _deliver(app, client, lost)
    await _deliver(app, client, lost)  # redelivered (a duplicate event id): nothing
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000),
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.status == "lost"
    assert await wallet_state(app, buyer) == {"available": -80, "held": 0, "debt": 80}
    assert await dispute_transactions(app, chargeback.id) == ["capture", "clawback", "hold"]
    assert (await stored_order(app, order["id"])).status == "disputed"
    # the next purchase repays the debt first
    async with db_of(app).transaction() as session:
        await ledger_service.grant(session, wallet_id=order["wallet_id"], amount=100, idempotency_key="topup")
    assert await wallet_state(app, buyer) == {"available": 20, "held": 0, "debt": 0}


async def test_events_out_of_order_a_loss_before_the_opening_takes_back_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, _admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    dispute_id = new_dispute_id()
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000),
    )
    await _deliver(
        app, client, razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    )
    await _deliver(
        app, client, razorpay_dispute_webhook("payment.dispute.won", payment, dispute_id=dispute_id)
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert (chargeback.status, chargeback.held_credits, chargeback.hold_id) == ("lost", 0, None)
    assert await wallet_state(app, buyer) == {"available": 0, "held": 0, "debt": 0}
    assert await dispute_transactions(app, chargeback.id) == ["clawback"]


async def test_a_partial_chargeback_holds_credits_in_proportion(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, _admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    dispute_id = new_dispute_id()
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id, amount=25_000),
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.held_credits == 28  # a quarter of 110, rounded up
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook(
            "payment.dispute.closed", payment, dispute_id=dispute_id, amount=25_000, deducted=25_000
        ),
    )
    assert await wallet_state(app, buyer) == {"available": 82, "held": 0, "debt": 0}


async def test_a_chargeback_for_no_order_of_ours_is_kept_and_noted(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, _admin = await buyer_and_admin(app)
    _order, payment = await paid_order(app, client, fake, buyer)
    stranger = {**payment, "id": "pay_NotOurs00000001", "order_id": "order_NotOurs0000001"}
    response = await send_webhook(
        client, razorpay_dispute_webhook("payment.dispute.created", stranger, dispute_id=new_dispute_id())
    )
    assert response.status_code == 200 and response.json()["processed"]
    assert await wallet_state(app, buyer) == {"available": 110, "held": 0, "debt": 0}


async def test_a_stripe_chargeback_lost_after_the_credits_were_spent(
    app: Any, client: httpx.AsyncClient, stripe_api: tuple[FakeStripe, str]
) -> None:
    buyer, _admin = await buyer_and_admin(app)
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=10), gateway="stripe")
    intent = stripe_api[0].succeed(order["checkout"]["gateway_order_id"])
    await _deliver(
        app, client, fake_stripe.signed(fake_stripe.event("payment_intent.succeeded", intent)), "stripe"
    )
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    await _spend(app, order["wallet_id"], 100)
    dispute = {
        "id": f"du_{secrets.token_hex(8)}",
        "object": "dispute",
        "amount": intent["amount"],
        "charge": intent["latest_charge"],
        "currency": intent["currency"],
        "payment_intent": intent["id"],
        "reason": "fraudulent",
        "status": "needs_response",
    }
    await _deliver(
        app, client, fake_stripe.signed(fake_stripe.event("charge.dispute.created", dispute)), "stripe"
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert (chargeback.gateway, chargeback.reason, chargeback.held_credits) == ("stripe", "fraudulent", 10)
    closed = fake_stripe.signed(fake_stripe.event("charge.dispute.closed", {**dispute, "status": "lost"}))
    await _deliver(app, client, closed, "stripe")
    await _deliver(app, client, closed, "stripe")
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.status == "lost"
    assert await wallet_state(app, buyer) == {"available": -100, "held": 0, "debt": 100}


async def test_a_chargeback_after_a_partial_refund_takes_back_only_what_the_refund_left(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    refund = await client.post(
        f"/v1/orders/{order['id']}/refunds",
        json={"amount": 50_000, "clawback": "available"},
        headers=admin.headers,
    )
    assert refund.status_code == 201 and refund.json()["status"] == "processed", refund.text
    assert await wallet_state(app, buyer) == {"available": 55, "held": 0, "debt": 0}
    dispute_id = new_dispute_id()
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id, amount=100_000),
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.held_credits == 55
    await _deliver(
        app,
        client,
        razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000),
    )
    assert await wallet_state(app, buyer) == {"available": 0, "held": 0, "debt": 0}
