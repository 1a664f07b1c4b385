"""``GET /v1/admin/stats`` on both engines, over real orders paid on the sandbox gateway, a real refund, spends,
grants and an expiry made through the services: every figure is asserted exactly. Also the period rules
(default, from after to, at most 366 days) and days in ``PREPAID_REPORT_TZ``."""

from __future__ import annotations

import secrets
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from prepaid.audit import service as audit_service
from prepaid.catalog import service as catalog_service
from prepaid.db import Database, utcnow
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Transaction
from prepaid.payments import service as payments_service
from prepaid.payments.gateways import sandbox
from prepaid.payments.models import PaymentOrder
from tests.factories import TestUser, make_customer

PLAN_PRICES = {"INR": 100_000, "USD": 1_500}


def db_of(app: Any) -> Database:
    database: Database = app.state.db
    return database


async def make_plan(app: Any, *, credits: int = 100, bonus_credits: int = 20) -> str:
    """A plan of ``credits`` + ``bonus_credits`` for ₹1,000 or $15; its code."""
    async with db_of(app).transaction() as session:
        plan = await catalog_service.create_plan(
            session,
            actor=audit_service.Actor(user_id=None),
            code=f"plan-{secrets.token_hex(4)}",
            name="Stats plan",
            credits=credits,
            bonus_credits=bonus_credits,
            prices=PLAN_PRICES,
        )
    return plan.code


async def place_sandbox_order(
    app: Any, buyer: TestUser, plan: str, *, currency: str = "INR", user_agent: str | None = None
) -> PaymentOrder:
    return await payments_service.place_order(
        db_of(app),
        buyer_id=buyer.id,
        purchase=payments_service.Purchase(currency=currency, plan_code=plan, gateway="sandbox"),
        gateways=app.state.gateways,
        settings=app.state.settings,
        client_ip="203.0.113.9",
        user_agent=user_agent,
    )


