"""Refunds on both engines, through the HTTP API with the Razorpay adapter (the official SDK over real HTTP to
the fake Razorpay server) and the built-in sandbox: each clawback policy, partial refunds and their rounding,
what is refused (too much, a chargeback open, a non-admin), a gateway error retried by the job without
refunding twice, settlement by the refund webhooks, and the automatic refund of a duplicate payment."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from starlette.requests import Request
from starlette.responses import Response

from prepaid.db import utcnow
from prepaid.ledger import service as ledger_service
from prepaid.payments import jobs as payments_jobs
from prepaid.payments import refunds as refunds_service
from prepaid.payments import service as payments_service
from prepaid.payments.gateways import sandbox
from prepaid.payments.gateways.sandbox_models import SandboxWebhook
from prepaid.payments.models import PaymentOrder, PaymentRefund
from tests.factories import TestUser, make_api_key, make_customer
from tests.fakes import razorpay as fake_razorpay
from tests.fakes.razorpay import FakeRazorpay
from tests.fakes.server import Recorded, RunningServer, json_response
from tests.helpers import assert_error, audit_log
from tests.payments.test_orders_support import (
    callback,
    create_order,
    db_of,
    make_plan,
    razorpay_order_id,
    send_webhook,
    settings_overrides,
    stored_order,
    verify,
)

__all__ = ["settings_overrides"]  # fixture


class SlowRefundRazorpay(FakeRazorpay):
    """Razorpay as it often is: a refund is accepted ``pending`` and settled later by its webhook."""

    async def _refund(self, request: Request, recorded: Recorded) -> Response:
        response = await super()._refund(request, recorded)
        if response.status_code != 200:
            return response
        with self.lock:
            made = [r for r in self.refunds.values() if r["payment_id"] == request.path_params["id"]]
            made[-1]["status"] = "pending"  # the newest for that payment (dicts keep insertion order)
            return json_response(dict(made[-1]))


@pytest.fixture
def razorpay_api(request: pytest.FixtureRequest) -> Iterator[tuple[FakeRazorpay, str]]:
    """The fake Razorpay; a test that also asks for ``slow`` gets refunds that answer ``pending``."""
    fake = SlowRefundRazorpay() if "slow" in request.fixturenames else FakeRazorpay()
    server = RunningServer(fake.app()).start()
    yield fake, server.url
    server.stop()


@pytest.fixture
def slow() -> None:
    """Marks a test whose fake Razorpay answers refunds ``pending`` (see ``razorpay_api``)."""


@pytest.fixture
def fake(razorpay_api: tuple[FakeRazorpay, str]) -> FakeRazorpay:
    return razorpay_api[0]


# ---------------------------------------------------------------- helpers


async def _admin(app: Any) -> TestUser:
    return await make_customer(app, roles=["user", "admin"])


async def _paid_order(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay, buyer: TestUser, *, bonus: int = 20
) -> dict[str, Any]:
    """An order of 100 credits + ``bonus`` for ₹1,000, paid at the fake Razorpay and verified: fulfilled."""
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=bonus))
    gateway_order_id = razorpay_order_id(order)
    payment = fake.pay(gateway_order_id)
    answer = await verify(client, buyer, order["id"], callback(gateway_order_id, payment["id"]))
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "fulfilled"
    return dict(answer.json())


async def _spend(app: Any, buyer: TestUser, amount: int) -> None:
    async with db_of(app).transaction() as session:
        wallet = await ledger_service.default_wallet(session, user_id=buyer.id)
        await ledger_service.spend(
            session, wallet_id=wallet.id, amount=amount, idempotency_key=f"test:spend:{wallet.id}:{amount}"
        )


async def _refund(client: httpx.AsyncClient, admin: TestUser, order_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/orders/{order_id}/refunds", json=body, headers=admin.headers)


async def _wallet(app: Any, buyer: TestUser) -> dict[str, int]:
    """available, held and debt of the buyer's default wallet."""
    async with db_of(app).transaction(write=False) as session:
        wallet = await ledger_service.default_wallet(session, user_id=buyer.id)
        await session.refresh(wallet)
        return {"available": wallet.balance, "held": wallet.held, "debt": wallet.debt}


