"""Usage events over HTTP on both engines: priced by the catalog, charged once per id, refused without a trace
when credits are short, batches answered per event, and a user's key kept to that user's wallets."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.db import Database
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Account, Transaction
from prepaid.metering.models import UsageEvent
from tests import factories
from tests.factories import make_admin, make_api_key, make_customer
from tests.helpers import assert_error


def uid() -> str:
    return f"ev-{secrets.token_hex(6)}"


async def default_wallet(db: Database, user_id: str) -> str:
    async with db.transaction(write=False) as session:
        return (await ledger_service.default_wallet(session, user_id=user_id)).id


async def available(db: Database, wallet_id: str) -> int:
    async with db.transaction(write=False) as session:
        value = await session.scalar(select(Account.balance).where(Account.id == wallet_id))
    assert value is not None
    return int(value)


async def counts(db: Database) -> tuple[int, int]:
    async with db.transaction(write=False) as session:
        usage = await session.scalar(select(func.count()).select_from(UsageEvent))
        spends = await session.scalar(
            select(func.count()).select_from(Transaction).where(Transaction.kind == "spend")
        )
    return int(usage or 0), int(spends or 0)


async def grant(client: httpx.AsyncClient, admin: factories.TestUser, wallet_id: str, amount: int) -> None:
    response = await client.post(
        f"/v1/wallets/{wallet_id}/grants",
        json={"amount": amount, "idempotency_key": uid()},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text


async def make_meter(client: httpx.AsyncClient, admin: factories.TestUser, code: str, **fields: Any) -> None:
    body = {"code": code, "name": code, "kind": "unit", "unit": "image", "price": 2, "per": 1, **fields}
    response = await client.post("/v1/meters", json=body, headers=admin.headers)
    assert response.status_code == 201, response.text


@pytest.fixture
async def world(app: Any, client: httpx.AsyncClient, db: Database) -> dict[str, Any]:
    admin = await make_admin(app)
    await make_meter(client, admin, "image")
    await make_meter(
        client,
        admin,
        "gpt",
        kind="model",
        unit="token",
        price=None,
        per=None,
        input_price=2,
        output_price=8,
        cached_input_price=1,
    )
    user = await make_customer(app)
    key = await make_api_key(app, user, scopes=["usage:write", "balance:read"])
    wallet = await default_wallet(db, user.id)
    return {"admin": admin, "user": user, "key": key, "wallet": wallet}


async def test_usage_is_priced_charged_and_answers_the_balance_after(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 20)
    event = {"id": uid(), "wallet": world["wallet"], "meter": "IMAGE", "quantity": 3, "metadata": {"p": 1}}
    response = await client.post("/v1/usage", json=event, headers=world["key"].headers)
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["cost"], body["balance_after"], body["asset"], body["meter"]) == (6, 14, "credit", "image")
    assert body["replayed"] is False and body["metadata"] == {"p": 1} and body["transaction"]
    assert await available(db, world["wallet"]) == 14
    tokens = {"id": uid(), "customer": world["user"].id, "meter": "gpt", "input_tokens": 1_000_000}
    tokens |= {"output_tokens": 250_000, "cached_input_tokens": 500_001}
    response = await client.post("/v1/usage", json=tokens, headers=world["key"].headers)
    assert response.status_code == 201, response.text
    # ceil((1e6 * 2 + 250,000 * 8 + 500,001 * 1) / 1e6) = ceil(2 + 2 + 0.500001) = 5 (one ceiling)
    assert (response.json()["cost"], response.json()["balance_after"]) == (5, 9)
    again = await client.post("/v1/usage", json=event, headers=world["key"].headers)
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert again.json()["cost"] == 6 and again.json()["balance_after"] == 14
    assert await available(db, world["wallet"]) == 9
    assert await counts(db) == (2, 2)
    changed = await client.post("/v1/usage", json={**event, "quantity": 4}, headers=world["key"].headers)
    assert_error(changed, 400, "idempotency_error", "usage_id_reused", "id")


async def test_same_usage_id_sent_100_times_at_once_is_charged_once(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 1000)
    event = {"id": uid(), "wallet": world["wallet"], "meter": "image", "quantity": 5}
    responses = await asyncio.gather(
        *(client.post("/v1/usage", json=event, headers=world["key"].headers) for _ in range(100))
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 99 + [201], [r.text for r in responses if r.status_code not in (200, 201)]
    assert {response.json()["transaction"] for response in responses} == {
        next(r.json()["transaction"] for r in responses if r.status_code == 201)
    }
    assert await available(db, world["wallet"]) == 990
    assert await counts(db) == (1, 1)


async def test_402_stores_nothing_and_the_id_works_after_a_top_up(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 3)
    event = {"id": uid(), "wallet": world["wallet"], "meter": "image", "quantity": 2}
    refused = await client.post("/v1/usage", json=event, headers=world["key"].headers)
    error = assert_error(refused, 402, "insufficient_funds", "insufficient_credits", "amount")
    assert error["available"] == 3
    assert await counts(db) == (0, 0) and await available(db, world["wallet"]) == 3
    listed = await client.get("/v1/usage", headers=world["key"].headers)
    assert listed.json()["data"] == []
    await grant(client, world["admin"], world["wallet"], 1)
    charged = await client.post("/v1/usage", json=event, headers=world["key"].headers)
    assert charged.status_code == 201, charged.text
    assert (charged.json()["cost"], charged.json()["balance_after"]) == (4, 0)


async def test_batch_answers_each_event_and_charges_only_valid_affordable_ones(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 10)
    headers = world["key"].headers
    old = {"id": uid(), "wallet": world["wallet"], "meter": "image", "quantity": 1}
    assert (await client.post("/v1/usage", json=old, headers=headers)).status_code == 201  # 8 left
    w = world["wallet"]
    first, big, small, repeat = uid(), uid(), uid(), uid()
    events = [
        {"id": first, "wallet": w, "meter": "image", "quantity": 2},  # valid: 4, 4 left
        old,  # duplicate of an earlier event
        {"id": uid(), "wallet": w, "meter": "nope", "quantity": 1},  # unknown meter
        {"id": big, "wallet": w, "meter": "image", "quantity": 3},  # unaffordable: 6 > 4
        {"id": small, "wallet": w, "meter": "image", "quantity": 1},  # fits: 2, 2 left
        {"id": first, "wallet": w, "meter": "image", "quantity": 2},  # repeat within the batch
        {"id": repeat, "wallet": w, "meter": "image", "quantity": 1.0},  # fits: 2, 0 left
        {"id": uid(), "wallet": w, "meter": "gpt", "quantity": 1},  # a model meter takes token counts
    ]
    response = await client.post("/v1/usage/batch", json={"events": events}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [(item["status"], (item["error"] or {}).get("code")) for item in body["data"]]
    assert statuses == [
        ("charged", None),
        ("duplicate", None),
        ("refused", "meter_not_found"),
        ("refused", "insufficient_credits"),
        ("charged", None),
        ("duplicate", None),
        ("charged", None),
        ("refused", "invalid_field"),
    ]
    assert (body["charged"], body["duplicates"], body["refused"], body["cost"]) == (3, 2, 3, 8)
    after = [item["usage"]["balance_after"] for item in body["data"] if item["status"] == "charged"]
    assert after == [4, 2, 0]
    assert body["data"][3]["error"]["available"] == 4
    assert await available(db, w) == 0
    assert await counts(db) == (4, 2)  # one spend for the earlier event, one for the batch's wallet
    # The refused ones were not stored: the unaffordable id works after a top-up.
    await grant(client, world["admin"], w, 6)
    retry = await client.post("/v1/usage/batch", json={"events": [events[3]]}, headers=headers)
    assert retry.json()["data"][0]["status"] == "charged"
    assert await available(db, w) == 0


async def test_a_users_key_acts_only_on_that_users_wallets(
    app: Any, client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    other = await make_customer(app)
    other_wallet = await default_wallet(db, other.id)
    await grant(client, world["admin"], other_wallet, 50)
    await grant(client, world["admin"], world["wallet"], 50)
    headers = world["key"].headers
    by_wallet = {"id": uid(), "wallet": other_wallet, "meter": "image", "quantity": 1}
    assert_error(
        await client.post("/v1/usage", json=by_wallet, headers=headers),
        404,
        "not_found",
        "resource_missing",
        "wallet",
    )
    by_customer = {"id": uid(), "customer": other.id, "meter": "image", "quantity": 1}
    assert_error(
        await client.post("/v1/usage", json=by_customer, headers=headers),
        404,
        "not_found",
        "resource_missing",
        "customer",
    )
    batch = await client.post("/v1/usage/batch", json={"events": [by_wallet, by_customer]}, headers=headers)
    assert [item["error"]["type"] for item in batch.json()["data"]] == ["not_found", "not_found"]
    assert await available(db, other_wallet) == 50 and await counts(db) == (0, 0)
    # The other user's event, charged by a server key, is not visible to (nor reusable by) this key.
    server = await make_api_key(app, world["admin"], scopes=["usage:write", "balance:read"], server=True)
    assert (await client.post("/v1/usage", json=by_wallet, headers=server.headers)).status_code == 201
    mine = {**by_wallet, "wallet": world["wallet"]}
    assert_error(
        await client.post("/v1/usage", json=mine, headers=headers), 409, "conflict", "usage_id_taken", "id"
    )
    assert (await client.get("/v1/usage", headers=headers)).json()["data"] == []
    everything = await client.get("/v1/usage", headers=server.headers)
    assert [row["id"] for row in everything.json()["data"]] == [by_wallet["id"]]
    assert_error(
        await client.get("/v1/usage", params={"customer": other.id}, headers=headers),
        403,
        "permission_error",
        "customer_forbidden",
        "customer",
    )
    balance_only = await make_api_key(app, world["user"], scopes=["balance:read"])
    own = {"id": uid(), "wallet": world["wallet"], "meter": "image", "quantity": 1}
    assert_error(
        await client.post("/v1/usage", json=own, headers=balance_only.headers),
        403,
        "permission_error",
        "missing_scope",
        "usage:write",
    )
    assert_error(
        await client.post("/v1/usage", json=own, headers=world["user"].headers),
        403,
        "permission_error",
        "api_key_required",
    )


async def test_usage_list_filters_and_summary_per_meter_per_day(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 100)
    headers = world["key"].headers
    w = world["wallet"]
    events = [
        {"id": "a", "wallet": w, "meter": "image", "quantity": 1, "timestamp": "2026-03-01T23:30:00Z"},
        {"id": "b", "wallet": w, "meter": "image", "quantity": 2, "timestamp": "2026-03-02T00:30:00Z"},
        {"id": "c", "wallet": w, "meter": "gpt", "input_tokens": 10, "timestamp": "2026-03-02T01:00:00Z"},
    ]
    events = [{**event, "id": f"{event['id']}-{uid()}"} for event in events]
    response = await client.post("/v1/usage/batch", json={"events": events}, headers=headers)
    assert response.json()["charged"] == 3
    listed = await client.get("/v1/usage", params={"meter": "image", "limit": 1}, headers=headers)
    assert [row["id"] for row in listed.json()["data"]] == [events[1]["id"]] and listed.json()["has_more"]
    older = await client.get(
        "/v1/usage", params={"meter": "image", "starting_after": events[1]["id"]}, headers=headers
    )
    assert [row["id"] for row in older.json()["data"]] == [events[0]["id"]]
    since = await client.get("/v1/usage", params={"since": "2026-03-02T00:00:00Z"}, headers=headers)
    assert {row["id"] for row in since.json()["data"]} == {events[1]["id"], events[2]["id"]}
    summary = (await client.get("/v1/usage/summary", headers=headers)).json()
    assert summary["timezone"] == "UTC"
    rows = [
        (row["day"], row["meter"], row["events"], row["quantity"], row["cost"]) for row in summary["data"]
    ]
    assert rows == [
        ("2026-03-02", "gpt", 1, 0, 1),
        ("2026-03-02", "image", 1, 2, 4),
        ("2026-03-01", "image", 1, 1, 2),
    ]
    bad = await client.get("/v1/usage", params={"starting_after": "missing"}, headers=headers)
    assert_error(bad, 400, "invalid_request_error", "invalid_cursor", "starting_after")


@pytest.mark.parametrize("settings_overrides", [{"report_tz": "Asia/Kolkata"}])
async def test_summary_days_follow_the_report_time_zone(
    client: httpx.AsyncClient, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 100)
    w = world["wallet"]
    events = [
        {"id": uid(), "wallet": w, "meter": "image", "quantity": 1, "timestamp": "2026-03-01T18:00:00Z"},
        {"id": uid(), "wallet": w, "meter": "image", "quantity": 1, "timestamp": "2026-03-01T19:00:00Z"},
    ]
    await client.post("/v1/usage/batch", json={"events": events}, headers=world["key"].headers)
    summary = (await client.get("/v1/usage/summary", headers=world["key"].headers)).json()
    assert summary["timezone"] == "Asia/Kolkata"
    assert [(row["day"], row["events"]) for row in summary["data"]] == [("2026-03-02", 1), ("2026-03-01", 1)]


async def test_bad_usage_input_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 10)
    headers = world["key"].headers
    w = world["wallet"]
    cases = [
        ({"id": uid(), "meter": "image", "quantity": 1}, "customer_or_wallet"),
        ({"id": uid(), "wallet": w, "customer": "x", "meter": "image", "quantity": 1}, "customer_or_wallet"),
        ({"id": uid(), "wallet": w, "meter": "image", "quantity": -1}, "invalid_field"),
        ({"id": uid(), "wallet": w, "meter": "image", "quantity": "1"}, "invalid_field"),
        ({"id": "", "wallet": w, "meter": "image", "quantity": 1}, "invalid_field"),
        ({"id": uid(), "wallet": w, "meter": "image", "quantity": 1, "extra": 1}, "unknown_field"),
    ]
    for body, code in cases:
        response = await client.post("/v1/usage", json=body, headers=headers)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
        if code:
            assert response.json()["error"]["code"] == code, response.text
    unit_tokens = {"id": uid(), "wallet": w, "meter": "image", "input_tokens": 5}
    assert_error(
        await client.post("/v1/usage", json=unit_tokens, headers=headers),
        400,
        "invalid_request_error",
        "missing_field",
        "quantity",
    )
    too_many = {"events": [{"id": uid(), "wallet": w, "meter": "image", "quantity": 1}] * 1001}
    assert (await client.post("/v1/usage/batch", json=too_many, headers=headers)).status_code == 400
    assert await counts(db) == (0, 0) and await available(db, w) == 10


async def test_concurrent_events_and_batches_on_one_wallet_are_all_charged_exactly(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    """Distinct ids at once on one wallet (singles and batches): none fails, the sum is exact. A foreign key
    from the usage row to the wallet would deadlock here on PostgreSQL (its KEY SHARE lock against the
    ledger's FOR UPDATE)."""
    await grant(client, world["admin"], world["wallet"], 1000)
    headers = world["key"].headers
    w = world["wallet"]

    async def single() -> httpx.Response:
        return await client.post(
            "/v1/usage", json={"id": uid(), "wallet": w, "meter": "image", "quantity": 1}, headers=headers
        )

    async def batch() -> httpx.Response:
        events = [{"id": uid(), "wallet": w, "meter": "image", "quantity": 1} for _ in range(10)]
        return await client.post("/v1/usage/batch", json={"events": events}, headers=headers)

    responses = await asyncio.gather(*(single() for _ in range(30)), *(batch() for _ in range(10)))
    assert [r.status_code for r in responses] == [201] * 30 + [200] * 10, [r.text for r in responses][:2]
    assert all(r.json()["charged"] == 10 for r in responses[30:])
    assert await available(db, w) == 1000 - 2 * (30 + 100)
    assert await counts(db) == (130, 40)


async def test_a_stored_event_answers_as_a_duplicate_even_where_it_would_now_be_refused(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 4)
    headers = world["key"].headers
    w = world["wallet"]
    image = {"id": uid(), "wallet": w, "meter": "image", "quantity": 1}  # 2 credits
    broke = {"id": uid(), "wallet": w, "meter": "image", "quantity": 1}
    for event in (image, broke):
        assert (await client.post("/v1/usage", json=event, headers=headers)).status_code == 201
    assert await available(db, w) == 0
    archived = await client.patch("/v1/meters/image", json={"active": False}, headers=world["admin"].headers)
    assert archived.status_code == 200, archived.text

    # The meter is inactive and the wallet empty now: a stored id still answers its stored event, and a new
    # event beside them is refused for the meter.
    new = {"id": uid(), "wallet": w, "meter": "image", "quantity": 1}
    response = await client.post("/v1/usage/batch", json={"events": [image, new, broke]}, headers=headers)

    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [(item["status"], (item["error"] or {}).get("code")) for item in data] == [
        ("duplicate", None),
        ("refused", "meter_inactive"),
        ("duplicate", None),
    ]
    assert [data[0]["usage"]["balance_after"], data[2]["usage"]["balance_after"]] == [2, 0]
    single = await client.post("/v1/usage", json=image, headers=headers)
    assert single.status_code == 200 and single.json()["replayed"] is True, single.text
    assert await counts(db) == (2, 2)
