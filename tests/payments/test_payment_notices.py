"""What payments tell people, on both engines, through the ASGI app and the fake Razorpay (its SDK over real
HTTP): a chargeback tells every admin once and its owner of the hold and the decision; a processed refund tells
the buyer once; an admin's answer and a resolution tell a dispute's owner (the owner's own messages tell
nobody); each once however often the event is delivered or the call is repeated."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import select

from prepaid.notify.models import Notification, OutboxMessage
from tests.factories import TestUser
from tests.fakes import razorpay as fake_razorpay
from tests.fakes.razorpay import FakeRazorpay
from tests.payments.test_disputes_support import (
    buyer_and_admin,
    chargebacks_of,
    dispute_of,
    new_dispute_id,
    paid_order,
    razorpay_dispute_webhook,
    resolve,
    settings_overrides,
)
from tests.payments.test_orders_support import db_of, fake, send_webhook

__all__ = ["fake", "settings_overrides"]  # fixtures


async def notices(client: httpx.AsyncClient, user: TestUser, kind: str) -> list[dict[str, Any]]:
    """The user's notifications of ``kind``, as ``GET /v1/notifications`` lists them (newest first)."""
    response = await client.get("/v1/notifications", params={"limit": 100}, headers=user.headers)
    assert response.status_code == 200, response.text
    return [item for item in response.json()["data"] if item["kind"] == kind]


async def emails(app: Any, address: str, template: str) -> list[OutboxMessage]:
    async with db_of(app).transaction(write=False) as session:
        rows = await session.scalars(
            select(OutboxMessage).where(
                OutboxMessage.recipient == address, OutboxMessage.template == template
            )
        )
        return list(rows)


async def stored_kinds(app: Any, user: TestUser) -> list[str]:
    async with db_of(app).transaction(write=False) as session:
        rows = await session.scalars(
            select(Notification.kind).where(Notification.user_id == user.id).order_by(Notification.id)
        )
        return list(rows)


async def _deliver(client: httpx.AsyncClient, signed: tuple[dict[str, str], bytes]) -> None:
    response = await send_webhook(client, signed)
    assert response.status_code == 200, response.text


async def test_a_chargeback_tells_every_admin_once_and_its_owner_of_the_hold_and_the_loss(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    dispute_id = new_dispute_id()
    opened = razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    await _deliver(client, opened)
    await _deliver(client, opened)  # the same delivery again (deduplicated)
    for event in ("payment.dispute.created", "payment.dispute.under_review"):  # new event ids, same dispute
        await _deliver(client, razorpay_dispute_webhook(event, payment, dispute_id=dispute_id))
    [chargeback] = await chargebacks_of(app, order["id"])

    [alert] = await notices(client, admin, "chargeback_opened")
    assert (alert["data"]["order_id"], alert["data"]["dispute_id"], alert["data"]["user_id"]) == (
        order["id"],
        chargeback.id,
        buyer.id,
    )
    assert (alert["data"]["amount"], alert["data"]["currency"]) == (100_000, "INR")
    assert order["id"] in alert["body"]
    assert len(await emails(app, admin.email, "chargeback_opened")) == 1
    assert await notices(client, buyer, "chargeback_opened") == []  # admins only
    [held] = await notices(client, buyer, "dispute_updated")
    assert (held["data"]["dispute_id"], held["data"]["status"]) == (chargeback.id, "open")
    assert "held" in held["data"]["message"]

    lost = razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id, deducted=100_000)
    await _deliver(client, lost)
    await _deliver(client, razorpay_dispute_webhook("payment.dispute.lost", payment, dispute_id=dispute_id))
    updates = await notices(client, buyer, "dispute_updated")
    assert [u["data"]["status"] for u in updates] == ["lost", "open"]
    assert "taken back" in updates[0]["data"]["message"]
    assert len(await emails(app, buyer.email, "dispute_updated")) == 2
    assert len(await notices(client, admin, "chargeback_opened")) == 1


