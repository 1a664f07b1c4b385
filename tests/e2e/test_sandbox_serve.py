"""The sandbox gateway in a real ``prepaid serve``: a buyer pays on the hosted checkout over real HTTP, the
browser is sent back with a signed callback, and the server's own runner delivers the signed webhooks to the
server's own ``/v1/webhooks/sandbox``, which accepts them (it answers 400 to a bad signature). On SQLite (one
process) and on PostgreSQL with 2 workers, whose two runners must not send a delivery twice.

The sandbox order is made the way the orders code makes it, through the gateway (``create_payment``), from this
test process on the server's database: the sandbox is a service of its own, reached through its tables.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from sqlalchemy import select

from prepaid.db import open_database
from prepaid.payments.gateways.sandbox import SandboxGateway
from prepaid.payments.gateways.sandbox_models import SandboxWebhook
from prepaid.settings import Settings
from tests.e2e.conftest import ServerFactory, ServerProcess, form_fields

DELIVERY_TIMEOUT = 30.0


def server_settings(server: ServerProcess) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=server.env["PREPAID_DATABASE_URL"],
        secret_key=server.env["PREPAID_SECRET_KEY"],
        base_url=server.base_url,
        sandbox_chaos=server.env.get("PREPAID_SANDBOX_CHAOS") == "1",
    )


async def _deliveries(database_url: str, order_ids: list[str]) -> list[SandboxWebhook]:
    db = open_database(database_url)
    try:
        async with db.transaction(write=False) as session:
            query = select(SandboxWebhook).where(SandboxWebhook.order_id.in_(order_ids))
            return list(await session.scalars(query.order_by(SandboxWebhook.seq)))
    finally:
        await db.dispose()


def wait_for_deliveries(database_url: str, order_ids: list[str], count: int) -> list[SandboxWebhook]:
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    while True:
        rows = asyncio.run(_deliveries(database_url, order_ids))
        if len(rows) == count and all(row.status == "delivered" for row in rows):
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"webhooks not delivered in {DELIVERY_TIMEOUT:.0f} s: {[vars(row) for row in rows]}")
        time.sleep(0.2)


async def _open(settings: Settings, reference: str, amount: int) -> tuple[str, str | None]:
    gateway = SandboxGateway.from_settings(settings)
    try:
        opened = await gateway.create_payment(
            reference=reference, amount=amount, currency="INR", description="e2e"
        )
        return opened.gateway_order_id, opened.redirect_url
    finally:
        await gateway.aclose()


def checkout(server: ServerProcess, reference: str, amount: int) -> str:
    order_id, redirect_url = asyncio.run(_open(server_settings(server), reference, amount))
    assert redirect_url == f"{server.base_url}/sandbox/checkout/{reference}"
    return order_id


def pay(browser: httpx.Client, server: ServerProcess, reference: str, number: str) -> dict[str, str]:
    page = browser.get(f"/sandbox/checkout/{reference}")
    assert page.status_code == 200, page.text
    fields = form_fields(page.text, f"/sandbox/checkout/{reference}")
    fields |= {"card_number": number, "card_expiry": "12/39", "card_cvc": "123", "card_name": "Asha Rao"}
    answer = browser.post(f"/sandbox/checkout/{reference}", data=fields)
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == (
        f"{server.base_url}/orders/{reference}/return"
    )
    return dict(parse_qsl(location.query))


def run_checkouts(server: ServerProcess) -> tuple[SandboxGateway, list[str], dict[str, Any]]:
    settings = server_settings(server)
    gateway = SandboxGateway.from_settings(settings)
    paid = checkout(server, f"att_e2e_paid_{server.port}", 49_900)
    declined = checkout(server, f"att_e2e_declined_{server.port}", 1_000)
    with server.client() as browser:
        signed = pay(browser, server, f"att_e2e_paid_{server.port}", "4111 1111 1111 1111")
        failed = pay(browser, server, f"att_e2e_declined_{server.port}", "4000 0000 0000 0002")
    verified = gateway.verify_callback(gateway_order_id=paid, fields=signed)
    assert verified.payment_id == signed["razorpay_payment_id"]
    assert failed["error[reason]"] == "payment_declined"
    return gateway, [paid, declined], signed


def test_sandbox_checkout_and_webhooks_through_a_real_server_on_sqlite(servers: ServerFactory) -> None:
    server = servers.serve()
    _gateway, order_ids, _signed = run_checkouts(server)
    rows = wait_for_deliveries(server.env["PREPAID_DATABASE_URL"], order_ids, 3)
    assert sorted(row.event for row in rows) == ["order.paid", "payment.captured", "payment.failed"]
    assert all(row.last_status_code == 200 and row.attempts == 1 for row in rows)
    assert f"{server.base_url}/v1/webhooks/sandbox" == rows[0].url


def test_chaos_duplicates_are_accepted_by_a_real_server(servers: ServerFactory) -> None:
    server = servers.serve(PREPAID_SANDBOX_CHAOS="1")
    _gateway, order_ids, _signed = run_checkouts(server)
    rows = wait_for_deliveries(server.env["PREPAID_DATABASE_URL"], order_ids, 5)
    paid_rows = [row for row in rows if row.order_id == order_ids[0]]
    assert [row.event for row in paid_rows] == ["order.paid", "payment.captured", "payment.captured"]
    assert all(row.last_status_code == 200 for row in rows)


@pytest.mark.postgres
def test_two_workers_on_postgresql_deliver_each_webhook_once(
    servers: ServerFactory, empty_postgres_url: str
) -> None:
    server = servers.serve(database_url=empty_postgres_url, workers=2, migrate=False)
    _gateway, order_ids, _signed = run_checkouts(server)
    rows = wait_for_deliveries(empty_postgres_url, order_ids, 3)
    assert all(row.last_status_code == 200 and row.attempts == 1 for row in rows)
