"""What the checkout page, guest and reconciliation tests share: an app with the sandbox first, then Razorpay
and Stripe pointed at their fake servers (the official SDKs over real HTTP); the buyer's browser side of the
sandbox's hosted checkout; signed links followed through the ASGI app. No tests here."""

from __future__ import annotations

import html
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.auth import service as auth_service
from prepaid.db import Database
from prepaid.notify.models import OutboxMessage
from tests.fakes import razorpay as fake_razorpay
from tests.fakes import stripe as fake_stripe
from tests.fakes.razorpay import FakeRazorpay
from tests.fakes.stripe import FakeStripe

PAYS, DECLINED = "4111 1111 1111 1111", "4000 0000 0000 0002"
PRICES = {"INR": 100_000, "USD": 1_000}  # 100 credits for ₹1,000 or $10


@pytest.fixture
def settings_overrides(
    razorpay_api: tuple[FakeRazorpay, str], stripe_api: tuple[FakeStripe, str]
) -> dict[str, Any]:
    return {
        "gateways": "sandbox,razorpay,stripe",
        "razorpay_key_id": fake_razorpay.KEY_ID,
        "razorpay_key_secret": fake_razorpay.KEY_SECRET,
        "razorpay_webhook_secret": fake_razorpay.WEBHOOK_SECRET,
        "razorpay_api_base": razorpay_api[1],
        "stripe_secret_key": fake_stripe.SECRET_KEY,
        "stripe_publishable_key": fake_stripe.PUBLISHABLE_KEY,
        "stripe_webhook_secret": fake_stripe.WEBHOOK_SECRET,
        "stripe_api_base": stripe_api[1],
        "gateway_timeout": 5,
        "guest_checkout": True,
        "reconcile_after": 0,
    }


def local(url: str) -> str:
    """A link this server made (``http://testserver/...``), as a path the ASGI client can ask for."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://testserver", url
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def pay_on_sandbox(client: httpx.AsyncClient, checkout_page: str, number: str = PAYS) -> str:
    """Open the sandbox's hosted checkout at ``checkout_page`` and pay with a test card: where the sandbox sends
    the browser back (the return URL with the callback's fields)."""
    page = await client.get(local(checkout_page))
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None
    form = {
        "csrf_token": html.unescape(match.group(1)),
        "method": "card",
        "card_number": number,
        "card_expiry": "12/39",
        "card_cvc": "123",
        "card_name": "Asha Rao",
    }
    paid = await client.post(local(checkout_page), data=form)
    assert paid.status_code == 303, paid.text
    return str(paid.headers["location"])


async def external_customer(app: Any, *, email: str | None = None) -> tuple[str, str]:
    """A bot's customer (no password), named by the app's external id: ``(user id, external id)``."""
    external_id = f"whatsapp:+91{secrets.randbelow(10**10):010d}"
    db: Database = app.state.db
    async with db.transaction() as session:
        user = await auth_service.create_user(session, email=email, password=None, external_id=external_id)
    return user.id, external_id


async def emails_to(app: Any, address: str) -> list[OutboxMessage]:
    db: Database = app.state.db
    async with db.transaction(write=False) as session:
        rows = await session.scalars(
            select(OutboxMessage).where(OutboxMessage.recipient == address).order_by(OutboxMessage.id)
        )
        return list(rows)


async def count_rows(app: Any, model: Any, *where: Any) -> int:
    db: Database = app.state.db
    async with db.transaction(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)
