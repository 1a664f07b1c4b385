"""What usage charging announces, on both engines: every event charged now (single or in a batch) queues one
``usage.recorded`` webhook per subscribed endpoint, in the charge's transaction, delivered signed to a real
local receiver; a replayed, repeated or refused event queues nothing. Each wallet a request charged pushes one
``balance.updated`` to its owner's stream."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest

from prepaid.notify import realtime, webhooks_out
from prepaid.notify.models import WebhookDelivery
from prepaid.webhook_signature import verify_signature
from tests import factories
from tests.api.test_webhooks_out import Receiver, deliveries, make_endpoint
from tests.factories import make_admin, make_api_key
from tests.helpers import assert_error, count


def uid() -> str:
    return f"ev-{secrets.token_hex(6)}"


@dataclass
class World:
    app: Any
    client: httpx.AsyncClient
    admin: factories.TestUser
    server: factories.TestKey  # a server key: usage:write, customers:write
    alice: dict[str, Any]  # customers, as PUT /v1/customers answers them
    bob: dict[str, Any]

    async def grant(self, customer: dict[str, Any], amount: int) -> None:
        response = await self.client.post(
            f"/v1/wallets/{customer['wallets'][0]['id']}/grants",
            json={"amount": amount, "idempotency_key": uid()},
            headers=self.admin.headers,
        )
        assert response.status_code == 201, response.text

    async def usage(self, event: dict[str, Any], status: int = 201) -> dict[str, Any]:
        response = await self.client.post("/v1/usage", json=event, headers=self.server.headers)
        assert response.status_code == status, response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def batch(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = await self.client.post(
            "/v1/usage/batch", json={"events": events}, headers=self.server.headers
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["data"]
        return items

    async def queued(self, endpoint: dict[str, Any]) -> list[dict[str, Any]]:
        """The events queued for an endpoint, oldest first."""
        return [
            delivery["body"]
            for delivery in reversed(await deliveries(self.client, self.admin, endpoint["id"]))
        ]


async def make_customer(
    client: httpx.AsyncClient, admin: factories.TestUser, external_id: str
) -> dict[str, Any]:
    response = await client.put(
        f"/v1/customers/{external_id}", json={"name": external_id}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    customer: dict[str, Any] = response.json()
    return customer


@pytest.fixture
async def world(app: Any, client: httpx.AsyncClient) -> World:
    admin = await make_admin(app)
    for body in (
        {"code": "image", "name": "Image", "kind": "unit", "unit": "image", "price": 2, "per": 1},
        {
            "code": "gpt",
            "name": "GPT",
            "kind": "model",
            "unit": "token",
            "input_price": 2,
            "output_price": 8,
            "cached_input_price": 1,
        },
    ):
        response = await client.post("/v1/meters", json=body, headers=admin.headers)
        assert response.status_code == 201, response.text
    return World(
        app=app,
        client=client,
        admin=admin,
        server=await make_api_key(app, admin, scopes=["usage:write", "customers:write"], server=True),
        alice=await make_customer(client, admin, f"wa-{secrets.token_hex(4)}"),
        bob=await make_customer(client, admin, f"wa-{secrets.token_hex(4)}"),
    )


def announced(answer: dict[str, Any]) -> dict[str, Any]:
    """What ``usage.recorded`` must say of an event, from the API's answer for it."""
    return {
        "usage_id": answer["id"],
        "wallet_id": answer["wallet"],
        "meter": answer["meter"],
        "quantity": answer["quantity"],
        "input_tokens": answer["input_tokens"],
        "output_tokens": answer["output_tokens"],
        "cached_input_tokens": answer["cached_input_tokens"],
        "cost": answer["cost"],
        "asset": answer["asset"],
        "balance_after": answer["balance_after"],
        "transaction_id": answer["transaction"],
        "batch_id": answer["batch"],
        "timestamp": answer["timestamp"],
    }


