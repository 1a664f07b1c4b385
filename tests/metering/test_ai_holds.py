"""Holds for AI calls over HTTP on both engines: the worst case (prompt + max output tokens) priced by the model
meter and held; the real token counts priced and captured, the rest released; the answer says what was
charged and released; retries answer the same capture; refusals change nothing."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from tests.helpers import assert_error
from tests.metering.test_sessions import World, world_fixture  # noqa: F401  (the fixture)


async def _model(world: World) -> str:
    # 1 credit per input token, 2 per output token, 0.5 per cached input token
    return await world.meter(
        kind="model", input_price=1_000_000, output_price=2_000_000, cached_input_price=500_000
    )


async def _hold(world: World, meter: str, **fields: Any) -> httpx.Response:
    body = {"wallet": world.wallet, "meter": meter, "idempotency_key": secrets.token_hex(8), **fields}
    return await world.client.post("/v1/ai_holds", json=body, headers=world.usage.headers)


async def _capture(world: World, hold_id: str, key: str | None = None, **counts: Any) -> httpx.Response:
    body = {"idempotency_key": key or secrets.token_hex(8), **counts}
    return await world.client.post(f"/v1/ai_holds/{hold_id}/capture", json=body, headers=world.usage.headers)


async def test_an_estimate_is_held_and_the_real_token_counts_are_captured(world: World) -> None:
    meter = await _model(world)
    await world.grant(1000)
    held = await _hold(world, meter, input_tokens=100, max_output_tokens=200, cached_input_tokens=40)
    assert held.status_code == 201, held.text
    body = held.json()
    assert body["estimate"] == 100 + 400 + 20
    assert (body["hold"]["amount"], body["hold"]["status"]) == (520, "pending")
    assert (body["wallet"]["available"], body["wallet"]["held"]) == (480, 520)

    key = secrets.token_hex(8)
    captured = await _capture(
        world, body["hold"]["id"], key, input_tokens=100, output_tokens=50, cached_input_tokens=40
    )
    assert captured.status_code == 200, captured.text
    result = captured.json()
    assert (result["cost"], result["charged"], result["released"], result["uncharged"]) == (220, 220, 300, 0)
    assert (result["hold"]["status"], result["hold"]["captured"]) == ("captured", 220)
    assert (result["wallet"]["available"], result["wallet"]["held"]) == (780, 0)
    assert result["replayed"] is False

    again = await _capture(
        world, body["hold"]["id"], key, input_tokens=100, output_tokens=50, cached_input_tokens=40
    )
    assert again.status_code == 200, again.text
    assert (again.json()["charged"], again.json()["replayed"]) == (220, True)
    assert again.json()["transaction_id"] == result["transaction_id"]
    other = await _capture(world, body["hold"]["id"], input_tokens=1, output_tokens=1)
    assert_error(other, 409, "conflict", "hold_not_pending", "hold_id")
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (780, 0)
    # The hold is an ordinary ledger hold.
    read = await world.client.get(f"/v1/holds/{body['hold']['id']}", headers=world.usage.headers)
    assert (read.json()["status"], read.json()["captured"]) == ("captured", 220)


async def test_a_cost_beyond_the_estimate_is_capped_at_the_hold_and_reported(world: World) -> None:
    meter = await _model(world)
    await world.grant(1000)
    hold = (await _hold(world, meter, input_tokens=10, max_output_tokens=10)).json()["hold"]
    assert hold["amount"] == 30
    result = (await _capture(world, hold["id"], input_tokens=10, output_tokens=40)).json()
    assert (result["cost"], result["charged"], result["released"], result["uncharged"]) == (90, 30, 0, 60)
    assert (await world.wallet_state())["balance"] == 970


async def test_refused_ai_holds_change_nothing(world: World) -> None:
    meter = await _model(world)
    per_call = await world.meter(kind="unit", unit="call", price=1, per=1)
    await world.grant(100)
    error = assert_error(
        await _hold(world, meter, input_tokens=50, max_output_tokens=100),
        402,
        "insufficient_funds",
        "insufficient_credits",
        "wallet",
    )
    assert (error["available"], error["required"]) == (100, 250)
    assert_error(
        await _hold(world, per_call, input_tokens=1, max_output_tokens=1),
        400,
        "invalid_request_error",
        "meter_not_model",
        "meter",
    )
    assert (await _hold(world, "no_such_model", input_tokens=1, max_output_tokens=1)).status_code == 404
    assert (await _hold(world, meter, input_tokens=-1, max_output_tokens=1)).status_code == 400
    assert (await _hold(world, meter, input_tokens=1, max_output_tokens=1, amount=5)).status_code == 400
    # Another user's wallet does not exist for this key.
    response = await world.client.post(
        "/v1/ai_holds",
        json={
            "wallet": world.wallet,
            "meter": meter,
            "input_tokens": 1,
            "max_output_tokens": 1,
            "idempotency_key": secrets.token_hex(8),
        },
        headers=world.other_usage.headers,
    )
    assert_error(response, 404, "not_found", "resource_missing", "wallet")
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (100, 0)


async def test_a_plain_hold_is_not_captured_by_tokens_and_another_users_hold_is_not_found(
    world: World,
) -> None:
    meter = await _model(world)
    await world.grant(100)
    plain = await world.client.post(
        "/v1/holds",
        json={"wallet": world.wallet, "amount": 10, "idempotency_key": secrets.token_hex(8)},
        headers=world.usage.headers,
    )
    assert plain.status_code == 201, plain.text
    plain_id = plain.json()["hold"]["id"]
    assert_error(
        await _capture(world, plain_id, input_tokens=1, output_tokens=1),
        400,
        "invalid_request_error",
        "hold_not_estimated",
        "hold_id",
    )
    estimated = (await _hold(world, meter, input_tokens=1, max_output_tokens=1)).json()["hold"]["id"]
    response = await world.client.post(
        f"/v1/ai_holds/{estimated}/capture",
        json={"input_tokens": 1, "output_tokens": 1, "idempotency_key": secrets.token_hex(8)},
        headers=world.other_usage.headers,
    )
    assert_error(response, 404, "not_found", "resource_missing", "hold_id")
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (100, 13)
