"""Buying credits end to end on a real ``prepaid serve`` with the sandbox gateway, over real HTTP: an admin adds
a plan, a buyer creates an order, pays on the sandbox's hosted checkout, and the server's own runner delivers
the signed webhooks to ``/v1/webhooks/sandbox`` (in chaos mode: reversed, one twice): the credits appear, once.
A declined card fails the order (by webhook) and a retry then pays it. The buyer's verify call with the signed
callback and the webhooks race for the same payment and grant once."""

from __future__ import annotations

import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from tests.e2e.conftest import ServerFactory, ServerProcess, form_fields, register, run_prepaid, unique_email
from tests.e2e.test_sandbox_serve import wait_for_deliveries

TIMEOUT = 30.0


def _login(http: httpx.Client, email: str, password: str) -> dict[str, str]:
    response = http.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _pay(server: ServerProcess, checkout_url: str, number: str) -> dict[str, str]:
    """Pay on the sandbox's hosted page as a browser does; the callback fields it sends the browser back with."""
    path = urlsplit(checkout_url).path
    with server.client() as browser:
        page = browser.get(path)
        assert page.status_code == 200, page.text
        fields = form_fields(page.text, path)
        fields |= {"card_number": number, "card_expiry": "12/39", "card_cvc": "123", "card_name": "Asha Rao"}
        answer = browser.post(path, data=fields)
    assert answer.status_code == 303, answer.text
    return dict(parse_qsl(urlsplit(answer.headers["location"]).query))


def _wait_for(http: httpx.Client, headers: dict[str, str], order_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        order: dict[str, Any] = http.get(f"/v1/orders/{order_id}", headers=headers).json()
        if order["status"] == status:
            return order
        if time.monotonic() > deadline:
            pytest.fail(f"order {order_id} is {order['status']}, not {status}, after {TIMEOUT:.0f} s")
        time.sleep(0.2)


def _balance(http: httpx.Client, headers: dict[str, str]) -> int:
    wallets = http.get("/v1/wallets", headers=headers).json()["data"]
    return int(sum(wallet["balance"] for wallet in wallets))


def test_a_buyer_pays_on_the_sandbox_and_the_webhooks_grant_the_credits_once(servers: ServerFactory) -> None:
    buy_credits_on_the_sandbox(servers.serve(PREPAID_SANDBOX_CHAOS="1"))


@pytest.mark.postgres
def test_two_workers_on_postgresql_grant_once(servers: ServerFactory, empty_postgres_url: str) -> None:
    """Two worker processes: each has a runner delivering webhooks and any of them answers each request."""
    buy_credits_on_the_sandbox(
        servers.serve(database_url=empty_postgres_url, workers=2, migrate=False, PREPAID_SANDBOX_CHAOS="1")
    )


def buy_credits_on_the_sandbox(server: ServerProcess) -> None:
    admin_email, admin_password = unique_email("admin"), "admin-" + secrets.token_urlsafe(12)
    made = run_prepaid(
        "create-admin", "--email", admin_email, "--password", admin_password, env=server.env, cwd=server.cwd
    )
    assert made.returncode == 0, made.output
    buyer_email, buyer_password = unique_email("buyer"), "buyer-" + secrets.token_urlsafe(12)
    with server.client() as http:
        admin = _login(http, admin_email, admin_password)
        code = f"standard-{secrets.token_hex(4)}"
        plan = {"code": code, "name": "Standard", "credits": 500, "bonus_credits": 50}
        created = http.post("/v1/plans", json=plan | {"prices": {"INR": 450_000}}, headers=admin)
        assert created.status_code == 201, created.text
        register(http, email=buyer_email, password=buyer_password)
        buyer = _login(http, buyer_email, buyer_password)

        # paid with the success card; the webhooks alone fulfil it
        order = http.post("/v1/orders", json={"plan": code, "currency": "INR"}, headers=buyer)
        assert order.status_code == 201, order.text
        first = order.json()
        assert (first["gateway"], first["status"], first["amount"]) == ("sandbox", "pending", 450_000)
        callback = _pay(server, first["checkout"]["redirect_url"], "4111 1111 1111 1111")
        fulfilled = _wait_for(http, buyer, first["id"], "fulfilled")
        assert (fulfilled["card_brand"], fulfilled["card_last4"]) == ("Visa", "1111")
        # the buyer's verify arrives after the webhooks: the same answer, nothing more
        verified = http.post(f"/v1/orders/{first['id']}/verify", json=callback, headers=buyer)
        assert verified.status_code == 200 and verified.json()["status"] == "fulfilled"
        assert _balance(http, buyer) == 550

        # declined: the payment.failed webhook fails the order; a retry pays it, verified by the buyer
        order = http.post("/v1/orders", json={"plan": code, "currency": "INR"}, headers=buyer)
        second = order.json()
        declined = _pay(server, second["checkout"]["redirect_url"], "4000 0000 0000 0002")
        assert declined["error[reason]"] == "payment_declined"
        failed = _wait_for(http, buyer, second["id"], "failed")
        assert failed["failure_reason"]
        retried = http.post(f"/v1/orders/{second['id']}/retry", headers=buyer)
        assert retried.status_code == 200, retried.text
        assert (retried.json()["status"], retried.json()["attempt_count"]) == ("pending", 2)
        callback = _pay(server, retried.json()["checkout"]["redirect_url"], "4111 1111 1111 1111")
        verified = http.post(f"/v1/orders/{second['id']}/verify", json=callback, headers=buyer)
        assert verified.status_code == 200, verified.text
        assert verified.json()["status"] == "fulfilled"
        # every webhook (reversed, the first twice: 8 deliveries) reached the server and changed nothing more
        sandbox_orders = [
            attempt["gateway_order_id"]
            for order_id in (first["id"], second["id"])
            for attempt in http.get(f"/v1/orders/{order_id}", headers=buyer).json()["attempts"]
        ]
        rows = wait_for_deliveries(server.env["PREPAID_DATABASE_URL"], sandbox_orders, 8)
        assert all(row.last_status_code == 200 for row in rows)
        assert _balance(http, buyer) == 1100
        me = http.get("/v1/me", headers=buyer).json()
        assert (me["total_spent"], me["lifetime_credits"]) == ({"INR": 900_000}, 1100)
        everyone = http.get("/v1/orders", params={"user": me["id"]}, headers=admin).json()["data"]
        assert {o["id"] for o in everyone} == {first["id"], second["id"]}
