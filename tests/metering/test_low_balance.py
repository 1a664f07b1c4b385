"""Low-balance alerts on both engines: a wallet's threshold (``PATCH /v1/wallets/{id}``), one ``low_balance``
notification (in-app and email) when available credits fall below it, none more while they stay below, and
another after they rose to the threshold and fell again. Metering's own charges check at once, in their
transaction; balances changed elsewhere (the ledger API, grants) are caught by the runner's scan."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from prepaid.metering.models import LowBalanceAlert
from tests.metering.test_sessions import World, world_fixture  # noqa: F401  (the fixture)


async def _threshold(world: World, value: int | None) -> None:
    response = await world.client.patch(
        f"/v1/wallets/{world.wallet}", json={"low_balance_threshold": value}, headers=world.user.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["low_balance_threshold"] == value


async def _alerts(world: World) -> list[dict[str, Any]]:
    response = await world.client.get("/v1/notifications", headers=world.user.headers)
    assert response.status_code == 200, response.text
    return [n for n in response.json()["data"] if n["kind"] == "low_balance"]


async def _spend_through_ai_hold(world: World, meter: str, credits: int) -> None:
    held = await world.client.post(
        "/v1/holds",
        json={
            "wallet": world.wallet,
            "estimate": {"meter": meter, "input_tokens": credits, "max_output_tokens": 0},
            "idempotency_key": secrets.token_hex(8),
        },
        headers=world.usage.headers,
    )
    assert held.status_code == 201, held.text
    captured = await world.client.post(
        f"/v1/holds/{held.json()['hold']['id']}/capture",
        json={
            "usage": {"input_tokens": credits, "output_tokens": 0},
            "idempotency_key": secrets.token_hex(8),
        },
        headers=world.usage.headers,
    )
    assert captured.status_code == 200, captured.text


async def test_the_alert_fires_once_below_the_threshold_and_rearms_above_it(world: World) -> None:
    meter = await world.meter(kind="model", input_price=1_000_000, output_price=1_000_000)  # 1 credit a token
    await world.grant(100)
    await _threshold(world, 50)

    await _spend_through_ai_hold(world, meter, 40)  # 60 left: above
    assert await _alerts(world) == []
    await _spend_through_ai_hold(world, meter, 20)  # 40 left: below, fires
    alerts = await _alerts(world)
    assert len(alerts) == 1
    assert alerts[0]["data"]["balance"] == 40
    assert alerts[0]["data"]["threshold"] == 50
    assert alerts[0]["data"]["wallet_id"] == world.wallet
    await _spend_through_ai_hold(world, meter, 10)  # 30 left: still below, no second alert
    await world.run_jobs()
    assert len(await _alerts(world)) == 1

    await world.grant(100)  # 130: a grant through the ledger API; the runner's scan re-arms
    await world.run_jobs()
    async with world.db.transaction(write=False) as session:
        state = await session.scalar(select(LowBalanceAlert).where(LowBalanceAlert.wallet_id == world.wallet))
    assert state is not None and (state.below, state.fired) == (False, 1)
    await _spend_through_ai_hold(world, meter, 85)  # 45 left: below again, fires again
    alerts = await _alerts(world)
    assert [a["data"]["balance"] for a in alerts] == [45, 40]


async def test_the_scan_catches_a_ledger_debit_and_fires_only_once(world: World) -> None:
    await world.grant(100)
    await _threshold(world, 50)
    debit = await world.client.post(
        f"/v1/wallets/{world.wallet}/debits",
        json={"amount": 70, "idempotency_key": secrets.token_hex(8)},
        headers=world.usage.headers,
    )
    assert debit.status_code == 201, debit.text
    assert await _alerts(world) == []  # the ledger route does not check; the runner does
    assert (await world.run_jobs())["low_balance"] == 1
    assert (await world.run_jobs())["low_balance"] == 0
    alerts = await _alerts(world)
    assert [a["data"]["balance"] for a in alerts] == [30]


async def test_a_session_hold_that_takes_the_wallet_below_the_threshold_fires(world: World) -> None:
    meter = await world.meter(kind="unit", unit="second", price=1, per=1)
    await world.grant(100)
    await _threshold(world, 50)
    started = await world.client.post(
        "/v1/sessions", json={"meter": meter, "interval_seconds": 60}, headers=world.usage.headers
    )
    assert started.status_code == 201, started.text
    assert [a["data"]["balance"] for a in await _alerts(world)] == [40]
    world.clock.advance(5)
    stopped = await world.client.post(
        f"/v1/sessions/{started.json()['id']}/stop", json={}, headers=world.usage.headers
    )
    assert stopped.json()["charged"] == 5  # 95 left: re-armed at once
    async with world.db.transaction(write=False) as session:
        state = await session.scalar(select(LowBalanceAlert).where(LowBalanceAlert.wallet_id == world.wallet))
    assert state is not None and state.below is False


async def test_no_threshold_no_alert(world: World) -> None:
    await world.grant(10)
    debit = await world.client.post(
        f"/v1/wallets/{world.wallet}/debits",
        json={"amount": 9, "idempotency_key": secrets.token_hex(8)},
        headers=world.usage.headers,
    )
    assert debit.status_code == 201
    assert (await world.run_jobs())["low_balance"] == 0
    assert await _alerts(world) == []
