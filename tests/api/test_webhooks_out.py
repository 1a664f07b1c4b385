"""Outgoing webhooks on both engines: admins register endpoints; an event (``realtime.emit``, or a real order
fulfilment) queues one delivery per subscribed endpoint in its own transaction (nothing on rollback); the
runner's job POSTs it, signed, to a real local HTTP receiver that verifies it with ``prepaid.webhook_signature``;
a failing receiver is retried with exponential backoff until it answers 2xx, for 3 days, then the delivery is
failed and an admin can redeliver it. Time is passed to the job (``now``) rather than slept through."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from prepaid.db import Database, utcnow
from prepaid.errors import InvalidRequest
from prepaid.notify import realtime, webhooks_out
from prepaid.notify.models import WebhookDelivery, WebhookEndpoint
from prepaid.payments import service as payments_service
from prepaid.settings import Settings
from prepaid.webhook_signature import SignatureError, verify_signature
from tests.factories import TestUser as Person
from tests.factories import make_admin, make_customer
from tests.helpers import assert_error, audit_log, count
from tests.payments.test_orders_support import create_order, make_plan


class Receiver:
    """A real HTTP server on a free local port that records every POST and answers the next status of
    ``answers`` (200 once they run out)."""

    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = list(answers or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok" if status < 300 else b"receiver error")

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/prepaid"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.requests)


async def make_endpoint(
    client: httpx.AsyncClient, admin: Person, url: str, event_types: list[str]
) -> dict[str, Any]:
    response = await client.post(
        "/v1/webhook_endpoints", json={"url": url, "event_types": event_types}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    endpoint: dict[str, Any] = response.json()
    return endpoint


async def deliveries(client: httpx.AsyncClient, admin: Person, endpoint_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/webhook_endpoints/{endpoint_id}/deliveries", headers=admin.headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def emit_committed(db: Database, user_id: str, type_: str, **data: Any) -> dict[str, Any]:
    async with db.transaction() as session:
        return await realtime.emit(session, user_id=user_id, type=type_, data=data)


async def run_job(app: Any, now: datetime | None = None) -> int:
    return await webhooks_out.deliver_due(app.state.db, app.state.settings, now=now)


async def test_an_admin_registers_an_endpoint_and_sees_its_secret_only_once(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    created = await make_endpoint(
        client, admin, "https://app.example.com/hooks", ["order.paid", "session.ended"]
    )
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 30
    assert created["event_types"] == ["order.paid", "session.ended"]
    listed = await client.get("/v1/webhook_endpoints", headers=admin.headers)
    assert listed.status_code == 200
    [shown] = listed.json()["data"]
    assert shown["id"] == created["id"] and "secret" not in shown
    [entry] = await audit_log(client, admin.headers, action="webhook_endpoint.create")
    assert entry["object_id"] == created["id"] and "secret" not in json.dumps(entry)

    # bad input answers a clear error and stores nothing
    for body, code, param in [
        ({"url": "ftp://app.example.com/x", "event_types": ["order.paid"]}, "invalid_url", "url"),
        ({"url": "http://app.example.com:99999/x", "event_types": ["order.paid"]}, "invalid_url", "url"),
        ({"url": "not a url", "event_types": ["order.paid"]}, "invalid_url", "url"),
        ({"url": "https://user:pw@app.example.com/x", "event_types": ["order.paid"]}, "invalid_url", "url"),
        ({"url": "https://app.example.com/x", "event_types": ["order.refunded"]}, "unknown_event_type", None),
    ]:
        response = await client.post("/v1/webhook_endpoints", json=body, headers=admin.headers)
        error = assert_error(response, 400, "invalid_request_error", code, param or "event_types")
        assert error["message"]
    response = await client.post(
        "/v1/webhook_endpoints", json={"url": "https://a.example", "event_types": []}, headers=admin.headers
    )
    assert response.status_code == 400
    assert await count(app.state.db, WebhookEndpoint) == 1

    # deleted: gone from the list, its secret forgotten, a second delete is not found
    deleted = await client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=admin.headers)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert (await client.get("/v1/webhook_endpoints", headers=admin.headers)).json()["data"] == []
    again = await client.delete(f"/v1/webhook_endpoints/{created['id']}", headers=admin.headers)
    assert_error(again, 404, "not_found", "resource_missing", "endpoint_id")
    async with app.state.db.transaction(write=False) as session:
        stored = await session.get(WebhookEndpoint, created["id"])
        assert stored is not None and stored.secret_sealed is None


def test_production_needs_https() -> None:
    settings = Settings.model_construct(env="production")
    with pytest.raises(InvalidRequest) as refused:
        webhooks_out._check_url("http://app.example.com/hooks", settings)
    assert refused.value.code == "https_required"
    assert webhooks_out._check_url("https://app.example.com/hooks", settings)


async def test_a_paid_order_reaches_a_real_receiver_signed_and_verifiable(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    buyer = await make_customer(app)
    with Receiver() as receiver, Receiver() as other:
        endpoint = await make_endpoint(client, admin, receiver.url, ["order.paid"])
        await make_endpoint(client, admin, other.url, ["session.ended"])  # not subscribed to order.paid
        order = await create_order(
            client, buyer, plan=await make_plan(app, bonus_credits=5), gateway="sandbox"
        )
        facts = payments_service.PaymentFacts(payment_id="pay_sbx_1", amount=order["amount"], currency="INR")
        for _ in range(2):  # the second fulfil finds the order fulfilled: no second event
            async with app.state.db.transaction() as session:
                await payments_service.fulfil(session, order_id=order["id"], payment=facts, now=utcnow())
        [queued] = await deliveries(client, admin, endpoint["id"])
        assert (queued["status"], queued["attempts"], queued["event_type"]) == ("pending", 0, "order.paid")

        assert await run_job(app) == 1
        [(headers, body)] = receiver.received()
        assert other.received() == []
        assert verify_signature(endpoint["secret"], headers["prepaid-signature"], body) > 0
        event = json.loads(body)
        assert event["type"] == "order.paid" and event["id"] == headers["prepaid-event-id"]
        assert event["customer"] == {"id": buyer.id, "external_id": None}
        assert event["data"] | {"order_id": order["id"], "credits": 100, "bonus_credits": 5} == event["data"]
        assert (event["data"]["amount"], event["data"]["currency"]) == (order["amount"], "INR")
        # a tampered body, another secret or a stale signature is refused by the helper
        with pytest.raises(SignatureError):
            verify_signature(endpoint["secret"], headers["prepaid-signature"], body.replace(b"100", b"900"))
        with pytest.raises(SignatureError):
            verify_signature("whsec_other", headers["prepaid-signature"], body)
        with pytest.raises(SignatureError):
            verify_signature(
                endpoint["secret"], headers["prepaid-signature"], body, now=utcnow().timestamp() + 301
            )

        [done] = await deliveries(client, admin, endpoint["id"])
        assert (done["status"], done["attempts"], done["last_status_code"]) == ("succeeded", 1, 200)
        assert done["delivered_at"] is not None and done["body"] == event
        assert await run_job(app) == 0  # nothing more to send
        assert len(receiver.received()) == 1


async def test_a_failing_receiver_is_retried_with_backoff_until_it_succeeds(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    customer = await make_customer(app)
    with Receiver(answers=[500, 503]) as receiver:
        endpoint = await make_endpoint(client, admin, receiver.url, ["session.ended"])
        event = await emit_committed(app.state.db, customer.id, "session.ended", session_id="ses_1", cost=42)
        start = utcnow()
        assert await run_job(app, start) == 0
        [first] = await deliveries(client, admin, endpoint["id"])
        assert (first["status"], first["attempts"], first["last_status_code"]) == ("pending", 1, 500)
        retry_at = datetime.fromisoformat(first["next_attempt_at"])
        assert timedelta(seconds=29) < retry_at - start < timedelta(seconds=32)
        assert await run_job(app, start + timedelta(seconds=10)) == 0  # not due yet: not sent
        assert len(receiver.received()) == 1

        assert await run_job(app, start + timedelta(seconds=31)) == 0  # 503: the wait doubles
        [second] = await deliveries(client, admin, endpoint["id"])
        assert (second["status"], second["attempts"], second["last_status_code"]) == ("pending", 2, 503)
        assert "503" in second["last_error"]
        gap = datetime.fromisoformat(second["next_attempt_at"]) - (start + timedelta(seconds=31))
        assert timedelta(seconds=59) < gap < timedelta(seconds=62)

        assert await run_job(app, start + timedelta(minutes=2)) == 1
        [done] = await deliveries(client, admin, endpoint["id"])
        assert (done["status"], done["attempts"], done["last_status_code"]) == ("succeeded", 3, 200)
        sent = receiver.received()
        assert len(sent) == 3
        assert {body for _headers, body in sent} == {sent[0][1]}  # the same body every time
        assert {headers["prepaid-event-id"] for headers, _body in sent} == {event["id"]}
        for headers, body in sent:
            verify_signature(endpoint["secret"], headers["prepaid-signature"], body)


async def test_after_three_days_of_failures_the_delivery_fails_and_an_admin_redelivers_it(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    customer = await make_customer(app)
    with Receiver(answers=[500] * 100) as receiver:
        endpoint = await make_endpoint(client, admin, receiver.url, ["wallet.low_balance"])
        event = await emit_committed(app.state.db, customer.id, "wallet.low_balance", wallet_id="wal_1")
        start = utcnow()
        now = start
        for _ in range(40):
            await run_job(app, now)
            [row] = await deliveries(client, admin, endpoint["id"])
            if row["status"] != "pending":
                break
            now = datetime.fromisoformat(row["next_attempt_at"])
        assert row["status"] == "failed"
        assert now - start < timedelta(days=3) and now - start > timedelta(days=2)
        assert 10 < row["attempts"] < 30 and row["last_status_code"] == 500
        attempts = len(receiver.received())
        assert attempts == row["attempts"]
        assert await run_job(app, start + timedelta(days=10)) == 0  # failed stays failed
        assert len(receiver.received()) == attempts

        receiver.answers.clear()
        path = f"/v1/webhook_endpoints/{endpoint['id']}/deliveries/{row['id']}/redeliver"
        again = await client.post(path, headers=admin.headers)
        assert again.status_code == 201, again.text
        assert (again.json()["redelivery_of"], again.json()["status"]) == (row["id"], "pending")
        assert await run_job(app) == 1
        headers, body = receiver.received()[-1]
        assert headers["prepaid-event-id"] == event["id"] and json.loads(body)["id"] == event["id"]
        statuses = {d["id"]: d["status"] for d in await deliveries(client, admin, endpoint["id"])}
        assert statuses == {row["id"]: "failed", again.json()["id"]: "succeeded"}
        [entry] = await audit_log(client, admin.headers, action="webhook_delivery.redeliver")
        assert entry["object_id"] == again.json()["id"]
        missing = await client.post(
            f"/v1/webhook_endpoints/{endpoint['id']}/deliveries/wdl_nope/redeliver", headers=admin.headers
        )
        assert_error(missing, 404, "not_found", "resource_missing", "delivery_id")


async def test_deleting_an_endpoint_cancels_what_was_waiting(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_admin(app)
    customer = await make_customer(app)
    with Receiver() as receiver:
        endpoint = await make_endpoint(client, admin, receiver.url, ["session.ended"])
        await emit_committed(app.state.db, customer.id, "session.ended", session_id="ses_2")
        deleted = await client.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=admin.headers)
        assert deleted.status_code == 200
        assert await run_job(app) == 0
        assert receiver.received() == []
        async with app.state.db.transaction(write=False) as session:
            statuses = list(await session.scalars(select(WebhookDelivery.status)))
        assert statuses == ["cancelled"]
        # later events are not queued for it at all
        await emit_committed(app.state.db, customer.id, "session.ended", session_id="ses_3")
        assert await count(app.state.db, WebhookDelivery) == 1
        gone = await client.get(f"/v1/webhook_endpoints/{endpoint['id']}/deliveries", headers=admin.headers)
        assert_error(gone, 404, "not_found", "resource_missing", "endpoint_id")


async def test_a_delivery_left_sending_by_a_dead_process_is_sent_again(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_admin(app)
    customer = await make_customer(app)
    with Receiver() as receiver:
        endpoint = await make_endpoint(client, admin, receiver.url, ["session.ended"])
        await emit_committed(app.state.db, customer.id, "session.ended", session_id="ses_4")
        claimed_at = utcnow() - timedelta(minutes=1)
        async with app.state.db.transaction() as session:
            await session.execute(
                update(WebhookDelivery).values(status="sending", claimed_at=claimed_at, attempts=1)
            )
        assert await run_job(app) == 0  # claimed a minute ago: maybe still being sent
        assert await run_job(app, utcnow() + timedelta(minutes=2)) == 1
        [done] = await deliveries(client, admin, endpoint["id"])
        assert (done["status"], done["attempts"]) == ("succeeded", 2)
        assert len(receiver.received()) == 1


async def test_events_are_queued_and_published_only_when_their_transaction_commits(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Rolled back (the whole transaction, or a savepoint): no delivery, no stream event. Committed: one
    delivery per subscribed endpoint and one stream event per user, ``balance.updated`` collapsed per wallet."""
    admin = await make_admin(app)
    customer = await make_customer(app)
    db: Database = app.state.db
    hub: realtime.Hub = app.state.realtime_hub
    subscriber = hub.subscribe(customer.id)
    bystander = hub.subscribe(admin.id)
    try:
        await make_endpoint(client, admin, "http://127.0.0.1:9/never", ["session.ended"])
        with pytest.raises(RuntimeError):
            async with db.transaction() as session:
                await realtime.emit(session, user_id=customer.id, type="session.ended", data={"n": 1})
                raise RuntimeError("the change failed")
        async with db.transaction() as session:
            async with session.begin_nested() as savepoint:
                await realtime.emit(session, user_id=customer.id, type="session.tick", data={"n": 2})
                await savepoint.rollback()
            for available in (10, 9, 8):
                await realtime.emit(
                    session,
                    user_id=customer.id,
                    type="balance.updated",
                    data={"wallet_id": "wal_x", "available": available},
                )
            await realtime.emit(session, user_id=customer.id, type="session.ended", data={"n": 3})
            assert subscriber.queue.empty()  # not before the commit
        received = [await asyncio.wait_for(subscriber.queue.get(), timeout=5) for _ in range(2)]
        assert [(e["type"], e["data"]) for e in received] == [
            ("balance.updated", {"wallet_id": "wal_x", "available": 8}),
            ("session.ended", {"n": 3}),
        ]
        await asyncio.sleep(0.3)
        assert subscriber.queue.empty() and bystander.queue.empty()
        assert await count(db, WebhookDelivery) == 1
    finally:
        hub.unsubscribe(subscriber)
        hub.unsubscribe(bystander)
