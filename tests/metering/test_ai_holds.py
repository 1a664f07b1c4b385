"""Holds for AI calls through the ledger's hold routes, over HTTP on both engines: ``POST /v1/holds`` with an
``estimate`` (the prompt + max output tokens) priced by the model meter exactly as ``POST /v1/usage`` prices the
same counts, and held; ``POST /v1/holds/{id}/capture`` with ``usage`` (the real token counts) charging exactly
what they cost and releasing the rest; the answers say what was charged and released; a cost beyond the hold is
capped and reported; retries answer the same capture; an amount and an estimate (or usage) at once, and every
other refusal, change nothing."""

from __future__ import annotations

import secrets
from typing import Any

import httpx

from prepaid.catalog import service as catalog_service
from prepaid.ledger import service as ledger_service
from tests.helpers import assert_error
from tests.metering.test_sessions import World, world_fixture  # noqa: F401  (the fixture)


async def _model(world: World) -> str:
    # 1.5 credits per input token, 2.333333 per output token, 0.1 per cached input token: rounding matters
    return await world.meter(
        kind="model", input_price=1_500_000, output_price=2_333_333, cached_input_price=100_000
    )


async def _hold(world: World, meter: str | None, key: str | None = None, **fields: Any) -> httpx.Response:
    estimate = {name: fields.pop(name) for name in list(fields) if name.endswith("_tokens")}
    body: dict[str, Any] = {"wallet": world.wallet, "idempotency_key": key or secrets.token_hex(8), **fields}
    if meter is not None:
        body["estimate"] = {"meter": meter, **estimate}
    return await world.client.post("/v1/holds", json=body, headers=world.usage.headers)


async def _capture(
    world: World, hold_id: str, key: str | None = None, headers: dict[str, str] | None = None, **counts: Any
) -> httpx.Response:
    amount = counts.pop("amount", None)
    body: dict[str, Any] = {"idempotency_key": key or secrets.token_hex(8)}
    if counts:
        body["usage"] = counts
    if amount is not None:
        body["amount"] = amount
    return await world.client.post(
        f"/v1/holds/{hold_id}/capture", json=body, headers=headers or world.usage.headers
    )


async def _meter_cost(world: World, meter: str, **counts: int) -> int:
    async with world.db.transaction(write=False) as session:
        priced = await catalog_service.get_meter(session, meter)
        return catalog_service.meter_cost(priced, **counts)


async def _usage_cost(world: World, meter: str, **counts: int) -> int:
    """What ``POST /v1/usage`` charges for these counts on this meter (on the other user's wallet)."""
    async with world.db.transaction(write=False) as session:
        theirs = (await ledger_service.default_wallet(session, user_id=world.other.id)).id
    await world.grant(10_000, theirs)
    response = await world.client.post(
        "/v1/usage",
        json={"id": secrets.token_hex(8), "meter": meter, "customer": world.other.id, **counts},
        headers=world.other_usage.headers,
    )
    assert response.status_code in (200, 201), response.text
    cost: int = response.json()["cost"]
    return cost


async def test_an_estimate_is_priced_as_usage_and_the_real_counts_are_charged_exactly(world: World) -> None:
    meter = await _model(world)
    await world.grant(10_000)
    worst = {"input_tokens": 101, "max_output_tokens": 203, "cached_input_tokens": 37}
    as_usage = {"input_tokens": 101, "output_tokens": 203, "cached_input_tokens": 37}
    expected = await _usage_cost(world, meter, **as_usage)
    assert expected == await _meter_cost(world, meter, **as_usage) == 629  # ceil(151.5 + 473.67 + 3.7)

    held = await _hold(world, meter, **worst)
    assert held.status_code == 201, held.text
    body = held.json()
    assert body["estimate"] == {"meter": meter, **worst, "cost": expected}
    assert (body["hold"]["amount"], body["hold"]["status"]) == (expected, "pending")
    assert (body["wallet"]["available"], body["wallet"]["held"]) == (10_000 - expected, expected)
    assert (body["transaction"]["kind"], body["replayed"]) == ("hold", False)

    real = {"input_tokens": 101, "output_tokens": 55, "cached_input_tokens": 37}
    cost = await _meter_cost(world, meter, **real)
    assert cost == 284  # ceil(151.5 + 128.33 + 3.7)
    key = secrets.token_hex(8)
    captured = await _capture(world, body["hold"]["id"], key, **real)
    assert captured.status_code == 200, captured.text
    result = captured.json()
    assert (result["meter"], result["cost"], result["charged"], result["released"], result["uncharged"]) == (
        meter,
        cost,
        cost,
        expected - cost,
        0,
    )
    assert (result["hold"]["status"], result["hold"]["captured"]) == ("captured", cost)
    assert (result["wallet"]["available"], result["wallet"]["held"]) == (10_000 - cost, 0)
    assert (result["transaction"]["kind"], result["replayed"]) == ("capture", False)

    # A retry with the same key answers the same capture; another capture is refused.
    again = await _capture(world, body["hold"]["id"], key, **real)
    assert again.status_code == 200, again.text
    assert (again.json()["charged"], again.json()["cost"], again.json()["replayed"]) == (cost, cost, True)
    assert again.json()["transaction"]["id"] == result["transaction"]["id"]
    other = await _capture(world, body["hold"]["id"], input_tokens=1, output_tokens=1)
    assert_error(other, 409, "conflict", "hold_not_pending", "hold_id")
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (10_000 - cost, 0)
    # Still an ordinary ledger hold.
    read = await world.client.get(f"/v1/holds/{body['hold']['id']}", headers=world.usage.headers)
    assert (read.json()["status"], read.json()["captured"]) == ("captured", cost)