async def test_a_chargeback_won_tells_the_owner_the_credits_are_free(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    dispute_id = new_dispute_id()
    # "won" delivered first: the chargeback opens decided, nothing is held; admins still hear of it
    won = razorpay_dispute_webhook("payment.dispute.won", payment, dispute_id=dispute_id, status="won")
    await _deliver(client, won)
    await _deliver(
        client, razorpay_dispute_webhook("payment.dispute.created", payment, dispute_id=dispute_id)
    )
    [chargeback] = await chargebacks_of(app, order["id"])
    assert chargeback.status == "won"
    assert [a["data"]["dispute_id"] for a in await notices(client, admin, "chargeback_opened")] == [
        chargeback.id
    ]
    [update] = await notices(client, buyer, "dispute_updated")  # no "held" notice: nothing was held
    assert (update["data"]["status"], update["data"]["kind"]) == ("won", "chargeback")


async def test_a_processed_refund_tells_the_buyer_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    answer = await client.post(
        f"/v1/orders/{order['id']}/refunds",
        json={"amount": 50_000, "clawback": "available"},
        headers=admin.headers,
    )
    assert answer.status_code == 201, answer.text
    refund = answer.json()
    assert refund["status"] == "processed"
    [told] = await notices(client, buyer, "refund_processed")
    assert told["data"] == {
        "order_id": order["id"],
        "refund_id": refund["id"],
        "kind": "admin",
        "amount": 50_000,
        "currency": "INR",
        "credits": 55,  # half of 100 + 10 bonus
    }
    assert "55 credits taken back" in told["body"]
    [email] = await emails(app, buyer.email, "refund_processed")
    assert email.payload["data"]["refund_id"] == refund["id"]
    # the gateway's refund webhook arriving afterwards settles nothing again and tells nobody again
    [made] = [r for r in fake.refunds.values() if r["payment_id"] == payment["id"]]
    with fake.lock:
        entity_payment = {k: v for k, v in fake.payments[made["payment_id"]].items() if k != "_card"}
    processed = fake_razorpay.signed(
        fake_razorpay.webhook(
            "refund.processed", refund={**made, "status": "processed"}, payment=entity_payment
        )
    )
    await _deliver(client, processed)
    assert len(await notices(client, buyer, "refund_processed")) == 1
    assert len(await emails(app, buyer.email, "refund_processed")) == 1
    assert await notices(client, admin, "refund_processed") == []


async def test_an_admins_answer_and_the_resolution_tell_the_disputes_owner_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, _payment = await paid_order(app, client, fake, buyer)
    dispute = await dispute_of(client, buyer, order["id"], category="wrong_amount")
    path = f"/v1/disputes/{dispute['id']}/messages"
    own = await client.post(path, json={"message": "Any news?"}, headers=buyer.headers)
    assert own.status_code == 201, own.text
    assert await notices(client, buyer, "dispute_updated") == []  # their own words are not news to them
    answered = await client.post(path, json={"message": "Looking into it."}, headers=admin.headers)
    assert answered.status_code == 201, answered.text
    [told] = await notices(client, buyer, "dispute_updated")
    assert (told["data"]["dispute_id"], told["data"]["message"]) == (dispute["id"], "Looking into it.")

    for _ in range(2):  # resolved twice the same way: granted once, told once
        done = await resolve(client, admin, dispute["id"], resolution="grant_credits", amount=15)
        assert done.status_code == 200, done.text
    updates = await notices(client, buyer, "dispute_updated")
    assert len(updates) == 2
    resolved = updates[0]["data"]
    assert (resolved["status"], resolved["resolution"], resolved["credits"]) == (
        "resolved",
        "grant_credits",
        15,
    )
    assert resolved["message"].startswith("Credits granted")
    assert len(await emails(app, buyer.email, "dispute_updated")) == 2
    assert "dispute_updated" not in await stored_kinds(app, admin)
