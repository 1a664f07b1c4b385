"""What the dispute tests share: an app with Razorpay and Stripe pointed at their fake servers (the official
SDKs over real HTTP) beside the sandbox, a buyer's paid order, a wallet's full state, and gateway dispute
webhooks shaped and signed as the gateways document them. No tests here."""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.audit.models import AuditLogEntry
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Transaction
from prepaid.payments.models import PaymentDispute
from tests.factories import TestUser, make_customer
from tests.fakes import razorpay as fake_razorpay
from tests.fakes import stripe as fake_stripe
from tests.fakes.razorpay import FakeRazorpay
from tests.fakes.stripe import FakeStripe
from tests.payments.test_orders_support import (
    captured_webhooks,
    create_order,
    db_of,
    make_plan,
    razorpay_order_id,
    send_webhook,
)


@pytest.fixture
def settings_overrides(
    razorpay_api: tuple[FakeRazorpay, str], stripe_api: tuple[FakeStripe, str]
) -> dict[str, Any]:
    return {
        "gateways": "razorpay,stripe,sandbox",
        "razorpay_key_id": fake_razorpay.KEY_ID,
        "razorpay_key_secret": fake_razorpay.KEY_SECRET,
        "razorpay_webhook_secret": fake_razorpay.WEBHOOK_SECRET,
        "razorpay_api_base": razorpay_api[1],
        "stripe_secret_key": fake_stripe.SECRET_KEY,
        "stripe_publishable_key": fake_stripe.PUBLISHABLE_KEY,
        "stripe_webhook_secret": fake_stripe.WEBHOOK_SECRET,
        "stripe_api_base": stripe_api[1],
        "gateway_timeout": 5,
    }


async def wallet_state(app: Any, user: TestUser) -> dict[str, int]:
    """The buyer's default wallet as the ledger keeps it: available, held, debt."""
    async with db_of(app).transaction(write=False) as session:
        wallet = await ledger_service.default_wallet(session, user_id=user.id)
        return {"available": wallet.balance, "held": wallet.held, "debt": wallet.debt}


async def paid_order(
    app: Any, client: httpx.AsyncClient, fake: FakeRazorpay, buyer: TestUser, *, webhook: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Razorpay order of 100 credits + 10 bonus for INR 1,000, paid at the fake (captured); with
    ``webhook`` its ``payment.captured`` webhook is delivered (the order is fulfilled). (order, payment)."""
    order = await create_order(client, buyer, plan=await make_plan(app, bonus_credits=10))
    payment = fake.pay(razorpay_order_id(order))
    if webhook:
        captured, _paid = captured_webhooks(fake, payment)
        response = await send_webhook(client, captured)
        assert response.status_code == 200 and response.json()["processed"], response.text
    return order, payment


async def dispute_of(
    client: httpx.AsyncClient, user: TestUser, order_id: str, category: str = "not_credited"
) -> dict[str, Any]:
    response = await client.post(
        "/v1/disputes",
        json={"order": order_id, "category": category, "message": "I paid and have no credits."},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    dispute: dict[str, Any] = response.json()
    return dispute


async def resolve(client: httpx.AsyncClient, admin: TestUser, dispute_id: str, **body: Any) -> httpx.Response:
    body.setdefault("note", "Checked with the gateway.")
    return await client.post(f"/v1/disputes/{dispute_id}/resolve", json=body, headers=admin.headers)


def razorpay_dispute_webhook(
    event: str,
    payment: dict[str, Any],
    *,
    dispute_id: str,
    amount: int | None = None,
    status: str = "open",
    deducted: int = 0,
) -> tuple[dict[str, str], bytes]:
    """A Razorpay ``payment.dispute.*`` webhook (the payment and dispute entities, as Razorpay's samples),
    signed with the webhook secret and a fresh event id."""
    dispute = {
        "id": dispute_id,
        "entity": "dispute",
        "payment_id": payment["id"],
        "amount": payment["amount"] if amount is None else amount,
        "currency": payment["currency"],
        "amount_deducted": deducted,
        "reason_code": "chargeback",
        "respond_by": 1_700_000_000,
        "status": status,
        "phase": "chargeback",
        "created_at": 1_690_000_000,
    }
    return fake_razorpay.signed(fake_razorpay.webhook(event, payment=payment, dispute=dispute))


def new_dispute_id() -> str:
    return f"disp_{secrets.token_hex(7)}"


async def chargebacks_of(app: Any, order_id: str) -> list[PaymentDispute]:
    async with db_of(app).transaction(write=False) as session:
        rows = await session.scalars(
            select(PaymentDispute).where(
                PaymentDispute.order_id == order_id, PaymentDispute.kind == "chargeback"
            )
        )
        return list(rows)


async def dispute_transactions(app: Any, dispute_id: str) -> list[str]:
    """The kinds of the ledger transactions that refer to the dispute or its hold, oldest first."""
    async with db_of(app).transaction(write=False) as session:
        dispute = await session.get(PaymentDispute, dispute_id)
        assert dispute is not None
        refs = [("dispute", dispute_id)] + ([("hold", dispute.hold_id)] if dispute.hold_id else [])
        kinds: list[str] = []
        for ref_type, ref_id in refs:
            rows = await session.scalars(
                select(Transaction.kind)
                .where(Transaction.reference_type == ref_type, Transaction.reference_id == ref_id)
                .order_by(Transaction.id)
            )
            kinds.extend(rows)
        return sorted(kinds)


async def audit_entries(app: Any, dispute_id: str, action: str) -> int:
    async with db_of(app).transaction(write=False) as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(AuditLogEntry)
                .where(AuditLogEntry.object_id == dispute_id, AuditLogEntry.action == action)
            )
            or 0
        )


async def buyer_and_admin(app: Any) -> tuple[TestUser, TestUser]:
    return await make_customer(app), await make_customer(app, roles=["user", "admin"])
