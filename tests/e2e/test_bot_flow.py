"""The bot flow end to end on a real ``prepaid serve``, with ``prepaid.client.Prepaid`` and the bot's server key:
a new phone number gets 3 free credits (``PREPAID_SIGNUP_CREDITS=3``); each image costs one; at zero the
deduction is refused with ``insufficient_credits`` and charges nothing; the bot orders credits for that phone
number and sends its ``checkout_url``, which is paid on the sandbox's hosted page over plain HTTP without any
login (a card form followed with httpx); the sandbox's signed webhook lands and fulfils the order; the same
deduction then succeeds; a model call is held at its worst case and charged its real tokens (released
when it fails). On SQLite, and on PostgreSQL with two workers."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from prepaid.client import InsufficientCredits, Prepaid
from tests.e2e.conftest import ServerFactory, ServerProcess, form_fields, run_prepaid, unique_email
from tests.e2e.test_payments_sandbox import _login

PAID_WITHIN = 30.0


def open_bot(server: ServerProcess) -> tuple[str, str, str]:
    """The operator's setup: an admin, an image meter costing 1, a plan, and the bot's server key (a database
    may be shared by several tests: the codes are unique)."""
    email, password = unique_email("admin"), "admin-" + secrets.token_urlsafe(12)
    made = run_prepaid(
        "create-admin", "--email", email, "--password", password, env=server.env, cwd=server.cwd
    )
    assert made.returncode == 0, made.output
    with server.client() as http:
        admin = _login(http, email, password)
        image = f"image_{secrets.token_hex(4)}"
        meter = {"code": image, "name": "Image", "kind": "unit", "unit": "image", "price": 1, "per": 1}
        created = http.post("/v1/meters", json=meter, headers=admin)
        assert created.status_code == 201, created.text
        chat: dict[str, Any] = {"code": f"chat_{image}", "name": "Chat", "kind": "model"}
        chat |= {"input_price": 1_000_000, "output_price": 1_000_000}  # 1 credit a token
        created = http.post("/v1/meters", json=chat, headers=admin)
        assert created.status_code == 201, created.text
        plan = f"bot-{secrets.token_hex(4)}"
        body = {"code": plan, "name": "10 images", "credits": 10, "prices": {"INR": 10_000}}
        created = http.post("/v1/plans", json=body, headers=admin)
        assert created.status_code == 201, created.text
        scopes = ["customers:write", "usage:write", "balance:read", "orders:write"]
        key = http.post("/v1/api_keys", json={"name": "bot", "scopes": scopes, "server": True}, headers=admin)
        assert key.status_code == 201, key.text
    return str(key.json()["secret"]), plan, image


def pay_by_link(checkout_url: str, card: str) -> None:
    """What the person does with the link the bot sent: open it, fill in the card, pay. No credentials."""
    with httpx.Client(timeout=10.0) as browser:
        opened = browser.get(checkout_url)
        assert opened.status_code == 303, opened.text
        page_url = opened.headers["location"]
        page = browser.get(page_url)
        assert page.status_code == 200, page.text
        path = urlsplit(page_url).path
        fields = form_fields(page.text, path)
        fields |= {"card_number": card, "card_expiry": "12/39", "card_cvc": "123", "card_name": "Ravi Kumar"}
        paid = browser.post(page_url, data=fields)
        assert paid.status_code == 303, paid.text
        assert "error" not in paid.headers["location"]


def wait_fulfilled(bot: Prepaid, order_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + PAID_WITHIN
    while True:
        order = bot.get_order(order_id)
        if order["status"] == "fulfilled":
            return order
        if time.monotonic() > deadline:
            pytest.fail(f"order {order_id} still {order['status']} after {PAID_WITHIN:.0f} s")
        time.sleep(0.2)


def bot_flow(server: ServerProcess) -> None:
    key, plan, image = open_bot(server)
    number = f"+9198{secrets.randbelow(10**8):08d}"
    with Prepaid(key, base_url=server.base_url, timeout=10.0) as bot:
        customer = bot.upsert_customer(number, phone=number)
        assert (customer["provisioned"], customer["balance"]["available"]) == (True, 3)
        for n in range(3):
            used = bot.record_usage(id=f"{number}-img-{n}", customer=number, meter=image, quantity=1)
            assert (used["cost"], used["balance_after"]) == (1, 2 - n)
        with pytest.raises(InsufficientCredits) as refused:
            bot.record_usage(id=f"{number}-img-3", customer=number, meter=image, quantity=1)
        assert (refused.value.code, refused.value.available) == ("insufficient_credits", 0)
        assert bot.balance(number)["balance"] == 0

        order = bot.create_order(customer=number, plan=plan, currency="INR")
        assert order["user_id"] == customer["id"] and order["checkout_url"]
        pay_by_link(order["checkout_url"], "4111 1111 1111 1111")
        assert wait_fulfilled(bot, order["id"])["credits"] == 10
        assert bot.balance(number)["available"] == 10

        used = bot.record_usage(id=f"{number}-img-3", customer=number, meter=image, quantity=1)
        assert (used["cost"], used["balance_after"], used["replayed"]) == (1, 9, False)
        assert bot.balance(number)["available"] == 9

        # The bot also answers with a model: the worst case is held, the real tokens charged.
        with bot.ai_hold(customer=number, meter=f"chat_{image}", input_tokens=2, max_output_tokens=3) as hold:
            assert hold.estimate == 5 and bot.balance(number)["held"] == 5
            hold.set_usage(input_tokens=2, output_tokens=1)
        assert hold.capture is not None and (hold.capture["charged"], hold.capture["released"]) == (3, 2)
        with (
            pytest.raises(TimeoutError),
            bot.ai_hold(
                customer=number, meter=f"chat_{image}", input_tokens=2, max_output_tokens=3
            ) as failed,
        ):
            raise TimeoutError("the model did not answer")
        assert failed.released
        assert (bot.balance(number)["available"], bot.balance(number)["held"]) == (6, 0)


def test_the_bot_flow_on_sqlite(servers: ServerFactory) -> None:
    bot_flow(servers.serve(PREPAID_SIGNUP_CREDITS="3"))


@pytest.mark.postgres
def test_the_bot_flow_on_postgresql_with_two_workers(servers: ServerFactory, empty_postgres_url: str) -> None:
    bot_flow(
        servers.serve(database_url=empty_postgres_url, workers=2, migrate=False, PREPAID_SIGNUP_CREDITS="3")
    )
