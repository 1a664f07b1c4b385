"""The sandbox's webhook job on both engines: deliveries POSTed over real HTTP to a real server the test starts
(standing in for ``/v1/webhooks/sandbox``), signed as Razorpay signs, retried with backoff after a failure,
sent twice and out of order under ``PREPAID_SANDBOX_CHAOS``, and never sent twice by two runners at once."""

from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import razorpay
import requests
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from prepaid.db import Database, open_database, utcnow
from prepaid.payments.gateways import EventType, build_gateways
from prepaid.payments.gateways.sandbox import SandboxConfig, SandboxGateway, deliver_webhooks
from prepaid.payments.gateways.sandbox_models import SandboxWebhook
from prepaid.settings import Settings
from tests.fakes.server import FakeApi, Recorded, RunningServer


class Receiver(FakeApi):
    """This server's webhook route, as far as the sandbox can tell: records each POST, answers 200."""

    def routes(self) -> list[Route]:
        async def receive(_request: Request, _recorded: Recorded) -> Response:
            return Response(b'{"received":true}', media_type="application/json")

        return [Route("/v1/webhooks/sandbox", self.wrap(receive), methods=["POST"])]

    def app(self) -> Starlette:
        return Starlette(routes=self.routes())

    def events(self) -> list[str]:
        return [json.loads(recorded.body)["event"] for recorded in self.calls("POST", "/v1/webhooks/sandbox")]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    fake = Receiver()
    server = RunningServer(fake.app()).start()
    yield fake, server.url
    server.stop()


@pytest.fixture
def settings_overrides(receiver: tuple[Receiver, str], request: pytest.FixtureRequest) -> dict[str, Any]:
    # PREPAID_BASE_URL is where the sandbox sends its webhooks: here, the receiver
    callspec = getattr(request.node, "callspec", None)
    chaos = bool(callspec.params.get("chaos", False)) if callspec is not None else False
    return {"base_url": receiver[1], "sandbox_chaos": chaos}


@pytest.fixture
def gateway(app: Any) -> SandboxGateway:
    built = build_gateways(app.state.settings, database=app.state.db)["sandbox"]
    assert isinstance(built, SandboxGateway)
    return built


async def paid_order(
    gateway: SandboxGateway, client: httpx.AsyncClient, number: str = "4111111111111111"
) -> str:
    reference = f"att_hook{secrets.token_hex(8)}"
    checkout = await gateway.create_payment(
        reference=reference, amount=49_900, currency="INR", description="x"
    )
    page = await client.get(f"/sandbox/checkout/{reference}")
    token = html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    data = {
        "csrf_token": token,
        "method": "card",
        "card_number": number,
        "card_expiry": "12/39",
        "card_cvc": "123",
        "card_name": "Asha Rao",
    }
    response = await client.post(f"/sandbox/checkout/{reference}", data=data)
    assert response.status_code == 303
    return checkout.gateway_order_id


async def deliveries(db: Database) -> list[SandboxWebhook]:
    async with db.transaction(write=False) as session:
        return list(await session.scalars(select(SandboxWebhook).order_by(SandboxWebhook.seq)))


async def test_the_job_delivers_signed_webhooks_in_order_over_http(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    receiver: tuple[Receiver, str],
) -> None:
    fake, _url = receiver
    order_id = await paid_order(gateway, client)
    assert await deliver_webhooks(db, settings) == 2
    assert fake.events() == ["payment.captured", "order.paid"]

    config = SandboxConfig.from_settings(settings)
    utility = razorpay.Client(session=requests.Session(), auth=(config.key_id, config.key_secret)).utility
    for recorded in fake.calls("POST", "/v1/webhooks/sandbox"):
        signature = recorded.header("x-razorpay-signature") or ""
        assert recorded.header("content-type") == "application/json"
        # Razorpay's own check, with the sandbox webhook secret
        assert utility.verify_webhook_signature(recorded.body.decode(), signature, config.webhook_secret)
        event = gateway.parse_webhook(recorded.headers, recorded.body)
        assert event.gateway == "sandbox" and event.type is EventType.PAYMENT_CAPTURED
        assert event.event_id == recorded.header("x-razorpay-event-id")
        assert event.gateway_order_id == order_id and event.amount == 49_900
    rows = await deliveries(db)
    assert all(
        row.status == "delivered" and row.attempts == 1 and row.last_status_code == 200 for row in rows
    )
    # nothing is sent twice
    assert await deliver_webhooks(db, settings, now=utcnow() + timedelta(days=1)) == 0
    assert len(fake.calls("POST", "/")) == 2