def same_time(event: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The event's data with its timestamp in the answer's spelling (both are ISO 8601 UTC)."""
    data = dict(event["data"])
    assert datetime.fromisoformat(data["timestamp"]) == datetime.fromisoformat(
        answer["timestamp"].replace("Z", "+00:00")
    )
    data["timestamp"] = answer["timestamp"]
    return data


async def test_a_charged_event_reaches_a_subscribed_receiver_once_signed(world: World) -> None:
    await world.grant(world.alice, 20)
    with Receiver() as receiver, Receiver() as bystander:
        endpoint = await make_endpoint(world.client, world.admin, receiver.url, ["usage.recorded"])
        await make_endpoint(world.client, world.admin, bystander.url, ["order.paid", "session.ended"])
        event = {"id": uid(), "customer": world.alice["external_id"], "meter": "image", "quantity": 3}
        charged = await world.usage(event)
        assert (charged["cost"], charged["balance_after"]) == (6, 14)
        tokens = {"id": uid(), "customer": world.alice["id"], "meter": "gpt", "input_tokens": 1_000_000}
        tokens |= {"output_tokens": 250_000, "cached_input_tokens": 500_001}
        by_tokens = await world.usage(tokens)
        assert (by_tokens["cost"], by_tokens["balance_after"]) == (5, 9)

        # A replay, a reused id, a refusal and an unknown meter queue nothing.
        assert (await world.usage(event, status=200))["replayed"] is True
        reused = await world.client.post(
            "/v1/usage", json={**event, "quantity": 4}, headers=world.server.headers
        )
        assert_error(reused, 400, "idempotency_error", "usage_id_reused", "id")
        too_much = {"id": uid(), "customer": world.alice["external_id"], "meter": "image", "quantity": 50}
        refused = await world.client.post("/v1/usage", json=too_much, headers=world.server.headers)
        assert_error(refused, 402, "insufficient_funds", "insufficient_credits", "amount")
        unknown = {"id": uid(), "customer": world.alice["external_id"], "meter": "nope", "quantity": 1}
        missing = await world.client.post("/v1/usage", json=unknown, headers=world.server.headers)
        assert_error(missing, 404, "not_found", "meter_not_found", "meter")

        queued = await world.queued(endpoint)
        assert [body["type"] for body in queued] == ["usage.recorded", "usage.recorded"]
        assert await count(world.app.state.db, WebhookDelivery) == 2

        assert await webhooks_out.deliver_due(world.app.state.db, world.app.state.settings) == 2
        received = receiver.received()
        assert len(received) == 2 and bystander.received() == []
        bodies = []
        for headers, body in received:
            assert verify_signature(endpoint["secret"], headers["prepaid-signature"], body) > 0
            bodies.append(json.loads(body))
        sent = {body["data"]["usage_id"]: body for body in bodies}
        for answer in (charged, by_tokens):
            body = sent[answer["id"]]
            assert body["type"] == "usage.recorded" and body["id"].startswith("pev_")
            assert body["customer"] == {"id": world.alice["id"], "external_id": world.alice["external_id"]}
            assert same_time(body, answer) == announced(answer)
        assert sent[charged["id"]]["data"]["quantity"] == 3
        assert sent[by_tokens["id"]]["data"]["output_tokens"] == 250_000
        assert {body["id"] for body in bodies} == {headers["prepaid-event-id"] for headers, _ in received}
        assert await webhooks_out.deliver_due(world.app.state.db, world.app.state.settings) == 0


async def test_a_batch_queues_one_delivery_per_event_it_charged(world: World) -> None:
    await world.grant(world.alice, 100)
    await world.grant(world.bob, 5)
    endpoint = await make_endpoint(world.client, world.admin, "http://127.0.0.1:9/never", ["usage.recorded"])
    earlier = {"id": uid(), "customer": world.alice["external_id"], "meter": "image", "quantity": 1}
    first = await world.usage(earlier)
    a, b = world.alice["external_id"], world.bob["external_id"]
    repeated = {"id": uid(), "customer": a, "meter": "image", "quantity": 2}
    events = [
        repeated,
        {"id": uid(), "customer": b, "meter": "image", "quantity": 2},  # 4 of bob's 5
        earlier,  # stored before: a duplicate
        {"id": uid(), "customer": b, "meter": "image", "quantity": 1},  # 2 more: does not fit
        repeated,  # repeated within the batch: answered as its first occurrence
        {"id": uid(), "customer": a, "meter": "nope", "quantity": 1},  # unknown meter
        {"id": uid(), "customer": b, "meter": "image", "quantity": 0},  # costs nothing: recorded
        {"id": uid(), "customer": a, "meter": "gpt", "input_tokens": 3_000_000},
    ]
    items = await world.batch(events)
    assert [item["status"] for item in items] == [
        "charged",
        "charged",
        "duplicate",
        "refused",
        "duplicate",
        "refused",
        "charged",
        "charged",
    ]
    charged = [item["usage"] for item in items if item["status"] == "charged"]
    assert [(usage["cost"], usage["balance_after"]) for usage in charged] == [
        (4, 94),
        (4, 1),
        (0, 1),
        (6, 88),
    ]

    queued = await world.queued(endpoint)
    assert [body["type"] for body in queued] == ["usage.recorded"] * 5
    assert queued[0]["data"]["usage_id"] == first["id"] and queued[0]["data"]["batch_id"] is None
    batch_events = queued[1:]
    assert [body["data"]["usage_id"] for body in batch_events] == [usage["id"] for usage in charged]
    for body, usage in zip(batch_events, charged, strict=True):
        assert same_time(body, usage) == announced(usage)
        owner = world.alice if usage["wallet"] == world.alice["wallets"][0]["id"] else world.bob
        assert body["customer"] == {"id": owner["id"], "external_id": owner["external_id"]}
    assert len({body["id"] for body in queued}) == 5
    assert {body["data"]["batch_id"] for body in batch_events} == {charged[0]["batch"]}

    # The same batch again: every event is a duplicate or refused, nothing more is queued.
    again = await world.batch(events)
    assert {item["status"] for item in again} == {"duplicate", "refused"}
    assert await count(world.app.state.db, WebhookDelivery) == 5


async def test_nothing_is_queued_without_a_subscriber_and_a_new_endpoint_hears_the_next_events(
    world: World,
) -> None:
    await world.grant(world.alice, 50)
    await make_endpoint(world.client, world.admin, "http://127.0.0.1:9/never", ["order.paid"])
    a = world.alice["external_id"]
    items = await world.batch(
        [{"id": uid(), "customer": a, "meter": "image", "quantity": 1} for _ in range(3)]
    )
    assert [item["status"] for item in items] == ["charged"] * 3
    await world.usage({"id": uid(), "customer": a, "meter": "image", "quantity": 1})
    assert await count(world.app.state.db, WebhookDelivery) == 0

    endpoint = await make_endpoint(world.client, world.admin, "http://127.0.0.1:9/never", ["usage.recorded"])
    items = await world.batch(
        [{"id": uid(), "customer": a, "meter": "image", "quantity": 1} for _ in range(3)]
    )
    assert [body["data"]["usage_id"] for body in await world.queued(endpoint)] == [
        item["id"] for item in items
    ]


@pytest.fixture
async def hub(app: Any) -> AsyncIterator[realtime.Hub]:
    found: realtime.Hub = app.state.realtime_hub
    yield found


async def next_event(subscriber: realtime.Subscriber) -> dict[str, Any]:
    event: dict[str, Any] = await asyncio.wait_for(subscriber.queue.get(), timeout=10)
    return event


async def test_each_charged_wallet_pushes_one_balance_to_its_owner(world: World, hub: realtime.Hub) -> None:
    alice, bob = hub.subscribe(world.alice["id"]), hub.subscribe(world.bob["id"])
    try:
        await world.grant(world.alice, 30)
        await world.grant(world.bob, 3)
        assert (await next_event(alice))["data"]["available"] == 30  # the grants' own events
        assert (await next_event(bob))["data"]["available"] == 3
        a, b = world.alice["external_id"], world.bob["external_id"]
        items = await world.batch(
            [
                {"id": uid(), "customer": a, "meter": "image", "quantity": 1},
                {"id": uid(), "customer": a, "meter": "image", "quantity": 2},
                {"id": uid(), "customer": a, "meter": "image", "quantity": 3},
                {"id": uid(), "customer": b, "meter": "image", "quantity": 5},  # bob cannot pay: refused
            ]
        )
        assert [item["status"] for item in items] == ["charged"] * 3 + ["refused"]
        pushed = await next_event(alice)
        assert pushed["type"] == "balance.updated"
        assert pushed["data"] == {
            "wallet_id": world.alice["wallets"][0]["id"],
            "asset": "credit",
            "balance": 18,
            "held": 0,
            "available": 18,
            "debt": 0,
        }
        assert pushed["data"]["available"] == items[2]["usage"]["balance_after"]

        # One balance per wallet per request (not one per event), nothing for a replay or bob's refusal: the
        # next events each of them hears are the ones after this single event.
        replay = {k: v for k, v in items[0]["usage"].items() if k in ("id", "meter", "quantity")}
        await world.usage({**replay, "customer": a}, status=200)
        single = await world.usage({"id": uid(), "customer": b, "meter": "image", "quantity": 1})
        pushed = await next_event(bob)
        assert (pushed["type"], pushed["data"]["available"]) == ("balance.updated", single["balance_after"])
        last = await world.usage({"id": uid(), "customer": a, "meter": "image", "quantity": 1})
        pushed = await next_event(alice)
        assert (pushed["type"], pushed["data"]["available"]) == ("balance.updated", last["balance_after"])
        assert pushed["data"]["available"] == 16
        assert alice.queue.empty() and bob.queue.empty()
    finally:
        hub.unsubscribe(alice)
        hub.unsubscribe(bob)
