"""Metered sessions over HTTP on both engines: credits held one interval ahead, extended on heartbeats, the
session ended by the server (the runner job) when the holds run out or heartbeats stop, the elapsed time
charged once and exactly, an ended session never charged again, and a user seeing only their own sessions.
The clock is ``app.state.clock``: tests move it instead of sleeping. The books balance after every test.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.db import Database, utcnow
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Hold
from prepaid.metering.models import MeteredSession
from tests import factories
from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error


class FakeClock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    app: Any
    client: httpx.AsyncClient
    clock: FakeClock
    user: factories.TestUser
    other: factories.TestUser
    admin: factories.TestUser
    usage: factories.TestKey  # the user's own key, usage:write
    other_usage: factories.TestKey
    wallet: str

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database

    async def meter(self, **fields: Any) -> str:
        code = fields.pop("code", f"m_{secrets.token_hex(4)}")
        response = await self.client.post(
            "/v1/meters", json={"code": code, "name": code, **fields}, headers=self.admin.headers
        )
        assert response.status_code == 201, response.text
        return code

    async def grant(self, amount: int, wallet: str | None = None) -> None:
        response = await self.client.post(
            f"/v1/wallets/{wallet or self.wallet}/grants",
            json={"amount": amount, "idempotency_key": secrets.token_hex(8)},
            headers=self.admin.headers,
        )
        assert response.status_code == 201, response.text

    async def wallet_state(self, wallet: str | None = None) -> dict[str, Any]:
        response = await self.client.get(f"/v1/wallets/{wallet or self.wallet}", headers=self.user.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def run_jobs(self) -> dict[str, int]:
        done: dict[str, int] = await self.app.state.runner.run_once()
        assert all(count >= 0 for count in done.values()), done
        return done


@pytest.fixture(name="world")
async def world_fixture(app: Any, client: httpx.AsyncClient) -> Any:
    clock = FakeClock()
    app.state.clock = clock
    user = await make_customer(app)
    async with app.state.db.transaction(write=False) as session:
        wallet = (await ledger_service.default_wallet(session, user_id=user.id)).id
    other = await make_customer(app)
    built = World(
        app=app,
        client=client,
        clock=clock,
        user=user,
        other=other,
        admin=await make_customer(app, roles=["user", "admin"]),
        usage=await make_api_key(app, user, scopes=["usage:write", "balance:read"]),
        other_usage=await make_api_key(app, other, scopes=["usage:write", "balance:read"]),
        wallet=wallet,
    )
    yield built
    async with built.db.transaction(write=False) as session:
        assert await ledger_service.check_invariants(session) == []


async def _start(world: World, meter: str, **fields: Any) -> httpx.Response:
    return await world.client.post(
        "/v1/sessions", json={"meter": meter, **fields}, headers=world.usage.headers
    )


async def _beat(world: World, session_id: str, **body: Any) -> httpx.Response:
    return await world.client.post(
        f"/v1/sessions/{session_id}/heartbeat", json=body, headers=world.usage.headers
    )


async def _stop(world: World, session_id: str) -> httpx.Response:
    return await world.client.post(f"/v1/sessions/{session_id}/stop", json={}, headers=world.usage.headers)


async def _get(world: World, session_id: str) -> dict[str, Any]:
    response = await world.client.get(f"/v1/sessions/{session_id}", headers=world.usage.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_a_session_out_of_credits_is_ended_by_the_server_and_charged_exactly(world: World) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)  # 1 credit a second
    await world.grant(100)
    started = await _start(world, meter, interval_seconds=60, grace_seconds=30)
    assert started.status_code == 201, started.text
    body = started.json()
    start = world.clock.now
    assert (body["status"], body["held"], body["charged"]) == ("active", 60, 0)
    assert _at(body["covered_until"]) == start + timedelta(seconds=60)
    assert (await world.wallet_state())["available"] == 40

    world.clock.advance(25)
    beat = await _beat(world, body["id"], metrics={"viewers": 3})
    assert beat.status_code == 200, beat.text
    assert (beat.json()["held"], beat.json()["heartbeats"], beat.json()["metrics"]) == (85, 1, {"viewers": 3})
    world.clock.advance(25)  # t+50: one more interval would need 110, the wallet has 15 left: all of it
    beat = await _beat(world, body["id"])
    assert beat.json()["held"] == 100
    assert _at(beat.json()["covered_until"]) == start + timedelta(seconds=100)
    assert (await world.wallet_state())["available"] == 0
    world.clock.advance(25)  # t+75: nothing left to hold; the session still runs on what is held
    assert (await _beat(world, body["id"])).json()["status"] == "active"

    world.clock.advance(24.5)  # t+99.5: not yet
    assert (await world.run_jobs())["metered_sessions"] == 0
    assert (await _get(world, body["id"]))["status"] == "active"
    world.clock.advance(30)  # t+129.5: the holds ran out at t+100
    assert (await world.run_jobs())["metered_sessions"] == 1
    ended = await _get(world, body["id"])
    assert ended["status"] == "ended"
    assert ended["end_reason"] == "insufficient_credits"
    assert _at(ended["billed_until"]) == start + timedelta(seconds=100)
    assert (ended["charged"], ended["released"]) == (100, 0)
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"], wallet["available"]) == (0, 0, 0)

    # Ended: never charged again, by the client or by the job.
    assert_error(await _stop(world, body["id"]), 409, "conflict", "session_ended", "session_id")
    assert_error(await _beat(world, body["id"]), 409, "conflict", "session_ended", "session_id")
    world.clock.advance(3600)
    assert (await world.run_jobs())["metered_sessions"] == 0
    assert (await _get(world, body["id"]))["charged"] == 100
    async with world.db.transaction(write=False) as session:
        statuses = (await session.scalars(select(Hold.status).where(Hold.wallet_id == world.wallet))).all()
    assert sorted(statuses) == ["captured", "captured", "captured"]


async def test_a_per_minute_rate_is_divided_down_and_rounded_up_once(world: World) -> None:
    meter = await world.meter(kind="unit", unit="minute", price=6, per=1)  # 0.1 credit a second
    await world.grant(50)
    body = (await _start(world, meter, interval_seconds=60, grace_seconds=60)).json()
    assert body["held"] == 6
    for _ in range(5):  # heartbeats every 5.1 s: 10 per-second fractions that would each round up
        world.clock.advance(5.1)
        assert (await _beat(world, body["id"])).status_code == 200
    stopped = await _stop(world, body["id"])  # at t+25.5 s: 25.5 x 0.1 = 2.55 -> 3
    assert stopped.status_code == 200, stopped.text
    assert (stopped.json()["status"], stopped.json()["end_reason"]) == ("ended", "stopped")
    assert stopped.json()["charged"] == 3
    assert stopped.json()["released"] == stopped.json()["held"] - 3
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (47, 0)
    assert_error(await _stop(world, body["id"]), 409, "conflict", "session_ended", "session_id")
    assert (await world.wallet_state())["balance"] == 47


async def test_a_session_whose_heartbeats_stop_is_closed_after_the_grace(world: World) -> None:
    meter = await world.meter(kind="unit", unit="second", price=2, per=1)
    await world.grant(1000)
    body = (await _start(world, meter, interval_seconds=60, grace_seconds=30)).json()
    start = world.clock.now
    world.clock.advance(20)
    no_body = await world.client.post(f"/v1/sessions/{body['id']}/heartbeat", headers=world.usage.headers)
    assert no_body.status_code == 200, no_body.text  # holds now pay to t+80
    assert no_body.json()["held"] == 160
    world.clock.advance(29)  # t+49: 29 s of silence, within the grace
    assert (await world.run_jobs())["metered_sessions"] == 0
    world.clock.advance(2)  # t+51: the grace ran out at t+50
    assert (await world.run_jobs())["metered_sessions"] == 1
    ended = await _get(world, body["id"])
    assert (ended["status"], ended["end_reason"]) == ("ended", "heartbeat_timeout")
    assert _at(ended["billed_until"]) == start + timedelta(seconds=50)
    assert (ended["held"], ended["charged"], ended["released"]) == (160, 100, 60)
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (900, 0)


async def test_a_late_heartbeat_or_stop_finds_the_session_ended_where_the_server_would_have(
    world: World,
) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(500)
    first = (await _start(world, meter, interval_seconds=60, grace_seconds=10)).json()
    second = (await _start(world, meter, interval_seconds=60, grace_seconds=10)).json()
    world.clock.advance(40)  # no job ran; both are 30 s past their grace
    late = await _beat(world, first["id"])
    assert late.status_code == 200, late.text
    assert (late.json()["status"], late.json()["end_reason"], late.json()["charged"]) == (
        "ended",
        "heartbeat_timeout",
        10,
    )
    stopped = await _stop(world, second["id"])
    assert (stopped.json()["end_reason"], stopped.json()["charged"]) == ("heartbeat_timeout", 10)
    assert (await world.wallet_state())["balance"] == 480


async def test_a_customer_who_cannot_pay_the_first_interval_is_refused_and_nothing_is_stored(
    world: World,
) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(59)
    refused = await _start(world, meter, interval_seconds=60, grace_seconds=30)
    error = assert_error(refused, 402, "insufficient_funds", "insufficient_credits", "wallet")
    assert error["available"] == 59
    async with world.db.transaction(write=False) as session:
        assert await session.scalar(select(func.count()).select_from(MeteredSession)) == 0
    assert (await world.wallet_state())["available"] == 59


async def test_bad_session_requests_answer_clear_errors(world: World) -> None:
    model = await world.meter(kind="model", input_price=1, output_price=1)
    per_call = await world.meter(kind="unit", unit="call", price=1, per=1)
    timed = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(100)
    assert_error(await _start(world, model), 400, "invalid_request_error", "meter_not_timed", "meter")
    assert_error(await _start(world, per_call), 400, "invalid_request_error", "meter_not_timed", "meter")
    assert (await _start(world, "no_such_meter")).status_code == 404
    assert_error(
        await _start(world, timed, interval_seconds=10, grace_seconds=20),
        400,
        "invalid_request_error",
        "invalid_grace",
        "grace_seconds",
    )
    assert (await _start(world, timed, surprise=1)).status_code == 400
    assert (await _start(world, timed, wallet=world.wallet)).status_code == 201


async def test_users_see_and_touch_only_their_own_sessions(world: World) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(100)
    mine = (await _start(world, meter)).json()
    other_headers = world.other_usage.headers
    assert (await world.client.get(f"/v1/sessions/{mine['id']}", headers=other_headers)).status_code == 404
    for action in ("heartbeat", "stop"):
        response = await world.client.post(
            f"/v1/sessions/{mine['id']}/{action}", json={}, headers=other_headers
        )
        assert_error(response, 404, "not_found", "resource_missing", "session_id")
    theirs = await world.client.get("/v1/sessions", headers=other_headers)
    assert theirs.json()["data"] == []
    listed = await world.client.get("/v1/sessions", headers=world.user.headers)
    assert [s["id"] for s in listed.json()["data"]] == [mine["id"]]
    # Another user's wallet is not found, and starting one on it charges nothing.
    response = await world.client.post(
        "/v1/sessions", json={"meter": meter, "wallet": world.wallet}, headers=other_headers
    )
    assert_error(response, 404, "not_found", "resource_missing", "wallet")
    assert (await _get(world, mine["id"]))["status"] == "active"


async def test_concurrent_stops_and_the_job_charge_a_session_once(world: World) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(200)
    body = (await _start(world, meter, interval_seconds=60, grace_seconds=30)).json()
    world.clock.advance(45)  # past the grace: the job, and both stops, would each end it
    answers = await asyncio.gather(_stop(world, body["id"]), _stop(world, body["id"]), world.run_jobs())
    statuses = sorted(answer.status_code for answer in answers[:2])
    ended_by_job = answers[2]["metered_sessions"]
    assert statuses.count(200) + ended_by_job == 1, (statuses, ended_by_job)
    assert all(code in (200, 409) for code in statuses)
    ended = await _get(world, body["id"])
    assert (ended["end_reason"], ended["charged"]) == ("heartbeat_timeout", 30)
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (170, 0)


async def test_session_events_reach_a_subscribed_webhook_endpoint(world: World) -> None:
    created = await world.client.post(
        "/v1/webhook_endpoints",
        json={"url": "https://app.example.com/hooks", "event_types": ["session.started", "session.ended"]},
        headers=world.admin.headers,
    )
    assert created.status_code == 201, created.text
    endpoint = created.json()["id"]
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(100)
    body = (await _start(world, meter)).json()
    world.clock.advance(7)
    assert (await _stop(world, body["id"])).json()["charged"] == 7
    deliveries = await world.client.get(
        f"/v1/webhook_endpoints/{endpoint}/deliveries", headers=world.admin.headers
    )
    assert deliveries.status_code == 200, deliveries.text
    types = sorted(delivery["event_type"] for delivery in deliveries.json()["data"])
    assert types == ["session.ended", "session.started"], deliveries.json()


async def test_a_frozen_wallet_pays_for_no_more_and_the_session_ends_on_what_is_held(world: World) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(500)
    body = (await _start(world, meter, interval_seconds=60, grace_seconds=30)).json()
    frozen = await world.client.patch(
        f"/v1/wallets/{world.wallet}", json={"frozen": True}, headers=world.admin.headers
    )
    assert frozen.status_code == 200, frozen.text
    world.clock.advance(20)
    beat = await _beat(world, body["id"])
    assert beat.status_code == 200, beat.text
    assert (beat.json()["status"], beat.json()["held"]) == ("active", 60)
    world.clock.advance(25)  # t+45: still nothing more held; the holds pay to t+60
    assert (await _beat(world, body["id"])).json()["held"] == 60
    world.clock.advance(25)  # t+70: past the holds (t+60), before the grace (t+75)
    assert (await world.run_jobs())["metered_sessions"] == 1
    ended = await _get(world, body["id"])
    assert (ended["end_reason"], ended["charged"], ended["released"]) == ("insufficient_credits", 60, 0)
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (440, 0)


async def test_concurrent_starts_heartbeats_and_charges_on_one_wallet_never_deadlock(world: World) -> None:
    """On PostgreSQL a new session row's foreign key to the wallet takes ``FOR KEY SHARE`` on the wallet row;
    two starts that each took it before the ledger's ``FOR UPDATE`` would wait for each other. Starts lock the
    wallet first, so any mix of starts, heartbeats, stops, usage and debits on one wallet only queues."""
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    per_call = await world.meter(kind="unit", unit="call", price=1, per=1)
    await world.grant(10_000)
    running = [
        (await _start(world, meter, interval_seconds=10, grace_seconds=10)).json()["id"] for _ in range(3)
    ]

    async def usage() -> httpx.Response:
        body = {"id": secrets.token_hex(8), "wallet": world.wallet, "meter": per_call, "quantity": 2}
        return await world.client.post("/v1/usage", json=body, headers=world.usage.headers)

    async def debit() -> httpx.Response:
        return await world.client.post(
            f"/v1/wallets/{world.wallet}/debits",
            json={"amount": 3, "idempotency_key": secrets.token_hex(8)},
            headers=world.usage.headers,
        )

    calls = [_start(world, meter, interval_seconds=10, grace_seconds=10) for _ in range(12)]
    calls += [usage() for _ in range(6)] + [debit() for _ in range(6)]
    calls += [_beat(world, session_id) for session_id in running]
    calls += [_stop(world, running[0])]
    answers = await asyncio.gather(*calls)
    assert [a.status_code for a in answers] == [201] * 12 + [201] * 12 + [200] * 4, [
        a.text for a in answers if a.status_code >= 300
    ]
    started = [a.json()["id"] for a in answers[:12]]
    assert len(set(started)) == 12
    wallet = await world.wallet_state()
    sessions_held = 0
    for session_id in [*started, *running[1:]]:
        sessions_held += (await _get(world, session_id))["held"]
    assert wallet["held"] == sessions_held
    stopped = await _get(world, running[0])
    assert wallet["balance"] == 10_000 - 6 * 2 - 6 * 3 - stopped["charged"]
