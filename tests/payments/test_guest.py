"""Guest checkout on both engines: off by default; an order with only an email, paid through its signed
checkout link; the credits land in a passwordless account claimed through an emailed one-time link; an email
that already has an account gets the credits and a notice, and never a way into that account."""

from __future__ import annotations

import asyncio
import html
import re
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from prepaid.auth import service as auth_service
from prepaid.auth.models import OneTimeToken, User
from prepaid.ledger import service as ledger_service
from prepaid.notify.models import Notification
from prepaid.payments import guest
from prepaid.payments.models import PaymentGuestOrder
from tests.factories import make_user
from tests.helpers import assert_error, login
from tests.payments.test_checkout_pages_support import (
    PRICES,
    count_rows,
    emails_to,
    external_customer,
    local,
    pay_on_sandbox,
    settings_overrides,
)
from tests.payments.test_orders_support import db_of, make_coupon, make_plan, stored_order

__all__ = ["settings_overrides"]  # fixtures

ANSWER_FIELDS = {
    "object",
    "id",
    "status",
    "currency",
    "amount",
    "asset",
    "credits",
    "bonus_credits",
    "gateway",
    "checkout_url",
    "status_url",
    "expires_at",
}


async def _guest_order(app: Any, client: httpx.AsyncClient, email: str, **body: Any) -> dict[str, Any]:
    plan = await make_plan(app, credits=100, bonus_credits=10, prices=PRICES)
    answer = await client.post(
        "/v1/guest_orders",
        json={"email": email, "plan": plan, "currency": "INR", "gateway": "sandbox", **body},
    )
    assert answer.status_code == 201, answer.text
    order: dict[str, Any] = answer.json()
    assert set(order) == ANSWER_FIELDS  # nothing about the account: no user, wallet nor balance
    return order


async def _pay(client: httpx.AsyncClient, order: dict[str, Any]) -> None:
    opened = await client.get(local(order["checkout_url"]))
    assert opened.status_code == 303
    back = await pay_on_sandbox(client, opened.headers["location"])
    assert (await client.get(local(back))).status_code == 303


async def guest_emails(app: Any, address: str) -> list[Any]:
    """The guest checkout's own emails to ``address`` (the refund and dispute notifications send their own)."""
    return [message for message in await emails_to(app, address) if message.template.startswith("guest_")]


async def _account(app: Any, email: str) -> tuple[User, int]:
    async with db_of(app).transaction(write=False) as session:
        user = await auth_service.get_user_by_email(session, email)
        assert user is not None
        wallet = await ledger_service.default_wallet(session, user_id=user.id)
        return user, wallet.balance + wallet.held


@pytest.mark.parametrize("settings_overrides", [{"gateways": "sandbox"}])
async def test_guest_checkout_is_off_by_default(app: Any, client: httpx.AsyncClient) -> None:
    plan = await make_plan(app, prices=PRICES)
    email = f"guest-{secrets.token_hex(4)}@example.com"
    refused = await client.post("/v1/guest_orders", json={"email": email, "plan": plan, "currency": "INR"})
    assert_error(refused, 404, "not_found", "guest_checkout_disabled")
    async with db_of(app).transaction(write=False) as session:
        assert await auth_service.get_user_by_email(session, email) is None
    assert await count_rows(app, PaymentGuestOrder) == 0


