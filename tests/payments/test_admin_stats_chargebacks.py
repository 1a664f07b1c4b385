"""``GET /v1/admin/stats`` with a chargeback lost at the gateway (a real Razorpay dispute webhook, signed, through
``POST /v1/webhooks/razorpay``), on both engines: the lost amount comes off the day's revenue and the buyer's
total, and the credits the chargeback takes back are not counted as spent."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from prepaid.db import utcnow
from prepaid.ledger import service as ledger_service
from tests.factories import make_customer
from tests.fakes.razorpay import FakeRazorpay
from tests.payments.test_disputes_support import (
    new_dispute_id,
    paid_order,
    razorpay_dispute_webhook,
    settings_overrides,
)
from tests.payments.test_orders_support import db_of, fake

__all__ = ["fake", "settings_overrides"]  # fixtures


async def _deliver(client: httpx.AsyncClient, signed: tuple[dict[str, str], bytes]) -> None:
    response = await client.post("/v1/webhooks/razorpay", content=signed[1], headers=signed[0])
    assert response.status_code == 200 and response.json()["processed"], response.text


async def test_a_lost_chargeback_comes_off_revenue_and_is_not_spending(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    buyer = await make_customer(app, name="Charged back")
    order, payment = await paid_order(app, client, fake, buyer)  # INR 1,000 for 100 + 10 credits
    async with db_of(app).transaction() as session:
        await ledger_service.spend(
            session, wallet_id=order["wallet_id"], amount=80, idempotency_key=f"test:{secrets.token_hex(6)}"
        )
    dispute_id = new_dispute_id()
    await _deliver(
        client, razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    )
    await _deliver(
        client,
        razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000),
    )

    response = await client.get("/v1/admin/stats", headers=admin.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    day = utcnow().date().isoformat()
    assert body["revenue"] == [
        {"day": day, "currency": "INR", "gross": 100_000, "refunded": 0, "chargebacks": 100_000, "net": 0}
    ]
    [today] = [row for row in body["credits"] if row["day"] == day]
    # the hold captured into @chargebacks and the clawback are not spending: only the 80 are
    assert (today["sold"], today["granted"], today["spent"]) == (100, 10, 80)
    assert [(row["user_id"], row["paid"], row["credits"]) for row in body["top_customers"]] == [
        (buyer.id, 0, 110)
    ]