async def test_a_cost_beyond_the_estimate_is_capped_at_the_hold_and_reported(world: World) -> None:
    meter = await world.meter(kind="model", input_price=1_000_000, output_price=2_000_000)
    await world.grant(1000)
    hold = (await _hold(world, meter, input_tokens=10, max_output_tokens=10)).json()["hold"]
    assert hold["amount"] == 30
    result = (await _capture(world, hold["id"], input_tokens=10, output_tokens=40)).json()
    assert (result["cost"], result["charged"], result["released"], result["uncharged"]) == (90, 30, 0, 60)
    assert (await world.wallet_state())["balance"] == 970


async def test_a_hold_of_an_amount_is_captured_by_amount_and_says_what_was_released(world: World) -> None:
    await world.grant(100)
    held = await _hold(world, None, amount=40)
    assert held.status_code == 201, held.text
    assert held.json()["estimate"] is None
    result = (await _capture(world, held.json()["hold"]["id"], amount=15)).json()
    assert (result["charged"], result["released"], result["uncharged"]) == (15, 25, 0)
    assert (result["meter"], result["cost"]) == (None, None)
    assert (await world.wallet_state())["balance"] == 85


async def test_an_amount_and_an_estimate_at_once_or_neither_are_refused_and_change_nothing(
    world: World,
) -> None:
    meter = await _model(world)
    await world.grant(1000)
    both = await _hold(world, meter, amount=5, input_tokens=1, max_output_tokens=1)
    assert_error(both, 400, "invalid_request_error", "amount_or_estimate", "estimate")
    neither = await world.client.post(
        "/v1/holds",
        json={"wallet": world.wallet, "idempotency_key": secrets.token_hex(8)},
        headers=world.usage.headers,
    )
    assert_error(neither, 400, "invalid_request_error", "amount_or_estimate", "amount")

    held = (await _hold(world, meter, input_tokens=10, max_output_tokens=10)).json()["hold"]
    before = await world.wallet_state()
    both = await _capture(world, held["id"], amount=5, input_tokens=1, output_tokens=1)
    assert_error(both, 400, "invalid_request_error", "amount_or_usage", "usage")
    assert await world.wallet_state() == before
    read = await world.client.get(f"/v1/holds/{held['id']}", headers=world.usage.headers)
    assert (read.json()["status"], read.json()["captured"]) == ("pending", 0)
    # Only the one hold was made.
    assert (before["held"], before["balance"]) == (held["amount"], 1000)


async def test_refused_estimates_change_nothing(world: World) -> None:
    meter = await world.meter(
        kind="model", input_price=1_000_000, output_price=2_000_000, cached_input_price=500_000
    )
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
    # Another user's wallet does not exist for this key.
    response = await world.client.post(
        "/v1/holds",
        json={
            "wallet": world.wallet,
            "estimate": {"meter": meter, "input_tokens": 1, "max_output_tokens": 1},
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
    meter = await world.meter(kind="model", input_price=1_000_000, output_price=2_000_000)
    await world.grant(100)
    plain = await _hold(world, None, amount=10)
    assert plain.status_code == 201, plain.text
    assert_error(
        await _capture(world, plain.json()["hold"]["id"], input_tokens=1, output_tokens=1),
        400,
        "invalid_request_error",
        "hold_not_estimated",
        "hold_id",
    )
    estimated = (await _hold(world, meter, input_tokens=1, max_output_tokens=1)).json()["hold"]["id"]
    response = await _capture(
        world, estimated, headers=world.other_usage.headers, input_tokens=1, output_tokens=1
    )
    assert_error(response, 404, "not_found", "resource_missing", "hold_id")
    wallet = await world.wallet_state()
    assert (wallet["balance"], wallet["held"]) == (100, 13)