async def _refund_rows(app: Any) -> int:
    async with db_of(app).transaction(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(PaymentRefund)) or 0)


async def _make_due(app: Any) -> None:
    """Time passes: every refund waiting for its next try is due now."""
    async with db_of(app).transaction() as session:
        await session.execute(
            update(PaymentRefund)
            .where(PaymentRefund.status == "created")
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


async def _run_refund_job(app: Any) -> int:
    job = payments_jobs.refund_job(app.state.gateways)
    return await job(db_of(app), app.state.settings)


def _refund_webhook(fake: FakeRazorpay, event: str, refund: dict[str, Any], status: str) -> Any:
    with fake.lock:
        payment = dict(fake.payments[refund["payment_id"]])
    payment.pop("_card", None)
    entity = {**refund, "status": status}
    return fake_razorpay.signed(fake_razorpay.webhook(event, refund=entity, payment=payment))


def _fake_refunds(fake: FakeRazorpay, payment_id: str) -> list[dict[str, Any]]:
    with fake.lock:
        return [dict(r) for r in fake.refunds.values() if r["payment_id"] == payment_id]


# ---------------------------------------------------------------- the clawback policies


async def test_a_full_refund_under_available_takes_back_what_is_left(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    await _spend(app, buyer, 50)  # 120 granted (100 + 20 bonus), 70 left
    answer = await _refund(client, admin, order["id"], clawback="available", reason="customer asked")
    assert answer.status_code == 201, answer.text
    refund = answer.json()
    assert refund["object"] == "refund" and refund["status"] == "processed"
    assert (refund["amount"], refund["currency"], refund["kind"]) == (100_000, "INR", "admin")
    assert (refund["credits"], refund["credits_held"], refund["credits_taken"]) == (120, 70, 70)
    assert refund["gateway_refund_id"] and refund["payment_id"] == order["payment_id"]
    assert await _wallet(app, buyer) == {"available": 0, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "refunded"
    made = _fake_refunds(fake, order["payment_id"])
    assert [(r["amount"], r["notes"]["refund_id"]) for r in made] == [(100_000, refund["id"])]
    # the gateway got our refund id as its idempotency key
    (call,) = fake.calls("POST", f"/v1/payments/{order['payment_id']}/refund")
    assert call.header("x-refund-idempotency") == refund["id"]
    entries = await audit_log(client, admin.headers, object_id=refund["id"])
    assert [(e["action"], e["after"]["amount"]) for e in entries] == [("refund.create", 100_000)]


async def test_a_full_refund_under_negative_takes_all_and_leaves_debt(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    await _spend(app, buyer, 50)
    answer = await _refund(client, admin, order["id"], clawback="negative")
    assert answer.status_code == 201, answer.text
    assert (answer.json()["status"], answer.json()["credits_taken"]) == ("processed", 120)
    assert await _wallet(app, buyer) == {"available": -50, "held": 0, "debt": 50}
    # a later purchase repays the debt first
    await _paid_order(app, client, fake, buyer, bonus=0)
    assert await _wallet(app, buyer) == {"available": 50, "held": 0, "debt": 0}


async def test_a_refund_under_none_takes_no_credits(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    answer = await _refund(client, admin, order["id"], clawback="none")
    assert answer.status_code == 201, answer.text
    assert (answer.json()["status"], answer.json()["credits"], answer.json()["credits_taken"]) == (
        "processed",
        120,
        0,
    )
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "refunded"


async def test_two_partial_refunds_take_credits_in_proportion_and_then_the_rest(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)  # 120 credits for 100000 paise
    first = await _refund(client, admin, order["id"], amount=33_333, clawback="available")
    assert first.status_code == 201, first.text
    # floor(120 x 33333 / 100000) = 39: the rounding goes the customer's way
    assert (first.json()["credits"], first.json()["credits_taken"]) == (39, 39)
    assert (await stored_order(app, order["id"])).status == "partially_refunded"
    assert await _wallet(app, buyer) == {"available": 81, "held": 0, "debt": 0}
    me = (await client.get("/v1/me", headers=buyer.headers)).json()
    assert (me["total_spent"], me["lifetime_credits"]) == ({"INR": 66_667}, 81)
    second = await _refund(client, admin, order["id"], clawback="available")  # all that is left
    assert second.status_code == 201, second.text
    assert (second.json()["amount"], second.json()["credits"]) == (66_667, 81)
    assert (await stored_order(app, order["id"])).status == "refunded"
    assert await _wallet(app, buyer) == {"available": 0, "held": 0, "debt": 0}
    assert sum(r["amount"] for r in _fake_refunds(fake, order["payment_id"])) == 100_000
    again = await _refund(client, admin, order["id"], amount=100, clawback="none")
    assert_error(again, 409, "conflict", "order_already_refunded", "order_id")
    listed = await client.get("/v1/refunds", params={"order": order["id"]}, headers=admin.headers)
    assert [r["id"] for r in listed.json()["data"]] == [second.json()["id"], first.json()["id"]]
    one = await client.get(f"/v1/refunds/{first.json()['id']}", headers=admin.headers)
    assert one.status_code == 200 and one.json() == first.json()


async def test_concurrent_refunds_never_exceed_the_payment(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    answers = await asyncio.gather(
        *(_refund(client, admin, order["id"], amount=30_000, clawback="available") for _ in range(5))
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201, 201, 201, 400, 400], [a.text for a in answers]
    for answer in answers:
        if answer.status_code == 400:
            assert_error(answer, 400, "invalid_request_error", "refund_exceeds_payment", "amount")
    assert sum(r["amount"] for r in _fake_refunds(fake, order["payment_id"])) == 90_000
    # 36 credits each: floor(120 x 90000 / 100000) = 108 taken in all
    assert await _wallet(app, buyer) == {"available": 12, "held": 0, "debt": 0}
    assert await _refund_rows(app) == 3


def test_credits_due_rounds_down_over_the_refunds_taken_together() -> None:
    due = refunds_service.credits_due
    assert due(granted=120, paid=100_000, refunded_before=0, credits_before=0, amount=33_333) == 39
    assert due(granted=120, paid=100_000, refunded_before=33_333, credits_before=39, amount=33_333) == 40
    assert due(granted=120, paid=100_000, refunded_before=66_666, credits_before=79, amount=33_334) == 41
    assert due(granted=3, paid=1000, refunded_before=0, credits_before=0, amount=1) == 0
    assert due(granted=0, paid=1000, refunded_before=0, credits_before=0, amount=1000) == 0
    # an earlier refund that failed is not counted: never below zero, never above what is left
    assert due(granted=100, paid=1000, refunded_before=5, credits_before=1, amount=1) == 0
    assert due(granted=100, paid=1000, refunded_before=0, credits_before=0, amount=1000) == 100


# ---------------------------------------------------------------- refused, and nothing changes


async def test_a_refund_above_what_was_paid_is_refused_and_changes_nothing(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    too_much = await _refund(client, admin, order["id"], amount=100_001, clawback="negative")
    error = assert_error(too_much, 400, "invalid_request_error", "refund_exceeds_payment", "amount")
    assert "100000" in error["message"]
    assert await _refund_rows(app) == 0
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    assert fake.calls("POST", "/v1/payments/") == []
    part = await _refund(client, admin, order["id"], amount=60_000, clawback="none")
    assert part.status_code == 201
    over = await _refund(client, admin, order["id"], amount=40_001, clawback="none")
    assert_error(over, 400, "invalid_request_error", "refund_exceeds_payment", "amount")
    for bad in ({"amount": 0, "clawback": "none"}, {"amount": 5.5, "clawback": "none"}, {"clawback": "all"}):
        answer = await client.post(f"/v1/orders/{order['id']}/refunds", json=bad, headers=admin.headers)
        assert answer.status_code == 400, (bad, answer.text)
    assert await _refund_rows(app) == 1
    assert len(_fake_refunds(fake, order["payment_id"])) == 1


async def test_an_unpaid_order_and_a_missing_one_are_refused(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    pending = await create_order(client, buyer, plan=await make_plan(app))
    answer = await _refund(client, admin, pending["id"], clawback="none")
    assert_error(answer, 409, "conflict", "order_not_refundable", "order_id")
    missing = await _refund(client, admin, "ord_00000000000000000000000000", clawback="none")
    assert_error(missing, 404, "not_found", "resource_missing", "order_id")
    assert await _refund_rows(app) == 0


async def test_a_refund_is_refused_while_a_chargeback_is_open(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    async with db_of(app).transaction() as session:  # what a chargeback webhook does to the order
        await session.execute(
            update(PaymentOrder).where(PaymentOrder.id == order["id"]).values(status="disputed")
        )
    answer = await _refund(client, admin, order["id"], clawback="available")
    assert_error(answer, 409, "conflict", "order_disputed", "order_id")
    assert await _refund_rows(app) == 0
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    assert fake.calls("POST", "/v1/payments/") == []


async def test_only_admins_refund_and_read_refunds(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    server = await make_api_key(app, admin, scopes=["orders:write", "balance:read"], server=True)
    for headers in (buyer.headers, server.headers):
        answer = await client.post(
            f"/v1/orders/{order['id']}/refunds", json={"clawback": "none"}, headers=headers
        )
        assert_error(answer, 403, "permission_error", "admin_required")
        listed = await client.get("/v1/refunds", headers=headers)
        assert_error(listed, 403, "permission_error", "admin_required")
    anonymous = await client.post(f"/v1/orders/{order['id']}/refunds", json={"clawback": "none"})
    assert anonymous.status_code == 401
    assert await _refund_rows(app) == 0
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert fake.calls("POST", "/v1/payments/") == []
    made = await _refund(client, admin, order["id"], clawback="none")
    assert made.status_code == 201
    seen = await client.get(f"/v1/refunds/{made.json()['id']}", headers=buyer.headers)
    assert_error(seen, 403, "permission_error", "admin_required")


# ---------------------------------------------------------------- the gateway fails, the job sends again


async def test_a_gateway_error_is_retried_by_the_job_and_refunds_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    fake.fail_next(503, {"error": {"code": "SERVER_ERROR", "description": "The server is down"}})
    answer = await _refund(client, admin, order["id"], clawback="available")
    assert answer.status_code == 201, answer.text
    refund = answer.json()
    assert refund["status"] == "created" and refund["last_error"]
    assert refund["send_attempts"] == 1
    assert await _wallet(app, buyer) == {"available": 0, "held": 120, "debt": 0}  # held meanwhile
    assert _fake_refunds(fake, order["payment_id"]) == []
    assert await _run_refund_job(app) == 0  # not due yet: the backoff
    # next time the gateway makes the refund but its answer is lost on the way
    fake.lose_next_answer(502)
    await _make_due(app)
    assert await _run_refund_job(app) == 0
    assert len(_fake_refunds(fake, order["payment_id"])) == 1
    async with db_of(app).transaction(write=False) as session:
        stuck = await refunds_service.get_refund(session, refund["id"])
        assert (stuck.status, stuck.send_attempts) == ("created", 2)
    await _make_due(app)
    assert await _run_refund_job(app) == 1
    settled = (await client.get(f"/v1/refunds/{refund['id']}", headers=admin.headers)).json()
    assert (settled["status"], settled["credits_taken"], settled["last_error"]) == ("processed", 120, None)
    # three sends with one idempotency key, one refund at the gateway, credits taken once
    sends = fake.calls("POST", f"/v1/payments/{order['payment_id']}/refund")
    assert [s.header("x-refund-idempotency") for s in sends] == [refund["id"]] * 3
    assert len(_fake_refunds(fake, order["payment_id"])) == 1
    assert await _wallet(app, buyer) == {"available": 0, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "refunded"
    await _make_due(app)
    assert await _run_refund_job(app) == 0  # nothing left to send


async def test_a_refund_the_gateway_refuses_fails_and_releases_the_credits(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    # Razorpay refuses refunds under ₹1
    answer = await _refund(client, admin, order["id"], amount=99, clawback="negative")
    assert answer.status_code == 201, answer.text
    assert answer.json()["status"] == "failed" and answer.json()["failure_reason"]
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    # a failed refund does not count against what may still be refunded
    full = await _refund(client, admin, order["id"], clawback="none")
    assert (full.status_code, full.json()["amount"]) == (201, 100_000)


# ---------------------------------------------------------------- settled by the refund webhooks


async def test_a_pending_refund_is_settled_by_its_webhook(
    slow: None, app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    answer = await _refund(client, admin, order["id"], amount=50_000, clawback="available")
    assert answer.status_code == 201, answer.text
    refund = answer.json()
    assert (refund["status"], refund["credits_held"]) == ("pending", 60)
    assert await _wallet(app, buyer) == {"available": 60, "held": 60, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    (made,) = _fake_refunds(fake, order["payment_id"])
    signed = _refund_webhook(fake, "refund.processed", made, "processed")
    received = await send_webhook(client, signed)
    assert received.status_code == 200 and received.json()["processed"] is True
    settled = (await client.get(f"/v1/refunds/{refund['id']}", headers=admin.headers)).json()
    assert (settled["status"], settled["credits_taken"]) == ("processed", 60)
    assert await _wallet(app, buyer) == {"available": 60, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "partially_refunded"
    # the same webhook again, and a late refund.failed, change nothing
    again = await send_webhook(client, signed)
    assert again.json()["duplicate"] is True
    await send_webhook(client, _refund_webhook(fake, "refund.failed", made, "failed"))
    assert await _wallet(app, buyer) == {"available": 60, "held": 0, "debt": 0}
    final = (await client.get(f"/v1/refunds/{refund['id']}", headers=admin.headers)).json()
    assert final["status"] == "processed"


async def test_a_refund_failed_by_webhook_releases_the_held_credits(
    slow: None, app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    answer = await _refund(client, admin, order["id"], clawback="negative")
    refund = answer.json()
    assert (refund["status"], refund["credits_held"]) == ("pending", 120)
    assert await _wallet(app, buyer) == {"available": 0, "held": 120, "debt": 0}
    (made,) = _fake_refunds(fake, order["payment_id"])
    received = await send_webhook(client, _refund_webhook(fake, "refund.failed", made, "failed"))
    assert received.status_code == 200 and received.json()["processed"] is True
    failed = (await client.get(f"/v1/refunds/{refund['id']}", headers=admin.headers)).json()
    assert (failed["status"], failed["credits_taken"]) == ("failed", 0)
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    # a late refund.processed for a failed refund takes nothing
    await send_webhook(client, _refund_webhook(fake, "refund.processed", made, "processed"))
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}


async def test_a_refund_webhook_for_a_refund_not_made_here_is_noted(
    slow: None, app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer = await make_customer(app)
    order = await _paid_order(app, client, fake, buyer)
    foreign = {
        "id": "rfnd_Dashboard000001",
        "entity": "refund",
        "amount": 100_000,
        "currency": "INR",
        "payment_id": order["payment_id"],
        "notes": [],
        "status": "processed",
        "created_at": 0,
    }
    received = await send_webhook(client, _refund_webhook(fake, "refund.processed", foreign, "processed"))
    assert received.status_code == 200 and received.json()["processed"] is True
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    assert (await stored_order(app, order["id"])).status == "fulfilled"


# ---------------------------------------------------------------- a second payment goes back by itself


async def test_a_second_captured_payment_is_refunded_automatically_once(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    order = await _paid_order(app, client, fake, buyer)
    gateway_order_id = str(order["attempts"][-1]["gateway_order_id"])
    second = fake.pay(gateway_order_id)
    for _ in range(2):  # the callback and the webhook both report it
        answer = await verify(client, buyer, order["id"], callback(gateway_order_id, second["id"]))
        assert answer.status_code == 200, answer.text
    listed = (
        await client.get("/v1/refunds", params={"kind": "duplicate_payment"}, headers=admin.headers)
    ).json()
    (refund,) = listed["data"]
    assert (refund["payment_id"], refund["amount"], refund["clawback"]) == (second["id"], 100_000, "none")
    assert refund["status"] == "created"
    assert await _run_refund_job(app) == 1
    assert [r["amount"] for r in _fake_refunds(fake, second["id"])] == [100_000]
    assert _fake_refunds(fake, order["payment_id"]) == []
    settled = (await client.get(f"/v1/refunds/{refund['id']}", headers=admin.headers)).json()
    assert (settled["status"], settled["credits_taken"]) == ("processed", 0)
    stored = await stored_order(app, order["id"])
    assert stored.status == "fulfilled" and (stored.flag_reason or "").startswith("duplicate_payment")
    assert await _wallet(app, buyer) == {"available": 120, "held": 0, "debt": 0}
    # the first payment is still the order's to refund in full
    full = await _refund(client, admin, order["id"], clawback="available")
    assert (full.json()["amount"], full.json()["status"]) == (100_000, "processed")


# ---------------------------------------------------------------- the sandbox


async def test_a_sandbox_refund_is_processed_and_its_webhook_changes_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer, admin = await make_customer(app), await _admin(app)
    plan = await make_plan(app, bonus_credits=20)
    order = await payments_service.place_order(
        db_of(app),
        buyer_id=buyer.id,
        purchase=payments_service.Purchase(currency="INR", plan_code=plan, gateway="sandbox"),
        gateways=app.state.gateways,
        settings=app.state.settings,
        client_ip=None,
        user_agent=None,
    )
    async with db_of(app).transaction(write=False) as session:
        attempt = (await payments_service.attempts_of(session, order.id))[-1]
    gateway = app.state.gateways["sandbox"]
    card = sandbox.read_card("4111 1111 1111 1111", "12/40", "123", "Buyer", today=date.today())
    settled = await sandbox.pay(
        db_of(app), gateway.config, attempt.id, method="card", outcome="captured", card=card
    )
    paid = await verify(client, buyer, order.id, dict(httpx.URL(settled.redirect_url).params))
    assert paid.json()["status"] == "fulfilled"
    answer = await _refund(client, admin, order.id, amount=25_000, clawback="available")
    assert answer.status_code == 201, answer.text
    assert (answer.json()["status"], answer.json()["credits_taken"]) == ("processed", 30)
    # the sandbox's refund.processed webhook arrives later, and changes nothing
    async with db_of(app).transaction(write=False) as session:
        bodies = list(
            await session.scalars(
                select(SandboxWebhook.body).where(SandboxWebhook.event == "refund.processed")
            )
        )
    assert len(bodies) == 1
    raw = bodies[0].encode()
    headers = {
        "Content-Type": "application/json",
        "X-Razorpay-Signature": gateway.config.webhook_signature(raw),
        "x-razorpay-event-id": "evt_refund_test_0001",
    }
    received = await client.post("/v1/webhooks/sandbox", content=raw, headers=headers)
    assert received.status_code == 200 and received.json()["processed"] is True
    assert await _wallet(app, buyer) == {"available": 90, "held": 0, "debt": 0}
    assert (await stored_order(app, order.id)).status == "partially_refunded"
    refund = (await client.get(f"/v1/refunds/{answer.json()['id']}", headers=admin.headers)).json()
    assert (refund["status"], refund["credits_taken"]) == ("processed", 30)