async def test_a_new_email_gets_the_credits_in_an_account_it_claims_by_an_emailed_link(
    app: Any, client: httpx.AsyncClient
) -> None:
    email = f"guest-{secrets.token_hex(4)}@example.com"
    order = await _guest_order(app, client, email)
    status_page = await client.get(local(order["status_url"]))
    assert "Waiting for the payment" in status_page.text
    await _pay(client, order)
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    user, balance = await _account(app, email)
    assert (user.password_hash, balance) == (None, 110)

    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 1
    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 0  # once
    [message] = await guest_emails(app, email)
    assert message.template == "guest_claim"
    assert message.payload["credits"] == "110"
    assert "100 + 10 bonus credits" in (await client.get(local(message.payload["status_link"]))).text
    link = message.payload["claim_link"]
    assert link.startswith("http://testserver/guest/claim?token=")

    page = await client.get(local(link))
    assert page.status_code == 200
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert csrf is not None and token is not None
    form = {"csrf_token": html.unescape(csrf.group(1)), "token": html.unescape(token.group(1))}
    assert (await client.post("/guest/claim", data={**form, "csrf_token": "x" * 32})).status_code == 403
    short = await client.post("/guest/claim", data={**form, "password": "short"})
    assert short.status_code == 400
    password = "guest-" + secrets.token_urlsafe(12)
    claimed = await client.post("/guest/claim", data={**form, "password": password})
    assert claimed.status_code == 200, claimed.text
    assert "Account ready" in claimed.text
    signed_in = await login(client, email, password)
    assert signed_in.status_code == 200
    wallets = await client.get(
        "/v1/wallets", headers={"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    )
    assert [wallet["balance"] for wallet in wallets.json()["data"]] == [110]
    again = await client.post("/guest/claim", data={**form, "password": password + "x"})
    assert again.status_code == 400  # one use
    assert (await login(client, email, password)).status_code == 200


async def test_an_email_with_an_account_gets_the_credits_and_a_notice_never_access(
    app: Any, client: httpx.AsyncClient
) -> None:
    owner = await make_user(app)
    async with db_of(app).transaction() as session:
        wallet = await ledger_service.default_wallet(session, user_id=owner.id)
        await ledger_service.grant(
            session,
            wallet_id=wallet.id,
            amount=777,
            idempotency_key=f"test:{secrets.token_hex(4)}",
            source="promotional",
        )
    order = await _guest_order(app, client, owner.email.upper())  # the same address, written otherwise
    await _pay(client, order)
    user, balance = await _account(app, owner.email)
    assert (user.id, balance) == (owner.id, 887)  # the credits land in the account

    page = await client.get(local(order["status_url"]))
    assert "100 + 10 bonus credits" in page.text
    for secret in (owner.email, owner.id, wallet.id):
        assert secret not in page.text  # the order only, not the account
    shown = re.sub(r"<[^>]*>", " ", page.text)  # the page's text, without tags (signed links hold digits)
    for balance_figure in ("887", "777"):
        assert not re.search(rf"(?<![\w.,]){balance_figure}(?![\w.,])", shown), balance_figure
    poll = await client.get(local(order["status_url"]).replace("/status?", "/status.json?"))
    assert not {"user_id", "wallet_id", "balance", "email"} & set(poll.json())

    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 1
    [message] = await guest_emails(app, owner.email)
    assert message.template == "guest_credits"
    assert "claim_link" not in message.payload
    for sent in await emails_to(app, owner.email):  # nor any other email about it
        assert not any(
            "token=" in str(value) or "/guest/claim" in str(value) for value in sent.payload.values()
        )
    assert await count_rows(app, OneTimeToken, OneTimeToken.user_id == owner.id) == 0
    assert (await login(client, owner.email, owner.password)).status_code == 200  # the password still works
    guessed = await client.post(
        "/guest/claim", data={"csrf_token": "c" * 32, "token": "guessed", "password": "p" * 12}
    )
    assert guessed.status_code == 403


async def test_a_passwordless_account_not_made_by_a_guest_order_is_never_offered_a_claim(
    app: Any, client: httpx.AsyncClient
) -> None:
    email = f"bot-{secrets.token_hex(4)}@example.com"
    await external_customer(app, email=email)  # a bot's customer who happens to have this email
    order = await _guest_order(app, client, email)
    await _pay(client, order)
    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 1
    [message] = await guest_emails(app, email)
    assert message.template == "guest_credits"
    user, balance = await _account(app, email)
    assert balance == 110
    assert await count_rows(app, OneTimeToken, OneTimeToken.user_id == user.id) == 0


async def test_guests_take_public_coupons_only_whoever_the_email_belongs_to(
    app: Any, client: httpx.AsyncClient
) -> None:
    owner = await make_user(app)
    assigned = await make_coupon(app, kind="percent_off", percent_bps=5_000, visibility="assigned")
    public = await make_coupon(app, kind="percent_off", percent_bps=1_000)
    plan = await make_plan(app, prices=PRICES)
    for email in (owner.email, f"new-{secrets.token_hex(4)}@example.com"):
        body = {"email": email, "plan": plan, "currency": "INR", "coupon": assigned}
        refused = await client.post("/v1/guest_orders", json=body)
        assert_error(refused, 404, "not_found", "coupon_not_found", "coupon")
    taken = await client.post(
        "/v1/guest_orders", json={"email": owner.email, "plan": plan, "currency": "INR", "coupon": public}
    )
    assert taken.status_code == 201, taken.text
    assert taken.json()["amount"] == 90_000


async def test_two_guest_orders_for_one_new_email_at_once_share_one_account(
    app: Any, client: httpx.AsyncClient
) -> None:
    email = f"twice-{secrets.token_hex(4)}@example.com"
    plan = await make_plan(app, prices=PRICES)
    body = {"email": email, "plan": plan, "currency": "INR", "gateway": "sandbox"}
    answers = await asyncio.gather(*(client.post("/v1/guest_orders", json=body) for _ in range(3)))
    assert [answer.status_code for answer in answers] == [201, 201, 201]
    assert await count_rows(app, User, User.email == email) == 1
    assert await count_rows(app, PaymentGuestOrder, PaymentGuestOrder.email == email) == 3


async def test_a_guest_gets_one_email_per_order_even_for_a_zero_total(
    app: Any, client: httpx.AsyncClient
) -> None:
    free = await make_coupon(app, kind="percent_off", percent_bps=10_000)  # a 100 % public coupon
    email = f"free-{secrets.token_hex(4)}@example.com"
    order = await _guest_order(app, client, email, coupon=free)
    assert (order["status"], order["amount"], order["checkout_url"]) == ("fulfilled", 0, None)
    owner = await make_user(app)
    paid = await _guest_order(app, client, owner.email)
    await _pay(client, paid)
    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 2
    # every email to either address: the guest checkout's one, no payment_succeeded besides it
    assert [m.template for m in await emails_to(app, email)] == ["guest_claim"]
    assert [m.template for m in await emails_to(app, owner.email)] == ["guest_credits"]
    for address in (email, owner.email):  # the buyer is still told in-app
        user, _balance = await _account(app, address)
        async with db_of(app).transaction(write=False) as session:
            kinds = list(
                await session.scalars(select(Notification.kind).where(Notification.user_id == user.id))
            )
        assert kinds == ["payment_succeeded"]


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "gateways": "sandbox,razorpay",
            "razorpay_key_id": "rzp_test_unreachable",
            "razorpay_key_secret": "unreachable",
            "razorpay_webhook_secret": "unreachable",
            "razorpay_api_base": "http://127.0.0.1:9",  # nothing listens: the gateway call fails
            "gateway_timeout": 2,
            "guest_checkout": True,
        }
    ],
)
async def test_a_guest_order_whose_gateway_call_fails_leaves_an_empty_account_claimed_by_the_next_order(
    app: Any, client: httpx.AsyncClient
) -> None:
    email = f"retry-{secrets.token_hex(4)}@example.com"
    plan = await make_plan(app, credits=100, bonus_credits=10, prices=PRICES)
    failed = await client.post(
        "/v1/guest_orders", json={"email": email, "plan": plan, "currency": "INR", "gateway": "razorpay"}
    )
    assert_error(failed, 502, "gateway_error", "gateway_unavailable")
    user, balance = await _account(app, email)
    assert (user.password_hash, balance) == (None, 0)  # kept: no password, nothing in it
    async with db_of(app).transaction(write=False) as session:
        [row] = list(await session.scalars(select(PaymentGuestOrder).where(PaymentGuestOrder.email == email)))
        assert row.new_account is True
        assert (await stored_order(app, row.order_id)).status == "failed"
    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 0  # nothing paid, nothing sent

    order = await _guest_order(app, client, email)  # the buyer tries again, on the sandbox
    await _pay(client, order)
    again, balance = await _account(app, email)
    assert (again.id, balance) == (user.id, 110)
    assert await guest.notify_paid_guests(db_of(app), app.state.settings) == 1
    [message] = await emails_to(app, email)
    assert message.template == "guest_claim"  # the account guest checkout made is still theirs to claim
    assert message.payload["order_id"] == order["id"]
