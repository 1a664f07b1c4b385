"""The ledger API's movements on the realtime stream, on both engines: every grant, debit, hold, capture,
release and transfer made through ``/v1`` pushes ``balance.updated`` to the owner of each wallet it changed,
with the wallet's figures after it (the same as the answer's); nobody else hears it, and a replay (by the
body's ``idempotency_key`` or the ``Idempotency-Key`` header) or a refused movement pushes nothing.

Events are read from this process's hub (``app.state.realtime_hub``), which on PostgreSQL receives them back
through ``LISTEN``/``NOTIFY`` like every server process does. "Nothing was pushed" is proven without sleeping:
a later movement's event must be the next one the subscriber receives.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from prepaid.ledger import service as ledger_service
from prepaid.notify import realtime
from tests import factories
from tests.factories import make_api_key, make_customer


def key() -> str:
    return f"k-{secrets.token_hex(6)}"


class Listener:
    """One user's subscription to this process's hub."""

    def __init__(self, hub: realtime.Hub, user_id: str) -> None:
        self.hub = hub
        self.subscriber = hub.subscribe(user_id)

    async def next(self) -> dict[str, Any]:
        event: dict[str, Any] = await asyncio.wait_for(self.subscriber.queue.get(), timeout=10)
        return event

    async def balances(self, count: int) -> list[dict[str, Any]]:
        events = [await self.next() for _ in range(count)]
        assert [event["type"] for event in events] == ["balance.updated"] * count, events
        return [event["data"] for event in events]

    def close(self) -> None:
        self.hub.unsubscribe(self.subscriber)


@dataclass
class World:
    client: httpx.AsyncClient
    admin: factories.TestUser
    user: factories.TestUser
    other: factories.TestUser
    usage: factories.TestKey  # the user's own key, usage:write
    server: factories.TestKey  # an admin's server key, usage:write
    wallet: str  # the user's default wallet
    other_wallet: str
    hear_user: Listener
    hear_other: Listener
    hear_admin: Listener

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        response = await self.client.post(path, json=body, headers=headers)
        assert response.status_code in (200, 201), response.text
        answer: dict[str, Any] = response.json()
        return answer

    async def grant(self, wallet: str, amount: int, idempotency_key: str | None = None) -> dict[str, Any]:
        body = {"amount": amount, "idempotency_key": idempotency_key or key()}
        return await self.post(f"/v1/wallets/{wallet}/grants", body, self.admin.headers)


def figures(answer: dict[str, Any], part: str = "wallet") -> dict[str, Any]:
    """A movement answer's wallet balances, as ``balance.updated`` carries them."""
    return {name: value for name, value in answer[part].items() if name != "object"}


async def default_wallet(app: Any, user_id: str) -> str:
    async with app.state.db.transaction(write=False) as session:
        return (await ledger_service.default_wallet(session, user_id=user_id)).id


@pytest.fixture
async def world(app: Any, client: httpx.AsyncClient) -> AsyncIterator[World]:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app)
    other = await make_customer(app)
    hub: realtime.Hub = app.state.realtime_hub
    found = World(
        client=client,
        admin=admin,
        user=user,
        other=other,
        usage=await make_api_key(app, user, scopes=["usage:write"]),
        server=await make_api_key(app, admin, scopes=["usage:write"], server=True),
        wallet=await default_wallet(app, user.id),
        other_wallet=await default_wallet(app, other.id),
        hear_user=Listener(hub, user.id),
        hear_other=Listener(hub, other.id),
        hear_admin=Listener(hub, admin.id),
    )
    try:
        yield found
    finally:
        for listener in (found.hear_user, found.hear_other, found.hear_admin):
            listener.close()


async def test_every_movement_pushes_the_wallet_after_it_to_its_owner(world: World) -> None:
    granted = await world.grant(world.wallet, 100)
    assert await world.hear_user.balances(1) == [figures(granted)]
    assert figures(granted) == {
        "wallet_id": world.wallet,
        "asset": "credit",
        "balance": 100,
        "held": 0,
        "available": 100,
        "debt": 0,
    }

    by_own_key = await world.post(
        f"/v1/wallets/{world.wallet}/debits", {"amount": 7, "idempotency_key": key()}, world.usage.headers
    )
    by_server = await world.post(
        f"/v1/wallets/{world.wallet}/debits", {"amount": 3, "idempotency_key": key()}, world.server.headers
    )
    assert await world.hear_user.balances(2) == [figures(by_own_key), figures(by_server)]
    assert figures(by_server)["available"] == 90

    held = await world.post(
        "/v1/holds", {"wallet": world.wallet, "amount": 40, "idempotency_key": key()}, world.server.headers
    )
    hold_id = held["hold"]["id"]
    [after_hold] = await world.hear_user.balances(1)
    assert after_hold == figures(held)
    assert (after_hold["available"], after_hold["held"], after_hold["balance"]) == (50, 40, 90)
    captured = await world.post(
        f"/v1/holds/{hold_id}/capture", {"amount": 15, "idempotency_key": key()}, world.usage.headers
    )
    [after_capture] = await world.hear_user.balances(1)
    assert after_capture == figures(captured)
    assert (after_capture["available"], after_capture["held"]) == (75, 0)

    second = await world.post(
        "/v1/holds", {"wallet": world.wallet, "amount": 5, "idempotency_key": key()}, world.usage.headers
    )
    released = await world.post(
        f"/v1/holds/{second['hold']['id']}/release", {"idempotency_key": key()}, world.server.headers
    )
    assert await world.hear_user.balances(2) == [figures(second), figures(released)]
    assert figures(released)["available"] == 75

    # Nobody else heard any of it: the next event each of them receives is their own wallet's.
    other_grant = await world.grant(world.other_wallet, 1)
    assert await world.hear_other.balances(1) == [figures(other_grant)]
    admin_wallet = await default_wallet_of(world, world.admin)
    admin_grant = await world.grant(admin_wallet, 2)
    assert await world.hear_admin.balances(1) == [figures(admin_grant)]