async def paid_order(
    app: Any,
    client: httpx.AsyncClient,
    buyer: TestUser,
    plan: str,
    *,
    currency: str = "INR",
    user_agent: str | None = None,
) -> str:
    """An order paid with the sandbox's test card and verified as the buyer's browser would: fulfilled."""
    order = await place_sandbox_order(app, buyer, plan, currency=currency, user_agent=user_agent)
    async with db_of(app).transaction(write=False) as session:
        attempt = (await payments_service.attempts_of(session, order.id))[-1]
    card = sandbox.read_card("4111 1111 1111 1111", "12/40", "123", "Buyer", today=date.today())
    settled = await sandbox.pay(
        db_of(app),
        app.state.gateways["sandbox"].config,
        attempt.id,
        method="card",
        outcome="captured",
        card=card,
    )
    answer = await client.post(
        f"/v1/orders/{order.id}/verify",
        json=dict(httpx.URL(settled.redirect_url).params),
        headers=buyer.headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "fulfilled"
    return order.id


async def default_wallet_id(app: Any, user: TestUser) -> str:
    async with db_of(app).transaction(write=False) as session:
        return (await ledger_service.default_wallet(session, user_id=user.id)).id


async def spend(app: Any, user: TestUser, amount: int) -> None:
    wallet_id = await default_wallet_id(app, user)
    async with db_of(app).transaction() as session:
        await ledger_service.spend(
            session, wallet_id=wallet_id, amount=amount, idempotency_key=f"test:{secrets.token_hex(6)}"
        )


async def stats(client: httpx.AsyncClient, admin: TestUser, **params: str) -> httpx.Response:
    return await client.get("/v1/admin/stats", params=params, headers=admin.headers)


def today_row(rows: list[dict[str, Any]], day: str) -> dict[str, Any]:
    found = [row for row in rows if row["day"] == day]
    assert len(found) == 1, rows
    return found[0]


async def test_stats_count_real_orders_refunds_and_ledger_movements_exactly(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"], name="Boss")
    asha = await make_customer(app, name="Asha")
    ravi = await make_customer(app, name="Ravi")
    plan = await make_plan(app)
    asha_order = await paid_order(app, client, asha, plan)
    await paid_order(app, client, ravi, plan)
    await paid_order(app, client, ravi, plan)
    await paid_order(app, client, asha, plan, currency="USD")
    await place_sandbox_order(app, ravi, plan)  # opened, never paid: pending
    refund = await client.post(
        f"/v1/orders/{asha_order}/refunds",
        json={"amount": 25_000, "clawback": "available"},
        headers=admin.headers,
    )
    assert refund.status_code == 201 and refund.json()["status"] == "processed", refund.text
    assert refund.json()["credits_taken"] == 30  # a quarter of 120
    await spend(app, ravi, 30)
    grant = await client.post(
        f"/v1/wallets/{await default_wallet_id(app, ravi)}/grants",
        json={"amount": 7, "source": "promotional", "idempotency_key": "stats-grant"},
        headers=admin.headers,
    )
    assert grant.status_code == 201, grant.text
    async with db_of(app).transaction() as session:
        await ledger_service.grant(
            session,
            wallet_id=await default_wallet_id(app, asha),
            amount=5,
            idempotency_key="stats:expiring",
            expires_at=utcnow() + timedelta(seconds=30),
        )
    async with db_of(app).transaction() as session:
        assert await ledger_service.sweep_expired_lots(session, now=utcnow() + timedelta(minutes=1)) == 1
    for key, amount in (("goodwill", 3), ("correction", -2)):  # credits given count as granted, taken do not
        async with db_of(app).transaction() as session:
            await ledger_service.adjust(
                session,
                wallet_id=await default_wallet_id(app, ravi),
                amount=amount,
                idempotency_key=f"stats:{key}",
                memo=key,
                actor_user_id=admin.id,
            )

    response = await stats(client, admin)
    assert response.status_code == 200, response.text
    body = response.json()
    day = utcnow().date().isoformat()
    assert (body["object"], body["to"], body["timezone"], body["asset"]) == (
        "admin_stats",
        day,
        "UTC",
        "credit",
    )
    assert body["from"] == (utcnow().date() - timedelta(days=29)).isoformat()
    assert len(body["credits"]) == 30 and body["credits"][-1]["day"] == day
    assert body["revenue"] == [
        {
            "day": day,
            "currency": "INR",
            "gross": 300_000,
            "refunded": 25_000,
            "chargebacks": 0,
            "net": 275_000,
        },
        {"day": day, "currency": "USD", "gross": 1_500, "refunded": 0, "chargebacks": 0, "net": 1_500},
    ]
    # sold: 4 purchases of 100; granted: 4 bonuses of 20, the admin's 7, the expiring 5, the goodwill 3 (not
    # the correction's -2); spent 30 (the refund's clawback is not spending); expired 5
    assert today_row(body["credits"], day) == {
        "day": day,
        "sold": 400,
        "granted": 95,
        "spent": 30,
        "expired": 5,
    }
    assert all(
        row == {"day": row["day"], "sold": 0, "granted": 0, "spent": 0, "expired": 0}
        for row in body["credits"][:-1]
    )
    counts = {row["status"]: row["count"] for row in body["orders_by_status"] if row["count"]}
    assert counts == {"fulfilled": 3, "partially_refunded": 1, "pending": 1}
    assert [(row["name"], row["currency"], row["paid"], row["credits"]) for row in body["top_customers"]] == [
        ("Ravi", "INR", 200_000, 240),
        ("Asha", "INR", 75_000, 120),
        ("Asha", "USD", 1_500, 120),
    ]
    assert body["top_customers"][0]["user_id"] == ravi.id and body["top_customers"][0]["email"] == ravi.email

    # a period that ended yesterday holds none of it
    yesterday = (utcnow().date() - timedelta(days=1)).isoformat()
    before = (await stats(client, admin, to=yesterday)).json()
    assert before["revenue"] == [] and before["top_customers"] == []
    assert all(row["count"] == 0 for row in before["orders_by_status"])
    assert sum(row["sold"] + row["granted"] + row["spent"] + row["expired"] for row in before["credits"]) == 0


@pytest.mark.parametrize("settings_overrides", [{"report_tz": "Asia/Kolkata"}])
async def test_days_are_counted_in_the_report_time_zone(app: Any, client: httpx.AsyncClient) -> None:
    """20:00 UTC on 10 January is 01:30 on 11 January in India (+05:30): a half-hour offset, on both engines."""
    admin = await make_customer(app, roles=["user", "admin"])
    buyer = await make_customer(app, name="Late buyer")
    order_id = await paid_order(app, client, buyer, await make_plan(app))
    late = datetime(2026, 1, 10, 20, 0, tzinfo=UTC)
    async with db_of(app).transaction() as session:
        await session.execute(
            update(PaymentOrder).where(PaymentOrder.id == order_id).values(fulfilled_at=late, created_at=late)
        )
        await session.execute(
            update(Transaction).where(Transaction.reference_id == order_id).values(created_at=late)
        )
    body = (await stats(client, admin, **{"from": "2026-01-10", "to": "2026-01-11"})).json()
    assert body["timezone"] == "Asia/Kolkata"
    assert body["revenue"] == [
        {
            "day": "2026-01-11",
            "currency": "INR",
            "gross": 100_000,
            "refunded": 0,
            "chargebacks": 0,
            "net": 100_000,
        }
    ]
    assert [(row["day"], row["sold"], row["granted"]) for row in body["credits"]] == [
        ("2026-01-10", 0, 0),
        ("2026-01-11", 100, 20),
    ]
    just_before = (await stats(client, admin, **{"from": "2026-01-09", "to": "2026-01-10"})).json()
    assert just_before["revenue"] == [] and sum(row["sold"] for row in just_before["credits"]) == 0


async def test_the_period_is_checked(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    backwards = await stats(client, admin, **{"from": "2026-03-02", "to": "2026-03-01"})
    assert backwards.status_code == 400
    assert (backwards.json()["error"]["code"], backwards.json()["error"]["param"]) == (
        "invalid_period",
        "from",
    )
    too_long = await stats(client, admin, **{"from": "2025-01-01", "to": "2026-01-02"})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "invalid_period"
    leap_year = await stats(client, admin, **{"from": "2024-01-01", "to": "2024-12-31"})
    assert leap_year.status_code == 200 and len(leap_year.json()["credits"]) == 366
    one_day = (await stats(client, admin, **{"from": "2026-02-01", "to": "2026-02-01"})).json()
    assert [row["day"] for row in one_day["credits"]] == ["2026-02-01"]
    only_to = (await stats(client, admin, to="2026-02-28")).json()
    assert (only_to["from"], len(only_to["credits"])) == ("2026-01-30", 30)
    not_a_date = await stats(client, admin, to="yesterday")
    assert not_a_date.status_code == 400 and not_a_date.json()["error"]["param"] == "to"
    for odd in (
        "1700000000",
        "2026-02-30",
        "99999-01-01",
        "2026-01-01T00:00:00",
        "",
        "\u0662\u0660\u0662\u0666-01-01",
    ):
        refused = await stats(client, admin, **{"from": odd, "to": "2026-03-01"})
        assert refused.status_code == 400, (odd, refused.text)
        assert refused.json()["error"]["param"] == "from", (odd, refused.text)
    edge = await stats(client, admin, **{"from": "9999-12-31", "to": "9999-12-31"})
    assert edge.status_code == 200 and edge.json()["revenue"] == []


async def test_only_admins_read_the_stats(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    assert (await client.get("/v1/admin/stats")).status_code == 401
    refused = await client.get("/v1/admin/stats", headers=user.headers)
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"


async def test_spent_counts_captures_not_transfers_and_a_reversal_counts_back_on_its_own_day(
    app: Any, client: httpx.AsyncClient
) -> None:
    """A captured hold is spent (its released rest is not); credits moved between a user's own wallets are not;
    a reversal takes back, on the day it is made, what the transaction it reverses counted."""
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app, name="Mover")
    wallet_id = await default_wallet_id(app, user)
    keys = iter(f"stats-reversal:{secrets.token_hex(6)}:{n}" for n in range(20))
    async with db_of(app).transaction() as session:
        await ledger_service.grant(session, wallet_id=wallet_id, amount=100, idempotency_key=next(keys))
        mistaken = await ledger_service.grant(
            session, wallet_id=wallet_id, amount=9, idempotency_key=next(keys)
        )
        agent = await ledger_service.create_wallet(session, user_id=user.id, name="Agent")
    async with db_of(app).transaction() as session:
        await ledger_service.transfer(
            session, from_wallet_id=wallet_id, to_wallet_id=agent.id, amount=40, idempotency_key=next(keys)
        )
        await ledger_service.spend(session, wallet_id=agent.id, amount=10, idempotency_key=next(keys))
        early = await ledger_service.spend(
            session, wallet_id=wallet_id, amount=15, idempotency_key=next(keys)
        )
        same_day = await ledger_service.spend(
            session, wallet_id=wallet_id, amount=4, idempotency_key=next(keys)
        )
        held = await ledger_service.hold(
            session,
            wallet_id=wallet_id,
            amount=20,
            expires_at=utcnow() + timedelta(hours=1),
            idempotency_key=next(keys),
        )
        assert held.hold is not None
        await ledger_service.capture(session, hold_id=held.hold.id, amount=12, idempotency_key=next(keys))
    yesterday = utcnow() - timedelta(days=1)
    async with db_of(app).transaction() as session:  # the 15 were spent yesterday
        await session.execute(
            update(Transaction).where(Transaction.id == early.transaction.id).values(created_at=yesterday)
        )
    async with db_of(app).transaction() as session:
        for reversed_ in (early, same_day, mistaken):
            await ledger_service.reverse(
                session, transaction_id=reversed_.transaction.id, idempotency_key=next(keys)
            )

    body = (await stats(client, admin)).json()
    today, before = utcnow().date().isoformat(), yesterday.date().isoformat()
    # today: spent 10 (agent) + 4 + 12 (captured) - 4 - 15 (reversed); granted 100 + 9 - 9
    assert today_row(body["credits"], today) == {
        "day": today,
        "sold": 0,
        "granted": 100,
        "spent": 7,
        "expired": 0,
    }
    assert today_row(body["credits"], before)["spent"] == 15  # the day it was spent keeps it
    week = (await stats(client, admin, **{"from": before, "to": today})).json()
    assert sum(row["spent"] for row in week["credits"]) == 10 + 12


async def test_a_refund_of_an_older_order_comes_off_its_own_day_and_makes_no_top_customer(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    buyer = await make_customer(app, name="Old buyer")
    order_id = await paid_order(app, client, buyer, await make_plan(app))
    long_ago = utcnow() - timedelta(days=40)
    async with db_of(app).transaction() as session:  # bought 40 days ago, outside the default period
        await session.execute(
            update(PaymentOrder)
            .where(PaymentOrder.id == order_id)
            .values(fulfilled_at=long_ago, created_at=long_ago)
        )
    refund = await client.post(
        f"/v1/orders/{order_id}/refunds",
        json={"amount": 40_000, "clawback": "none"},
        headers=admin.headers,
    )
    assert refund.status_code == 201 and refund.json()["status"] == "processed", refund.text
    body = (await stats(client, admin)).json()
    day = utcnow().date().isoformat()
    assert body["revenue"] == [
        {"day": day, "currency": "INR", "gross": 0, "refunded": 40_000, "chargebacks": 0, "net": -40_000}
    ]
    assert body["top_customers"] == []
