"""What a batch writes and answers, on both engines: the rows are written once with the balance and transaction
the charge is expected to give them, and corrected when the wallet changed meanwhile; the answer (serialised
without a model per event) is exactly what the ``UsageBatchRead`` schema gives; an event stored with the first
releases' request hash is still recognised."""

# ruff: noqa: F811  (the ``world`` fixture of test_usage.py, imported, is the tests' parameter)

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from prepaid import ids
from prepaid.catalog import service as catalog_service
from prepaid.db import Database
from prepaid.ledger.models import Posting
from prepaid.metering import usage as usage_service
from prepaid.metering.models import UsageEvent
from prepaid.metering.schemas import UsageBatchRead, UsageCreate
from tests.helpers import assert_error
from tests.metering.test_usage import available, grant, uid, world  # noqa: F401  (the fixture)


async def stored_rows(db: Database, wallet_id: str) -> list[UsageEvent]:
    async with db.transaction(write=False) as session:
        return list(await session.scalars(select(UsageEvent).where(UsageEvent.wallet_id == wallet_id)))


async def test_concurrent_batches_store_each_events_balance_after_and_transaction(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    """Requests at once on one wallet: each finds the wallet changed by the others when it locks it, so the
    rows written with the expected balance are shifted. Every event cost 2, one after the other: the balances
    after them are exactly 998, 996, ..., and each row names the transaction that charged it."""
    await grant(client, world["admin"], world["wallet"], 1000)
    headers, w = world["key"].headers, world["wallet"]

    async def batch(size: int) -> httpx.Response:
        events = [{"id": uid(), "wallet": w, "meter": "image", "quantity": 1} for _ in range(size)]
        if size == 1:
            return await client.post("/v1/usage", json=events[0], headers=headers)
        return await client.post("/v1/usage/batch", json={"events": events}, headers=headers)

    responses = await asyncio.gather(*(batch(size) for size in [7, 1, 12, 1, 5, 9, 1, 20] * 3))
    assert all(r.status_code in (200, 201) for r in responses), [r.text for r in responses][:2]
    answered: dict[str, tuple[int, str]] = {}
    for response in responses:
        body = response.json()
        usages = [item["usage"] for item in body["data"]] if "data" in body else [body]
        answered.update({u["id"]: (u["balance_after"], u["transaction"]) for u in usages})
    rows = await stored_rows(db, w)
    total = 3 * (7 + 1 + 12 + 1 + 5 + 9 + 1 + 20)
    assert len(rows) == len(answered) == total
    assert sorted(row.balance_after for row in rows) == list(range(1000 - 2 * total, 1000, 2))
    assert {row.event_id: (row.balance_after, row.transaction_id) for row in rows} == answered
    assert await available(db, w) == 1000 - 2 * total
    async with db.transaction(write=False) as session:
        moved = dict(
            (
                await session.execute(
                    select(Posting.transaction_id, Posting.amount).where(
                        Posting.account_id == w, Posting.amount < 0
                    )
                )
            ).all()
        )
    per_transaction = Counter(row.transaction_id for row in rows)
    assert {txn: -2 * n for txn, n in per_transaction.items()} == moved


async def test_the_batch_answer_is_the_schemas_and_matches_the_stored_events(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 7)
    headers, w = world["key"].headers, world["wallet"]
    old = {"id": uid(), "wallet": w, "meter": "image", "quantity": 1}
    assert (await client.post("/v1/usage", json=old, headers=headers)).status_code == 201  # 5 left
    when = "2026-01-02T03:04:05.678901+05:30"
    events = [
        {
            "id": uid(),
            "wallet": w,
            "meter": "image",
            "quantity": 1,
            "metadata": {"a": [1, 2.5, None], "b": "é"},
        },
        old,
        {"id": uid(), "wallet": w, "meter": "nope", "quantity": 1},
        {"id": uid(), "customer": world["user"].id, "meter": "gpt", "input_tokens": 10, "timestamp": when},
        {"id": uid(), "wallet": w, "meter": "image", "quantity": 9},
    ]
    response = await client.post("/v1/usage/batch", json={"events": events}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    parsed = UsageBatchRead.model_validate_json(response.content)
    assert parsed.model_dump_json().encode() == response.content
    assert [item.status for item in parsed.data] == ["charged", "duplicate", "refused", "charged", "refused"]
    assert parsed.data[4].error is not None and parsed.data[4].error.available == 2
    assert (parsed.charged, parsed.duplicates, parsed.refused, parsed.cost) == (2, 1, 2, 3)
    listed = await client.get("/v1/usage", params={"wallet": w, "limit": 10}, headers=headers)
    by_id = {item["id"]: item for item in listed.json()["data"]}
    assert len(by_id) == 3
    for item in response.json()["data"]:
        if item["status"] == "charged":
            assert {**item["usage"], "replayed": False} == by_id[item["id"]]
    token_event = by_id[events[3]["id"]]
    assert token_event["timestamp"] == "2026-01-01T21:34:05.678901Z" and token_event["cost"] == 1
    assert by_id[events[0]["id"]]["metadata"] == {"a": [1, 2.5, None], "b": "é"}
    assert by_id[events[0]["id"]]["balance_after"] == 3 and token_event["balance_after"] == 2


async def test_an_event_stored_with_the_first_request_hash_is_still_recognised(
    client: httpx.AsyncClient, db: Database, world: dict[str, Any]
) -> None:
    await grant(client, world["admin"], world["wallet"], 10)
    headers = world["key"].headers
    event = {"id": uid(), "wallet": world["wallet"], "meter": "Image", "quantity": 2, "metadata": {"k": 1}}
    event["timestamp"] = datetime(2026, 3, 1, tzinfo=UTC).isoformat()
    assert (await client.post("/v1/usage", json=event, headers=headers)).status_code == 201
    legacy = usage_service._legacy_request_hash(UsageCreate.model_validate(event))
    assert len(legacy) == 64 and not legacy.startswith("~")
    async with db.transaction() as session:
        await session.execute(
            update(UsageEvent).where(UsageEvent.event_id == event["id"]).values(request_hash=legacy)
        )
    again = await client.post("/v1/usage", json=event, headers=headers)
    assert again.status_code == 200 and again.json()["replayed"] is True
    batch = await client.post("/v1/usage/batch", json={"events": [event]}, headers=headers)
    assert batch.json()["data"][0]["status"] == "duplicate"
    changed = await client.post("/v1/usage", json={**event, "metadata": {"k": 2}}, headers=headers)
    assert_error(changed, 400, "idempotency_error", "usage_id_reused", "id")
    assert await available(db, world["wallet"]) == 6  # charged once: 2 images at 2


def test_the_request_hash_tells_apart_what_changes_the_event() -> None:
    base = {"id": "e", "wallet": "wal_x", "meter": "m", "quantity": 1}
    variants = [
        base,
        {**base, "quantity": 2},
        {**base, "meter": "n"},
        {**base, "metadata": {}},
        {**base, "metadata": {"a": 1}},
        {**base, "metadata": {"a": "1"}},
        {**base, "timestamp": "2026-01-01T00:00:00Z"},
        {"id": "e", "customer": "wal_x", "meter": "m", "quantity": 1},
        {"id": "e", "wallet": "wal_x", "meter": "m", "input_tokens": 1},
    ]
    hashes = [usage_service._request_hash(UsageCreate.model_validate(v)) for v in variants]
    assert len(set(hashes)) == len(variants)
    assert all(len(h) == 64 and h.startswith("~") for h in hashes)
    same = usage_service._request_hash(UsageCreate.model_validate({**base, "meter": " M "}))
    assert same == hashes[0]  # the meter as stored: trimmed, lower-case
    reordered = [{**base, "metadata": {"a": 1, "b": 2}}, {**base, "metadata": {"b": 2, "a": 1}}]
    assert len({usage_service._request_hash(UsageCreate.model_validate(v)) for v in reordered}) == 1


def test_usage_row_ids_made_in_bulk_are_ids_as_new_id_makes_them_in_order() -> None:
    made = [*ids.new_ids("usg", 3), ids.new_id("usg"), *ids.new_ids("usg", 2000), ids.new_id("usg")]
    assert made == sorted(made) and len(set(made)) == len(made)
    assert all(ids.has_prefix(value, "usg") and set(value[4:]) <= set(ids._ALPHABET) for value in made)
    millis, random = ids._last
    assert made[-1] == f"usg_{ids._encode(millis, 10)}{ids._encode(random, 16)}"
    bulk = ids.new_ids("usg", 5)
    millis, random = ids._last
    assert bulk[-1] == f"usg_{ids._encode(millis, 10)}{ids._encode(random, 16)}"
    assert ids.new_ids("usg", 0) == []
    with pytest.raises(ValueError):
        ids.new_ids("nope", 1)


def test_request_hashes_are_the_repr_of_the_canonical_tuple() -> None:
    """The hashes stored with every event are SHA-256 of ``repr`` of the canonical tuple; the text written
    directly must stay that, whatever the fields hold."""
    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    shapes: list[dict[str, Any]] = [
        {"customer": "c-1", "meter": "Image", "quantity": 3},
        {"wallet": "wal_x", "meter": "gpt", "input_tokens": 10, "output_tokens": 0, "cached_input_tokens": 2},
        {"customer": "None", "meter": "m", "quantity": 0, "timestamp": when},
        {"customer": 'it\'s \\ "quoted" é', "meter": "m", "metadata": {"b": [1, 2.5], "a": {"ü": None}}},
        {"customer": "c-1", "wallet": "wal_x", "meter": "m", "metadata": {}},
    ]
    events = [UsageCreate.model_validate({"id": f"e-{n}", **shape}) for n, shape in enumerate(shapes)]
    events += [events[0].model_copy(update={"quantity": 4}), events[0]]  # a head written once, used again

    written = usage_service._request_hashes(events)

    for event, digest in zip(events, written, strict=True):
        metadata = event.metadata
        canonical = (
            event.customer,
            event.wallet,
            catalog_service.normalize_code(event.meter),
            event.quantity,
            event.input_tokens,
            event.output_tokens,
            event.cached_input_tokens,
            event.timestamp.isoformat() if event.timestamp else None,
            json.dumps(metadata, sort_keys=True, default=str) if metadata else metadata,
        )
        assert digest == "~" + hashlib.sha256(repr(canonical).encode()).hexdigest()[:63]
    assert written[0] != written[5] and written[0] == written[6]
