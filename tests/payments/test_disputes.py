"""Customer disputes on both engines: raised on one's own order only, seen only by their owner and admins, a
message thread, and an admin's resolution made once: ``not_credited`` through the order's own fulfilment (a
late webhook never adds to it), goodwill grants keyed by the dispute, the gateway's word needed (or an explicit
override), refunds through the refunds engine, rejections."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from prepaid.payments.models import PaymentDispute
from tests.factories import make_api_key, make_customer
from tests.fakes.razorpay import FakeRazorpay
from tests.helpers import assert_error
from tests.payments.test_disputes_support import (
    audit_entries,
    buyer_and_admin,
    dispute_of,
    paid_order,
    resolve,
    settings_overrides,
    wallet_state,
)
from tests.payments.test_orders_support import (
    captured_webhooks,
    create_order,
    db_of,
    fake,
    make_plan,
    order_grants,
    razorpay_order_id,
    send_webhook,
    stored_order,
)

__all__ = ["fake", "settings_overrides"]  # fixtures


async def test_a_buyer_disputes_their_own_order_and_nobody_else_sees_it(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    other = await make_customer(app)
    order, _payment = await paid_order(app, client, fake, buyer)
    dispute = await dispute_of(client, buyer, order["id"], "wrong_amount")
    assert (dispute["kind"], dispute["category"], dispute["status"]) == ("customer", "wrong_amount", "open")
    assert [(m["author_role"], m["body"]) for m in dispute["messages"]] == [
        ("customer", "I paid and have no credits.")
    ]

    # another user: the dispute, its thread and the order are not there for them
    assert_error(
        await client.get(f"/v1/disputes/{dispute['id']}", headers=other.headers),
        404,
        "not_found",
        "resource_missing",
        "dispute_id",
    )
    posted = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"message": "me too"}, headers=other.headers
    )
    assert_error(posted, 404, "not_found", "resource_missing", "dispute_id")
    assert (await client.get("/v1/disputes", headers=other.headers)).json()["data"] == []
    refused = await client.get(f"/v1/disputes?user={buyer.id}", headers=other.headers)
    assert_error(refused, 403, "permission_error", "customer_forbidden", "user")
    stolen = await client.post(
        "/v1/disputes",
        json={"order": order["id"], "category": "other", "message": "give me credits"},
        headers=other.headers,
    )
    assert_error(stolen, 404, "not_found", "resource_missing", "order")
    # a key with only balance:read reads, but cannot raise one
    key = await make_api_key(app, buyer, scopes=["balance:read"])
    assert [d["id"] for d in (await client.get("/v1/disputes", headers=key.headers)).json()["data"]] == [
        dispute["id"]
    ]
    by_key = await client.post(
        "/v1/disputes", json={"order": order["id"], "category": "other", "message": "x"}, headers=key.headers
    )
    assert_error(by_key, 403, "permission_error", "missing_scope", "orders:write")

    # the thread: the owner and an admin write; the admin's message is audited
    reply = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"message": "Looking into it."}, headers=admin.headers
    )
    assert reply.status_code == 201, reply.text
    more = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"message": "Thanks!"}, headers=buyer.headers
    )
    assert [m["author_role"] for m in more.json()["messages"]] == ["customer", "admin", "customer"]
    assert await audit_entries(app, dispute["id"], "dispute.message") == 1

    # one open dispute per order; bad input changes nothing
    again = await client.post(
        "/v1/disputes",
        json={"order": order["id"], "category": "other", "message": "again"},
        headers=buyer.headers,
    )
    error = assert_error(again, 409, "conflict", "dispute_already_open", "order")
    assert error["dispute"] == dispute["id"]
    for body, param in (
        ({"order": order["id"], "category": "chargeback", "message": "x"}, "category"),
        ({"order": order["id"], "category": "other", "message": "   "}, "message"),
        ({"order": order["id"], "category": "other"}, "message"),
        ({"order": order["id"], "category": "other", "message": "x", "amount": 5}, "amount"),
    ):
        bad = await client.post("/v1/disputes", json=body, headers=buyer.headers)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
    # the admin sees everyone's, filtered
    listed = await client.get(f"/v1/disputes?user={buyer.id}&status=open", headers=admin.headers)
    assert [d["id"] for d in listed.json()["data"]] == [dispute["id"]]
    assert (await client.get("/v1/disputes?status=rejected", headers=admin.headers)).json()["data"] == []
    async with db_of(app).transaction(write=False) as session:
        assert len(list(await session.scalars(PaymentDispute.__table__.select()))) == 1


async def test_not_credited_is_resolved_by_the_orders_own_fulfilment_and_a_late_webhook_adds_nothing(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer, webhook=False)  # captured, webhook delayed
    assert (await stored_order(app, order["id"])).status == "pending"
    dispute = await dispute_of(client, buyer, order["id"], "not_credited")

    # the admin sees the gateway's live view beside the dispute; the buyer does not
    seen = (await client.get(f"/v1/disputes/{dispute['id']}", headers=admin.headers)).json()
    [view] = seen["gateway_views"]
    assert (view["gateway"], view["status"], view["amount_paid"], view["error"]) == (
        "razorpay",
        "captured",
        100_000,
        None,
    )
    assert [p["payment_id"] for p in view["payments"]] == [payment["id"]]
    own = (await client.get(f"/v1/disputes/{dispute['id']}", headers=buyer.headers)).json()
    assert own["gateway_views"] is None and len(own["messages"]) == 1

    with_amount = await resolve(client, admin, dispute["id"], resolution="grant_credits", amount=5)
    assert_error(with_amount, 400, "invalid_request_error", "amount_not_allowed", "amount")
    resolved = await resolve(client, admin, dispute["id"], resolution="grant_credits")
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert (body["status"], body["resolution"], body["granted_credits"]) == ("resolved", "grant_credits", 110)
    stored = await stored_order(app, order["id"])
    assert (stored.status, stored.payment_id) == ("fulfilled", payment["id"])
    assert body["grant_transaction_id"] == stored.purchase_transaction_id
    assert (await wallet_state(app, buyer))["available"] == 110

    # the delayed webhooks now arrive (twice): the order is granted already
    for signed in captured_webhooks(fake, payment) * 2:
        assert (await send_webhook(client, signed)).status_code == 200
    assert await order_grants(app, order["id"]) == 2  # the credits and the bonus, once each
    assert (await wallet_state(app, buyer))["available"] == 110
    assert (await stored_order(app, order["id"])).flag_reason is None
    assert await audit_entries(app, dispute["id"], "dispute.resolve") == 1


async def test_a_webhook_first_then_not_credited_resolution_grants_nothing_more(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, _payment = await paid_order(app, client, fake, buyer)
    dispute = await dispute_of(client, buyer, order["id"], "not_credited")
    resolved = await resolve(client, admin, dispute["id"], resolution="grant_credits")
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["granted_credits"] == 110
    assert await order_grants(app, order["id"]) == 2
    assert (await wallet_state(app, buyer))["available"] == 110


async def test_a_dispute_resolved_twice_grants_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, _payment = await paid_order(app, client, fake, buyer)
    dispute = await dispute_of(client, buyer, order["id"], "duplicate_charge")
    answers = await asyncio.gather(
        *(resolve(client, admin, dispute["id"], resolution="grant_credits", amount=25) for _ in range(3))
    )
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert {a.json()["grant_transaction_id"] for a in answers} != {None}
    assert len({a.json()["grant_transaction_id"] for a in answers}) == 1
    again = await resolve(client, admin, dispute["id"], resolution="grant_credits", amount=25)
    assert again.status_code == 200 and again.json()["granted_credits"] == 25
    assert (await wallet_state(app, buyer))["available"] == 110 + 25
    other_way = await resolve(client, admin, dispute["id"], resolution="reject")
    assert_error(other_way, 409, "conflict", "dispute_closed", "dispute_id")
    assert (await wallet_state(app, buyer))["available"] == 110 + 25
    assert await audit_entries(app, dispute["id"], "dispute.resolve") == 1
    closed = await client.post(
        f"/v1/disputes/{dispute['id']}/messages", json={"message": "and?"}, headers=buyer.headers
    )
    assert_error(closed, 409, "conflict", "dispute_closed", "dispute_id")


async def test_granting_against_an_unpaid_order_needs_an_explicit_override(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=10))
    fake.pay(razorpay_order_id(order), status="failed")
    goodwill = await dispute_of(client, buyer, order["id"], "other")
    refused = await resolve(client, admin, goodwill["id"], resolution="grant_credits", amount=40)
    assert_error(refused, 409, "conflict", "payment_not_captured", "override")
    no_reason = await resolve(
        client, admin, goodwill["id"], resolution="grant_credits", amount=40, override=True
    )
    assert_error(no_reason, 400, "invalid_request_error", "override_reason_required", "override_reason")
    assert (await wallet_state(app, buyer))["available"] == 0
    assert (await client.get(f"/v1/disputes/{goodwill['id']}", headers=buyer.headers)).json()[
        "status"
    ] == "open"
    granted = await resolve(
        client,
        admin,
        goodwill["id"],
        resolution="grant_credits",
        amount=40,
        override=True,
        override_reason="Bank statement shows the debit.",
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["override_reason"] == "Bank statement shows the debit."
    assert (await wallet_state(app, buyer))["available"] == 40

    # not_credited with an override fulfils the order itself (its own keys): a payment captured later
    # finds it granted and grants nothing more
    second = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=10))
    missing = await dispute_of(client, buyer, second["id"], "not_credited")
    assert_error(
        await resolve(client, admin, missing["id"], resolution="grant_credits"),
        409,
        "conflict",
        "payment_not_captured",
        "override",
    )
    overridden = await resolve(
        client,
        admin,
        missing["id"],
        resolution="grant_credits",
        override=True,
        override_reason="UPI ref seen",
    )
    assert overridden.status_code == 200, overridden.text
    assert (await stored_order(app, second["id"])).status == "fulfilled"
    assert (await wallet_state(app, buyer))["available"] == 40 + 110
    late = fake.pay(razorpay_order_id(second))
    for signed in captured_webhooks(fake, late):
        assert (await send_webhook(client, signed)).status_code == 200
    assert await order_grants(app, second["id"]) == 2
    assert (await wallet_state(app, buyer))["available"] == 40 + 110


async def test_a_rejected_dispute_grants_nothing_and_is_closed(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, _payment = await paid_order(app, client, fake, buyer)
    dispute = await dispute_of(client, buyer, order["id"], "other")
    not_admin = await resolve(client, buyer, dispute["id"], resolution="grant_credits", amount=1000)
    assert_error(not_admin, 403, "permission_error", "admin_required")
    missing_amount = await resolve(client, admin, dispute["id"], resolution="grant_credits")
    assert_error(missing_amount, 400, "invalid_request_error", "amount_required", "amount")
    rejected = await resolve(client, admin, dispute["id"], resolution="reject", note="Credited on 3 May.")
    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert (body["status"], body["resolution"], body["resolved_by"]) == ("rejected", "reject", admin.id)
    assert body["messages"][-1]["body"] == "Rejected: Credited on 3 May."
    assert (await wallet_state(app, buyer))["available"] == 110
    unknown = await resolve(client, admin, "dsp_01JD3NOTADISPUTE000000000", resolution="reject")
    assert_error(unknown, 404, "not_found", "resource_missing", "dispute_id")


async def test_a_refund_resolution_refunds_through_the_gateway_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await buyer_and_admin(app)
    order, payment = await paid_order(app, client, fake, buyer)
    dispute = await dispute_of(client, buyer, order["id"], "refund_request")
    answers = [
        await resolve(client, admin, dispute["id"], resolution="refund", amount=50_000, clawback="available")
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    refund_id = answers[0].json()["refund_id"]
    assert refund_id is not None and answers[1].json()["refund_id"] == refund_id
    refund = (await client.get(f"/v1/refunds/{refund_id}", headers=admin.headers)).json()
    assert (refund["amount"], refund["order_id"], refund["status"]) == (50_000, order["id"], "processed")
    with fake.lock:
        refunded = [r for r in fake.refunds.values() if r["payment_id"] == payment["id"]]
    assert [r["amount"] for r in refunded] == [50_000]
    assert (await wallet_state(app, buyer))["available"] == 110 - 55  # half the money: half the credits