async def default_wallet_of(world: World, person: factories.TestUser) -> str:
    response = await world.client.get("/v1/wallets", headers=person.headers)
    assert response.status_code == 200, response.text
    wallet_id: str = next(w["id"] for w in response.json()["data"] if w["is_default"])
    return wallet_id


async def test_a_transfer_pushes_both_wallets_each_to_its_own_owner(world: World) -> None:
    await world.grant(world.wallet, 50)
    await world.hear_user.balances(1)
    moved = await world.post(
        "/v1/transfers",
        {
            "from_wallet": world.wallet,
            "to_wallet": world.other_wallet,
            "amount": 20,
            "idempotency_key": key(),
        },
        world.server.headers,
    )
    assert await world.hear_user.balances(1) == [figures(moved)]
    assert figures(moved)["available"] == 30
    [theirs] = await world.hear_other.balances(1)
    assert theirs == {**figures(moved), "wallet_id": world.other_wallet, "balance": 20, "available": 20}

    # Between two wallets of one person (signed in): one event per wallet, each with its own figures.
    opened = await world.client.post("/v1/wallets", json={"name": "agent"}, headers=world.user.headers)
    assert opened.status_code == 201, opened.text
    agent = opened.json()["id"]
    inside = await world.post(
        "/v1/transfers",
        {"from_wallet": world.wallet, "to_wallet": agent, "amount": 12, "idempotency_key": key()},
        world.user.headers,
    )
    pushed = {data["wallet_id"]: data for data in await world.hear_user.balances(2)}
    assert pushed == {world.wallet: figures(inside), agent: figures(inside, "to_wallet")}
    assert (pushed[world.wallet]["available"], pushed[agent]["available"]) == (18, 12)


async def test_replays_and_refusals_push_nothing(world: World) -> None:
    grant_key = key()
    first = await world.grant(world.wallet, 10, grant_key)
    assert await world.hear_user.balances(1) == [figures(first)]
    replayed = await world.grant(world.wallet, 10, grant_key)
    assert replayed["replayed"] is True

    debit = {"amount": 4, "idempotency_key": key()}
    await world.post(f"/v1/wallets/{world.wallet}/debits", debit, world.usage.headers)
    assert (await world.hear_user.balances(1))[0]["available"] == 6
    again = await world.post(f"/v1/wallets/{world.wallet}/debits", debit, world.usage.headers)
    assert again["replayed"] is True

    # The Idempotency-Key header replays the stored answer without running the route again.
    headers = {**world.server.headers, "Idempotency-Key": key()}
    body = {"amount": 1, "idempotency_key": key()}
    stored = await world.post(f"/v1/wallets/{world.wallet}/debits", body, headers)
    assert (await world.hear_user.balances(1))[0] == figures(stored)
    assert await world.post(f"/v1/wallets/{world.wallet}/debits", body, headers) == stored

    too_much = await world.client.post(
        f"/v1/wallets/{world.wallet}/debits",
        json={"amount": 1000, "idempotency_key": key()},
        headers=world.usage.headers,
    )
    assert too_much.status_code == 402, too_much.text
    not_theirs = await world.client.post(
        f"/v1/wallets/{world.other_wallet}/debits",
        json={"amount": 1, "idempotency_key": key()},
        headers=world.usage.headers,
    )
    assert not_theirs.status_code == 404, not_theirs.text
    held = await world.post(
        "/v1/holds", {"wallet": world.wallet, "amount": 2, "idempotency_key": key()}, world.usage.headers
    )
    assert (await world.hear_user.balances(1))[0] == figures(held)
    capture = {"amount": 3, "idempotency_key": key()}  # more than the hold: refused, nothing moves
    over = await world.client.post(
        f"/v1/holds/{held['hold']['id']}/capture", json=capture, headers=world.usage.headers
    )
    assert over.status_code == 400, over.text

    # None of the above pushed anything: the next event is this grant's.
    last = await world.grant(world.wallet, 100)
    assert await world.hear_user.balances(1) == [figures(last)]
    assert figures(last) == {
        "wallet_id": world.wallet,
        "asset": "credit",
        "balance": 105,
        "held": 2,
        "available": 103,
        "debt": 0,
    }
    assert world.hear_other.subscriber.queue.empty() and world.hear_admin.subscriber.queue.empty()
