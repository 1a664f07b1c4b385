"""What the order, fulfilment and webhook tests share: an app with the Razorpay adapter pointed at the fake
Razorpay server (the official SDK over real HTTP) beside the built-in sandbox, catalog rows made through the
catalog service, and the buyer's side of a Razorpay checkout (pay at the fake, sign the callback, send the
webhook as Razorpay does). No tests here."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.audit import service as audit_service
from prepaid.catalog import service as catalog_service
from prepaid.db import Database
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Lot, Transaction
from prepaid.payments.models import PaymentGatewayEvent, PaymentOrder
from tests.factories import TestUser
from tests.fakes import razorpay as fake_razorpay
from tests.fakes.razorpay import FakeRazorpay


@pytest.fixture
def settings_overrides(razorpay_api: tuple[FakeRazorpay, str]) -> dict[str, Any]:
    _, url = razorpay_api
    return {
        "gateways": "razorpay,sandbox",
        "razorpay_key_id": fake_razorpay.KEY_ID,
        "razorpay_key_secret": fake_razorpay.KEY_SECRET,
        "razorpay_webhook_secret": fake_razorpay.WEBHOOK_SECRET,
        "razorpay_api_base": url,
        "gateway_timeout": 5,
    }


@pytest.fixture
def fake(razorpay_api: tuple[FakeRazorpay, str]) -> FakeRazorpay:
    return razorpay_api[0]


def db_of(app: Any) -> Database:
    database: Database = app.state.db
    return database


async def make_plan(
    app: Any,
    *,
    credits: int = 100,
    bonus_credits: int = 0,
    prices: dict[str, int] | None = None,
) -> str:
    """A plan (by default 100 credits for ₹1,000); its code."""
    actor = audit_service.Actor(user_id=None)
    async with db_of(app).transaction() as session:
        plan = await catalog_service.create_plan(
            session,
            actor=actor,
            code=f"plan-{secrets.token_hex(4)}",
            name="Test plan",
            credits=credits,
            bonus_credits=bonus_credits,
            prices=prices or {"INR": 100_000},
        )
    return plan.code


async def make_coupon(app: Any, **values: Any) -> str:
    actor = audit_service.Actor(user_id=None)
    async with db_of(app).transaction() as session:
        coupon = await catalog_service.create_coupon(
            session, actor=actor, code=f"TEST-{secrets.token_hex(4)}".upper(), **values
        )
    return coupon.code


async def wallet_of(app: Any, user: TestUser) -> dict[str, int]:
    """The buyer's default wallet: balance and its paid and promotional parts."""
    async with db_of(app).transaction(write=False) as session:
        wallet = await ledger_service.default_wallet(session, user_id=user.id)
        parts = (await ledger_service.lot_parts(session, wallet_ids=[wallet.id]))[wallet.id]
        return {"balance": wallet.balance + wallet.held, **{k: int(v) for k, v in dict(parts).items()}}


async def order_grants(app: Any, order_id: str) -> int:
    """How many ledger transactions refer to the order (one per lot granted: credits, then bonus)."""
    async with db_of(app).transaction(write=False) as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(Transaction)
                .where(Transaction.reference_type == "order", Transaction.reference_id == order_id)
            )
            or 0
        )


async def lots_of(app: Any, order_id: str) -> list[tuple[str, int]]:
    async with db_of(app).transaction(write=False) as session:
        rows = await session.execute(
            select(Lot.source, Lot.amount)
            .join(Transaction, Transaction.id == Lot.transaction_id)
            .where(Transaction.reference_id == order_id)
            .order_by(Lot.source)
        )
        return [(source, int(amount)) for source, amount in rows]


async def stored_events(app: Any) -> int:
    async with db_of(app).transaction(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(PaymentGatewayEvent)) or 0)


async def stored_order(app: Any, order_id: str) -> PaymentOrder:
    async with db_of(app).transaction(write=False) as session:
        order = await session.get(PaymentOrder, order_id)
        assert order is not None
        return order


async def create_order(client: httpx.AsyncClient, user: TestUser, **body: Any) -> dict[str, Any]:
    body.setdefault("currency", "INR")
    body.setdefault("gateway", "razorpay")
    response = await client.post("/v1/orders", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


def razorpay_order_id(order: dict[str, Any]) -> str:
    checkout = order["checkout"]
    assert checkout is not None and checkout["gateway"] == "razorpay", order
    return str(checkout["client"]["order_id"])


def callback(
    gateway_order_id: str, payment_id: str, *, secret: str = fake_razorpay.KEY_SECRET
) -> dict[str, str]:
    """The fields Razorpay Checkout hands the client after a payment, signed as Razorpay documents."""
    return {
        "razorpay_payment_id": payment_id,
        "razorpay_order_id": gateway_order_id,
        "razorpay_signature": fake_razorpay.payment_signature(gateway_order_id, payment_id, secret),
    }


async def verify(
    client: httpx.AsyncClient, user: TestUser, order_id: str, fields: dict[str, str]
) -> httpx.Response:
    return await client.post(f"/v1/orders/{order_id}/verify", json=fields, headers=user.headers)


def captured_webhooks(fake: FakeRazorpay, payment: dict[str, Any]) -> list[tuple[dict[str, str], bytes]]:
    """Razorpay's two webhooks for a captured payment (``payment.captured`` and ``order.paid``), signed."""
    with fake.lock:
        order = dict(fake.orders[payment["order_id"]])
    return [
        fake_razorpay.signed(fake_razorpay.webhook("payment.captured", payment=payment)),
        fake_razorpay.signed(fake_razorpay.webhook("order.paid", payment=payment, order=order)),
    ]


async def send_webhook(
    client: httpx.AsyncClient, signed: tuple[dict[str, str], bytes], gateway: str = "razorpay"
) -> httpx.Response:
    headers, raw = signed
    return await client.post(f"/v1/webhooks/{gateway}", content=raw, headers=headers)
