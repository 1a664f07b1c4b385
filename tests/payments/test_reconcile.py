"""Reconciliation on both engines: the job asks the gateway about attempts still unpaid and settles them through
the orders service (the "paid but no credits" case: no return visit, no webhook), racing safely with the
buyer's return; it waits ``PREPAID_RECONCILE_AFTER`` and backs off. The admin list shows the gateway's orders
beside ours with mismatches named."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select

from prepaid.db import utcnow
from prepaid.payments import reconcile
from prepaid.payments import service as payments_service
from prepaid.payments.models import PaymentReconciliation
from prepaid.settings import Settings
from tests.factories import make_admin, make_customer
from tests.helpers import assert_error
from tests.payments.test_checkout_pages_support import (
    DECLINED,
    PRICES,
    local,
    pay_on_sandbox,
    settings_overrides,
)
from tests.payments.test_orders_support import (
    create_order,
    db_of,
    make_plan,
    order_grants,
    stored_order,
    wallet_of,
)

__all__ = ["settings_overrides"]  # fixtures


async def _paid_at_the_sandbox(
    app: Any, client: httpx.AsyncClient, buyer: Any, number: str = "4111 1111 1111 1111"
) -> tuple[dict[str, Any], str]:
    """An order paid on the sandbox's page whose buyer never came back and whose webhook never came (the
    runner is off in tests): the order and where the sandbox sent the browser."""
    plan = await make_plan(app, credits=100, bonus_credits=10, prices=PRICES)
    order = await create_order(client, buyer, plan=plan, gateway="sandbox")
    back = await pay_on_sandbox(client, order["checkout"]["redirect_url"], number)
    assert (await stored_order(app, order["id"])).status == "pending"
    return order, back


def _run(app: Any, **settings: Any) -> Any:
    current: Settings = app.state.settings
    return reconcile.reconcile_pending(
        db_of(app), app.state.gateways, current.model_copy(update=settings) if settings else current
    )


async def test_a_paid_order_without_return_or_webhook_is_settled_by_the_job(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    order, _back = await _paid_at_the_sandbox(app, client, buyer)

    done = await reconcile.reconcile_job(app.state.gateways)(db_of(app), app.state.settings)
    assert done == 1
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 110
    assert await order_grants(app, order["id"]) == 2
    assert await _run(app) == []  # settled: nothing left to ask about
    async with db_of(app).transaction(write=False) as session:
        check = await session.get(PaymentReconciliation, order["checkout"]["attempt"])
        assert check is not None and (check.checks, check.last_result) == (1, "fulfilled")


async def test_the_job_and_the_buyers_return_race_and_grant_once(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    order, back = await _paid_at_the_sandbox(app, client, buyer)
    results = await asyncio.gather(_run(app), _run(app), client.get(local(back)), _run(app))
    assert results[2].status_code == 303
    assert sum(len(batch) for batch in (results[0], results[1], results[3])) <= 1  # claimed by one only
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert await order_grants(app, order["id"]) == 2
    assert (await wallet_of(app, buyer))["balance"] == 110


async def test_a_declined_payment_fails_the_order_and_a_late_capture_on_an_expired_order_fulfils_it(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    declined, _back = await _paid_at_the_sandbox(app, client, buyer, DECLINED)
    paid_late, _back = await _paid_at_the_sandbox(app, client, buyer)
    async with db_of(app).transaction() as session:  # the order's TTL passed before anyone asked
        expired = await payments_service.expire_due_orders(session, now=utcnow() + timedelta(hours=1))
    assert expired == 2
    assert (await stored_order(app, paid_late["id"])).status == "expired"

    settled = {item.order_id: item for item in await _run(app)}
    assert settled[paid_late["id"]].result == "fulfilled"
    assert settled[paid_late["id"]].before == "expired"
    assert (await stored_order(app, paid_late["id"])).status == "fulfilled"
    # the declined one: the gateway says failed, the order stays expired (forward only) and grants nothing
    assert (await stored_order(app, declined["id"])).status == "expired"
    assert await order_grants(app, declined["id"]) == 0
    assert (await wallet_of(app, buyer))["balance"] == 110


async def test_a_pending_declined_order_is_failed(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    declined, _back = await _paid_at_the_sandbox(app, client, buyer, DECLINED)
    settled = await _run(app)
    assert [(item.order_id, item.result) for item in settled] == [(declined["id"], "failed")]
    stored = await stored_order(app, declined["id"])
    assert stored.status == "failed" and stored.failure_reason


async def test_the_job_waits_and_backs_off(app: Any, client: httpx.AsyncClient) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, prices=PRICES)
    unpaid = await create_order(client, buyer, plan=plan, gateway="sandbox")
    assert await _run(app, reconcile_after=300) == []  # opened just now: not asked yet
    first = await _run(app)
    assert [(item.order_id, item.result) for item in first] == [(unpaid["id"], "pending")]
    assert await _run(app) == []  # asked a moment ago: backing off
    async with db_of(app).transaction(write=False) as session:
        check = await session.get(PaymentReconciliation, unpaid["checkout"]["attempt"])
        assert check is not None and check.checks == 1
        assert check.next_check_at >= utcnow() + timedelta(seconds=50)


# ---------------------------------------------------------------- the admin list


async def test_admins_see_the_gateways_orders_beside_ours_with_mismatches(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app)
    admin = await make_admin(app)
    not_credited, _back = await _paid_at_the_sandbox(app, client, buyer)
    settled, back = await _paid_at_the_sandbox(app, client, buyer)
    assert (await client.get(local(back))).status_code == 303
    plan = await make_plan(app, prices=PRICES)
    unpaid = await create_order(client, buyer, plan=plan, gateway="sandbox")
    stranger = await app.state.gateways["sandbox"].create_payment(
        reference=f"elsewhere{secrets.token_hex(4)}", amount=5_000, currency="INR", description="not ours"
    )

    answer = await client.get("/v1/admin/gateway_orders?gateway=sandbox", headers=admin.headers)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["object"] == "list" and body["has_more"] is False
    rows = {row["gateway_order_id"]: row for row in body["data"]}
    by_order = {row["order_id"]: row for row in body["data"] if row["order_id"]}
    assert by_order[not_credited["id"]]["mismatches"] == ["paid_not_credited"]
    assert by_order[not_credited["id"]]["gateway_status"] == "captured"
    assert by_order[settled["id"]]["mismatches"] == []
    assert by_order[settled["id"]]["order_status"] == "fulfilled"
    assert by_order[unpaid["id"]]["mismatches"] == []
    assert rows[stranger.gateway_order_id]["mismatches"] == ["not_ours"]
    assert rows[stranger.gateway_order_id]["order_id"] is None

    later = (utcnow() + timedelta(hours=1)).isoformat()
    empty = await client.get(f"/v1/admin/gateway_orders?{urlencode({'since': later})}", headers=admin.headers)
    assert_error(empty, 400, "invalid_request_error", "invalid_window", "since")
    assert (await client.get("/v1/admin/gateway_orders", headers=buyer.headers)).status_code == 403
    assert (await client.get("/v1/admin/gateway_orders")).status_code == 401
    unknown = await client.get("/v1/admin/gateway_orders?gateway=paypal", headers=admin.headers)
    assert_error(unknown, 400, "invalid_request_error", "gateway_not_enabled", "gateway")


@pytest.mark.parametrize("limit", [1])
async def test_a_cut_list_says_so_and_does_not_claim_missing_orders(
    app: Any, client: httpx.AsyncClient, limit: int
) -> None:
    buyer = await make_customer(app)
    admin = await make_admin(app)
    plan = await make_plan(app, prices=PRICES)
    for _ in range(2):
        await create_order(client, buyer, plan=plan, gateway="sandbox")
    answer = await client.get(f"/v1/admin/gateway_orders?limit={limit}", headers=admin.headers)
    assert answer.status_code == 200
    assert answer.json()["has_more"] is True
    assert len(answer.json()["data"]) == 1
    assert all("missing_at_gateway" not in row["mismatches"] for row in answer.json()["data"])
    async with db_of(app).transaction(write=False) as session:
        assert list(await session.scalars(select(PaymentReconciliation))) == []  # the list only reads
