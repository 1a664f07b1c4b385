"""``balance.updated`` wherever money moves, on both engines: movements made outside the API's ledger routes (a
refund's clawback, the lot-expiry and hold-expiry jobs, a paid order's grant, a metered session's charge) push
the wallet's figures after them to its owner's stream, because ``ledger.service`` records every movement and
``notify.realtime`` announces it after commit; one event per wallet per transaction; a rolled-back movement
pushes nothing.

Events are read from this process's hub (``app.state.realtime_hub``), which on PostgreSQL receives them back
through ``LISTEN``/``NOTIFY`` like every server process does. "Nothing was pushed" is proven without sleeping:
a later movement's event must be the next one the subscriber receives.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from prepaid.db import Database, utcnow
from prepaid.ledger import service as ledger_service
from prepaid.notify import realtime
from prepaid.payments import service as payments_service
from prepaid.payments.gateways import sandbox
from tests.factories import TestUser, make_customer
from tests.payments.test_orders_support import make_plan, verify


class Listener:
    """One user's subscription to this process's hub."""

    def __init__(self, hub: realtime.Hub, user_id: str) -> None:
        self.hub = hub
        self.subscriber = hub.subscribe(user_id)

    async def next(self) -> dict[str, Any]:
        event: dict[str, Any] = await asyncio.wait_for(self.subscriber.queue.get(), timeout=10)
        return event

    async def balance(self) -> dict[str, Any]:
        event = await self.next()
        assert event["type"] == "balance.updated", event
        data: dict[str, Any] = event["data"]
        return data

    def close(self) -> None:
        self.hub.unsubscribe(self.subscriber)


@pytest.fixture
async def buyer(app: Any) -> TestUser:
    return await make_customer(app)


@pytest.fixture
async def hear(app: Any, buyer: TestUser) -> AsyncIterator[Listener]:
    listener = Listener(app.state.realtime_hub, buyer.id)
    yield listener
    listener.close()


def db_of(app: Any) -> Database:
    database: Database = app.state.db
    return database


async def _wallet_id(app: Any, user: TestUser) -> str:
    async with db_of(app).transaction(write=False) as session:
        return (await ledger_service.default_wallet(session, user_id=user.id)).id


async def _figures(app: Any, wallet_id: str) -> dict[str, Any]:
    """The wallet as ``balance.updated`` shows it, read from the database."""
    async with db_of(app).transaction(write=False) as session:
        wallet = await ledger_service.get_wallet(session, wallet_id)
        await session.refresh(wallet)
        return {
            "wallet_id": wallet.id,
            "asset": wallet.asset,
            "balance": wallet.total,
            "held": wallet.held,
            "available": wallet.available,
            "debt": wallet.debt,
        }


async def _grant(app: Any, wallet_id: str, amount: int, **fields: Any) -> None:
    async with db_of(app).transaction() as session:
        await ledger_service.grant(
            session, wallet_id=wallet_id, amount=amount, idempotency_key=f"t:{secrets.token_hex(6)}", **fields
        )


async def test_a_paid_order_and_its_refunds_clawback_push_the_wallet_to_its_owner(
    app: Any, client: httpx.AsyncClient, buyer: TestUser, hear: Listener
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    wallet_id = await _wallet_id(app, buyer)
    plan = await make_plan(app, bonus_credits=20)  # 120 credits for ₹1,000
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
    card = sandbox.read_card("4111 1111 1111 1111", "12/40", "123", "Buyer", today=date.today())
    settled = await sandbox.pay(
        db_of(app),
        app.state.gateways["sandbox"].config,
        attempt.id,
        method="card",
        outcome="captured",
        card=card,
    )
    paid = await verify(client, buyer, order.id, dict(httpx.URL(settled.redirect_url).params))
    assert paid.json()["status"] == "fulfilled", paid.text
    assert (await hear.next())["type"] == "order.paid"
    assert await hear.balance() == {**await _figures(app, wallet_id), "available": 120, "balance": 120}

    # A quarter refunded with clawback: the credits are held, then taken when the gateway settles; each step is
    # announced with the wallet's figures after it, and the last one is the wallet as it ends.
    answer = await client.post(
        f"/v1/orders/{order.id}/refunds",
        json={"amount": 25_000, "clawback": "available"},
        headers=admin.headers,
    )
    assert answer.status_code == 201, answer.text
    assert (answer.json()["status"], answer.json()["credits_taken"]) == ("processed", 30)
    held = await hear.balance()
    assert (held["available"], held["held"]) == (90, 30)
    taken = await hear.balance()
    assert taken == await _figures(app, wallet_id)
    assert (taken["available"], taken["held"], taken["balance"], taken["debt"]) == (90, 0, 90, 0)
    assert hear.subscriber.queue.empty()


async def test_the_expiry_jobs_push_the_wallets_they_change(
    app: Any, buyer: TestUser, hear: Listener
) -> None:
    wallet_id = await _wallet_id(app, buyer)
    await _grant(app, wallet_id, 50, expires_at=utcnow() + timedelta(minutes=5))
    await _grant(app, wallet_id, 30)
    assert (await hear.balance())["available"] == 50
    assert (await hear.balance())["available"] == 80
    async with db_of(app).transaction() as session:
        await ledger_service.hold(
            session,
            wallet_id=wallet_id,
            amount=20,
            expires_at=utcnow() + timedelta(minutes=1),
            idempotency_key=f"t:{secrets.token_hex(6)}",
        )
    assert ((await hear.balance())["available"], (await _figures(app, wallet_id))["held"]) == (60, 20)

    later = utcnow() + timedelta(minutes=10)
    async with db_of(app).transaction() as session:
        assert await ledger_service.expire_due_holds(session, now=later) == 1
    released = await hear.balance()
    assert released == await _figures(app, wallet_id)
    assert (released["available"], released["held"]) == (80, 0)

    async with db_of(app).transaction() as session:
        assert await ledger_service.sweep_expired_lots(session, now=later) == 1
    swept = await hear.balance()
    assert swept == await _figures(app, wallet_id)
    assert (swept["available"], swept["balance"]) == (30, 30)
    assert hear.subscriber.queue.empty()


async def test_one_event_per_wallet_per_transaction_and_none_for_a_rolled_back_movement(
    app: Any, buyer: TestUser, hear: Listener
) -> None:
    wallet_id = await _wallet_id(app, buyer)
    async with db_of(app).transaction() as session:  # three movements, one commit: the last figures only
        for amount in (5, 6, 7):
            await ledger_service.grant(
                session, wallet_id=wallet_id, amount=amount, idempotency_key=f"t:{secrets.token_hex(6)}"
            )
        savepoint = await session.begin_nested()  # a savepoint that moved credits and rolled back
        await ledger_service.spend(
            session, wallet_id=wallet_id, amount=4, idempotency_key=f"t:{secrets.token_hex(6)}"
        )
        await savepoint.rollback()
    assert (await hear.balance())["available"] == 18

    class Refused(Exception):
        pass

    with pytest.raises(Refused):
        async with db_of(app).transaction() as session:
            await ledger_service.spend(
                session, wallet_id=wallet_id, amount=3, idempotency_key=f"t:{secrets.token_hex(6)}"
            )
            raise Refused
    await _grant(app, wallet_id, 2)
    assert (await hear.balance())["available"] == 20  # the next event: nothing came of the rolled-back spend
    assert hear.subscriber.queue.empty()