async def test_a_failed_delivery_is_retried_with_backoff_until_a_2xx(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    receiver: tuple[Receiver, str],
) -> None:
    fake, _url = receiver
    await paid_order(gateway, client, "4000000000000002")  # declined: one payment.failed
    fake.fail_next(500, {"error": "down"})
    assert await deliver_webhooks(db, settings) == 1
    (row,) = await deliveries(db)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 1, 500)
    first_retry = row.next_attempt_at
    assert first_retry > utcnow()

    assert await deliver_webhooks(db, settings) == 0  # not due yet
    fake.fail_next(404, {"error": "no route"})
    assert await deliver_webhooks(db, settings, now=first_retry) == 1
    (row,) = await deliveries(db)
    assert (row.status, row.attempts, row.last_status_code) == ("pending", 2, 404)
    assert row.next_attempt_at - first_retry >= timedelta(seconds=4)  # the wait doubles

    assert await deliver_webhooks(db, settings, now=row.next_attempt_at) == 1
    (row,) = await deliveries(db)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 3, 200)
    bodies = {recorded.body for recorded in fake.calls("POST", "/v1/webhooks/sandbox")}
    assert len(bodies) == 1  # the same event each time
    assert fake.events() == ["payment.failed"] * 3


async def test_an_unreachable_receiver_is_retried_and_a_day_later_given_up(
    gateway: SandboxGateway, client: httpx.AsyncClient, db: Database, settings: Settings
) -> None:
    await paid_order(gateway, client, "4000000000000002")
    async with db.transaction() as session:
        (row,) = list(await session.scalars(select(SandboxWebhook)))
        row.url = "http://127.0.0.1:9/v1/webhooks/sandbox"  # the discard port: connection refused
    assert await deliver_webhooks(db, settings) == 1
    (row,) = await deliveries(db)
    assert row.status == "pending" and row.last_status_code is None and row.last_error
    async with db.transaction() as session:
        stored = await session.get(SandboxWebhook, row.id)
        assert stored is not None
        stored.created_at = utcnow() - timedelta(hours=25)
    assert await deliver_webhooks(db, settings, now=utcnow() + timedelta(hours=1)) == 1
    (row,) = await deliveries(db)
    assert row.status == "abandoned" and row.attempts == 2


@pytest.mark.parametrize("chaos", [True])  # read by settings_overrides: PREPAID_SANDBOX_CHAOS=1
async def test_chaos_sends_some_twice_and_out_of_order(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    receiver: tuple[Receiver, str],
    chaos: bool,
) -> None:
    fake, _url = receiver
    assert settings.sandbox_chaos is chaos
    order_id = await paid_order(gateway, client)
    assert await deliver_webhooks(db, settings) == 3
    assert fake.events() == ["order.paid", "payment.captured", "payment.captured"]
    ids = [recorded.header("x-razorpay-event-id") for recorded in fake.calls("POST", "/v1/webhooks/sandbox")]
    assert ids[1] == ids[2] != ids[0]
    for recorded in fake.calls("POST", "/v1/webhooks/sandbox"):
        assert gateway.parse_webhook(recorded.headers, recorded.body).gateway_order_id == order_id


async def test_two_runners_at_once_send_each_delivery_once(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    receiver: tuple[Receiver, str],
) -> None:
    fake, _url = receiver
    for _ in range(4):
        await paid_order(gateway, client)
    other = open_database(settings.database_url)  # a second process's connection pool on the same database
    try:
        sent = await asyncio.gather(deliver_webhooks(db, settings), deliver_webhooks(other, settings))
    finally:
        await other.dispose()
    assert sum(sent) == 8
    ids = [recorded.header("x-razorpay-event-id") for recorded in fake.calls("POST", "/v1/webhooks/sandbox")]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert all(row.status == "delivered" for row in await deliveries(db))
