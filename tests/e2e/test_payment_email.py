"""The payment emails, sent by a real ``prepaid serve`` to a real SMTP server (aiosmtpd): a buyer pays on the
sandbox's hosted checkout over HTTP, the server's runner delivers the webhooks and then the email, which says
what was paid (with its currency) and how many credits came; a declined card is told too, and the buyer sees
both in the in-app list."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import func, select

from prepaid.db import open_database
from prepaid.notify.models import OutboxMessage
from tests.e2e.conftest import (
    ServerFactory,
    ServerProcess,
    free_port,
    poll,
    register,
    run_prepaid,
    unique_email,
)
from tests.e2e.test_password_reset_email import Inbox
from tests.e2e.test_payments_sandbox import _login, _pay, _wait_for
from tests.e2e.test_sandbox_serve import wait_for_deliveries

EMAIL_TIMEOUT = 30.0


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


def _text(message: EmailMessage, kind: str = "plain") -> str:
    part = message.get_body(preferencelist=(kind,))
    assert part is not None, message.as_string()
    content: str = part.get_content()
    return content


def _about(inbox: Inbox, address: str, words: str) -> list[EmailMessage] | None:
    found = [message for message in inbox.to(address) if words in str(message["Subject"])]
    return found or None


def test_the_buyer_gets_the_payment_emails_with_the_amount_and_the_credits(
    servers: ServerFactory, smtp: tuple[Inbox, int]
) -> None:
    _inbox, port = smtp
    pay_and_read_the_emails(servers.serve(PREPAID_SMTP_URL=f"smtp://127.0.0.1:{port}"), smtp[0])


@pytest.mark.postgres
def test_two_workers_on_postgresql_send_one_success_email(
    servers: ServerFactory, smtp: tuple[Inbox, int], empty_postgres_url: str
) -> None:
    _inbox, port = smtp
    server = servers.serve(
        database_url=empty_postgres_url, workers=2, migrate=False, PREPAID_SMTP_URL=f"smtp://127.0.0.1:{port}"
    )
    pay_and_read_the_emails(server, smtp[0])


def pay_and_read_the_emails(server: ServerProcess, inbox: Inbox) -> None:
    admin_email, admin_password = unique_email("admin"), "admin-" + secrets.token_urlsafe(12)
    made = run_prepaid(
        "create-admin", "--email", admin_email, "--password", admin_password, env=server.env, cwd=server.cwd
    )
    assert made.returncode == 0, made.output
    buyer_email, buyer_password = unique_email("buyer"), "buyer-" + secrets.token_urlsafe(12)
    with server.client() as http:
        admin = _login(http, admin_email, admin_password)
        code = f"pro-{secrets.token_hex(4)}"
        plan = {
            "code": code,
            "name": "Pro",
            "credits": 12_000,
            "bonus_credits": 500,
            "prices": {"INR": 1_234_550},
        }
        assert http.post("/v1/plans", json=plan, headers=admin).status_code == 201
        register(http, email=buyer_email, password=buyer_password, name="Asha")
        buyer = _login(http, buyer_email, buyer_password)

        order = http.post("/v1/orders", json={"plan": code, "currency": "INR"}, headers=buyer)
        assert order.status_code == 201, order.text
        first = order.json()
        declined = _pay(server, first["checkout"]["redirect_url"], "4000 0000 0000 0002")
        assert declined["error[reason]"] == "payment_declined"
        _wait_for(http, buyer, first["id"], "failed")
        failed = poll(
            lambda: _about(inbox, buyer_email, "did not go through"), timeout=EMAIL_TIMEOUT, what="the email"
        )
        assert len(failed) == 1
        assert "₹12,345.50" in failed[0]["Subject"]
        assert first["id"] in _text(failed[0])

        retried = http.post(f"/v1/orders/{first['id']}/retry", headers=buyer)
        assert retried.status_code == 200, retried.text
        callback = _pay(server, retried.json()["checkout"]["redirect_url"], "4111 1111 1111 1111")
        # the webhooks and the buyer's own verify both reach the server; the buyer is told once
        verified = http.post(f"/v1/orders/{first['id']}/verify", json=callback, headers=buyer)
        assert verified.status_code == 200, verified.text
        _wait_for(http, buyer, first["id"], "fulfilled")
        messages = poll(
            lambda: _about(inbox, buyer_email, "Payment received"), timeout=EMAIL_TIMEOUT, what="email"
        )

        # every webhook (payment.failed; payment.captured and order.paid) reached the server
        sandbox_orders = [
            attempt["gateway_order_id"]
            for attempt in http.get(f"/v1/orders/{first['id']}", headers=buyer).json()["attempts"]
        ]
        rows = wait_for_deliveries(server.env["PREPAID_DATABASE_URL"], sandbox_orders, 3)
        assert all(row.last_status_code == 200 for row in rows)

        # the in-app list shows both, newest first
        listed = http.get("/v1/notifications", headers=buyer)
        assert listed.status_code == 200, listed.text
        assert [item["kind"] for item in listed.json()["data"]] == ["payment_succeeded", "payment_failed"]

    message = messages[0]
    assert message["Subject"] == "Payment received: ₹12,345.50 for 12,000 credits"
    text = _text(message)
    assert "Hello Asha," in text
    assert "We received your payment of ₹12,345.50 for order " + first["id"] in text
    assert "12,000 credits were added to your wallet, plus 500 bonus credits." in text
    assert f"{server.base_url}/account" in text
    html = _text(message, "html")
    assert "<strong>₹12,345.50</strong>" in html and "12,000 credits" in html
    assert f'href="{server.base_url}/account"' in html
    # after every webhook and the verify call: one success email, and the outbox has nothing left to send
    poll(
        lambda: _outbox_settled(server, buyer_email) or None,
        timeout=EMAIL_TIMEOUT,
        what="the outbox to empty",
    )
    assert len(_about(inbox, buyer_email, "Payment received") or []) == 1
    assert len(_about(inbox, buyer_email, "did not go through") or []) == 1


def _outbox_settled(server: ServerProcess, address: str) -> bool:
    return asyncio.run(_pending_messages(server.env["PREPAID_DATABASE_URL"], address)) == 0


async def _pending_messages(database_url: str, address: str) -> int:
    db = open_database(database_url)
    try:
        async with db.transaction(write=False) as session:
            return int(
                await session.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(
                        OutboxMessage.recipient == address, OutboxMessage.status.in_(("pending", "sending"))
                    )
                )
                or 0
            )
    finally:
        await db.dispose()
