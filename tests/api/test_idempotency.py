"""``Idempotency-Key`` on POST: stored and replayed byte for byte, 400 for another body, 409 mid-flight."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import select, update

from prepaid import idempotency
from prepaid.auth.models import ApiKey, User
from prepaid.db import Database, utcnow
from prepaid.idempotency import IdempotencyRecord
from prepaid.notify.models import OutboxMessage
from tests.factories import make_customer
from tests.helpers import count

REGISTER = {"email": "grace@example.com", "password": "correct horse battery", "name": "Grace"}
KEY_BODY = {"name": "ci", "scopes": ["usage:write"]}


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


async def records(db: Database, idempotency_key: str) -> list[IdempotencyRecord]:
    async with db.transaction(write=False) as session:
        rows = await session.scalars(
            select(IdempotencyRecord).where(IdempotencyRecord.key == idempotency_key)
        )
        return list(rows.all())


def assert_replayed(first: httpx.Response, again: httpx.Response) -> None:
    assert again.status_code == first.status_code
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in first.headers


# ---------------------------------------------------------------- replay


async def test_same_key_and_body_replays_the_response_and_registers_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    first = await client.post("/v1/auth/register", json=REGISTER, headers=key("reg-1"))
    assert first.status_code == 201, first.text
    again = await client.post("/v1/auth/register", json=REGISTER, headers=key("reg-1"))
    assert_replayed(first, again)
    assert await count(db, User) == 1
    assert await count(db, OutboxMessage) == 1  # one verification email, not two
    [record] = await records(db, "reg-1")
    assert record.status == "done"
    assert record.response_status == 201
    assert record.response_body is not None and first.content not in record.response_body  # sealed
    assert record.expires_at - record.created_at == timedelta(hours=24)


async def test_without_a_key_the_same_request_runs_again(client: httpx.AsyncClient, db: Database) -> None:
    first = await client.post("/v1/auth/register", json=REGISTER)
    assert first.status_code == 201
    again = await client.post("/v1/auth/register", json=REGISTER)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "email_taken"
    assert await count(db, IdempotencyRecord) == 0


async def test_api_key_creation_replayed_mints_one_key_and_shows_the_same_secret(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_customer(app)
    headers = {**user.headers, **key("mint-1")}
    first = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert first.status_code == 201, first.text
    again = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert_replayed(first, again)
    assert again.json()["secret"] == first.json()["secret"]
    assert await count(db, ApiKey) == 1
    listed = await client.get("/v1/api_keys", headers=user.headers)
    assert [k["id"] for k in listed.json()["data"]] == [first.json()["id"]]


async def test_stored_answers_are_sealed_so_the_database_holds_no_secret(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_customer(app)
    headers = {**user.headers, **key("sealed-1")}
    created = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert created.status_code == 201
    secret = created.json()["secret"].encode()
    [record] = await records(db, "sealed-1")
    assert record.response_body is not None and secret not in record.response_body
    # the seal opens only with the same caller, key and body: another body cannot read it
    cipher = idempotency._cipher(app.state.settings.secret_key, user.id, "sealed-1", b"{}")
    with pytest.raises(InvalidTag):
        idempotency.unseal(cipher, record.response_body)


async def test_a_replay_repeats_the_answers_own_headers(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/v1/me", headers={"Authorization": "Bearer nonsense"})
    assert anonymous.status_code == 401
    first = await client.post(
        "/v1/api_keys", json=KEY_BODY, headers={"Authorization": "Bearer nonsense", **key("hdr-1")}
    )
    again = await client.post(
        "/v1/api_keys", json=KEY_BODY, headers={"Authorization": "Bearer nonsense", **key("hdr-1")}
    )
    assert first.status_code == 401
    assert_replayed(first, again)
    assert again.headers["www-authenticate"] == first.headers["www-authenticate"] == "Bearer"


async def test_a_client_error_is_stored_and_replayed(client: httpx.AsyncClient, db: Database) -> None:
    bad = {**REGISTER, "password": "short"}
    first = await client.post("/v1/auth/register", json=bad, headers=key("bad-1"))
    assert first.status_code == 400
    again = await client.post("/v1/auth/register", json=bad, headers=key("bad-1"))
    assert_replayed(first, again)
    assert await count(db, User) == 0


async def test_get_requests_ignore_the_key(app: Any, client: httpx.AsyncClient, db: Database) -> None:
    user = await make_customer(app)
    response = await client.get("/v1/me", headers={**user.headers, **key("read-1")})
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers
    assert await count(db, IdempotencyRecord) == 0


async def test_an_invalid_key_is_refused(client: httpx.AsyncClient, db: Database) -> None:
    for bad in ("x" * 256, "tab\there", ""):
        response = await client.post("/v1/auth/register", json=REGISTER, headers=key(bad))
        assert response.status_code == 400, bad
        error = response.json()["error"]
        assert error["code"] == "invalid_idempotency_key"
        assert error["param"] == "Idempotency-Key"
    assert await count(db, User) == 0
    ok = await client.post("/v1/auth/register", json=REGISTER, headers=key("x" * 255))
    assert ok.status_code == 201


# ---------------------------------------------------------------- another body


async def test_same_key_with_another_body_is_an_idempotency_error(
    client: httpx.AsyncClient, db: Database
) -> None:
    first = await client.post("/v1/auth/register", json=REGISTER, headers=key("reg-2"))
    assert first.status_code == 201
    other = await client.post(
        "/v1/auth/register", json={**REGISTER, "email": "other@example.com"}, headers=key("reg-2")
    )
    assert other.status_code == 400
    error = other.json()["error"]
    assert error["type"] == "idempotency_error"
    assert error["param"] == "Idempotency-Key"
    assert "idempotent-replayed" not in other.headers
    # another route with the same key is another request, too
    login = await client.post(
        "/v1/auth/login",
        json={"email": REGISTER["email"], "password": REGISTER["password"]},
        headers=key("reg-2"),
    )
    assert login.status_code == 400
    assert login.json()["error"]["type"] == "idempotency_error"
    assert await count(db, User) == 1
    # the stored answer is untouched by the refusals
    again = await client.post("/v1/auth/register", json=REGISTER, headers=key("reg-2"))
    assert_replayed(first, again)


# ---------------------------------------------------------------- concurrency


def add_slow_route(app: Any) -> tuple[asyncio.Event, asyncio.Event, list[int]]:
    """A route that waits until released, so a second request can arrive while the first is running."""
    entered, release, calls = asyncio.Event(), asyncio.Event(), []

    async def slow(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        entered.set()
        await release.wait()
        return {"object": "slow", "echo": body, "call": len(calls)}

    app.add_api_route("/v1/test-only/slow", slow, methods=["POST"])
    return entered, release, calls


async def test_a_concurrent_duplicate_is_409_and_runs_once(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    entered, release, calls = add_slow_route(app)
    first_task = asyncio.create_task(client.post("/v1/test-only/slow", json={"n": 1}, headers=key("race-1")))
    await asyncio.wait_for(entered.wait(), timeout=30)

    duplicate = await client.post("/v1/test-only/slow", json={"n": 1}, headers=key("race-1"))
    assert duplicate.status_code == 409
    error = duplicate.json()["error"]
    assert error["type"] == "conflict"
    assert error["code"] == "idempotency_key_in_use"
    [record] = await records(db, "race-1")
    assert record.status == "in_progress"

    release.set()
    first = await first_task
    assert first.status_code == 200
    assert first.json() == {"object": "slow", "echo": {"n": 1}, "call": 1}
    after = await client.post("/v1/test-only/slow", json={"n": 1}, headers=key("race-1"))
    assert_replayed(first, after)
    assert len(calls) == 1


async def test_duplicates_racing_through_gather_run_the_route_once(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    entered, release, calls = add_slow_route(app)

    async def release_soon() -> None:
        await entered.wait()
        for _ in range(50):  # let the other requests reach the middleware while the first one runs
            await asyncio.sleep(0)
        release.set()

    responses = await asyncio.gather(
        *(client.post("/v1/test-only/slow", json={"n": 2}, headers=key("race-2")) for _ in range(5)),
        release_soon(),
    )
    statuses = sorted(r.status_code for r in responses if r is not None)
    assert len(calls) == 1
    assert statuses.count(200) >= 1
    assert set(statuses) <= {200, 409}
    originals = [r for r in responses if r is not None and r.status_code == 200]
    assert len({r.content for r in originals}) == 1
    assert sum(1 for r in originals if "idempotent-replayed" not in r.headers) == 1


async def test_a_claim_left_by_a_dead_process_is_taken_again_after_a_while(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_customer(app)
    headers = {**user.headers, **key("crash-1")}
    first = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert first.status_code == 201
    # as if the process had died mid-request: the claim is in progress and has no answer
    async with db.transaction() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "crash-1")
            .values(status="in_progress", response_status=None, response_body=None)
        )
    busy = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert busy.status_code == 409
    async with db.transaction() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "crash-1")
            .values(created_at=utcnow() - idempotency.ABANDONED_AFTER - timedelta(seconds=1))
        )
    retried = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    [record] = await records(db, "crash-1")
    assert record.status == "done"
    again = await client.post("/v1/api_keys", json=KEY_BODY, headers=headers)
    assert_replayed(retried, again)


# ---------------------------------------------------------------- scope


async def test_keys_are_scoped_per_caller(app: Any, client: httpx.AsyncClient, db: Database) -> None:
    alice = await make_customer(app)
    bob = await make_customer(app)
    for_alice = await client.post("/v1/api_keys", json=KEY_BODY, headers={**alice.headers, **key("shared")})
    for_bob = await client.post("/v1/api_keys", json=KEY_BODY, headers={**bob.headers, **key("shared")})
    assert for_alice.status_code == for_bob.status_code == 201
    assert "idempotent-replayed" not in for_bob.headers
    assert for_alice.json()["user_id"] == alice.id
    assert for_bob.json()["user_id"] == bob.id
    assert for_alice.json()["secret"] != for_bob.json()["secret"]
    again = await client.post("/v1/api_keys", json=KEY_BODY, headers={**alice.headers, **key("shared")})
    assert_replayed(for_alice, again)
    # a key Alice used is free for Bob with another body: his key space is his own
    assert (
        await client.post("/v1/api_keys", json=KEY_BODY, headers={**alice.headers, **key("k2")})
    ).status_code == 201
    bob_other = await client.post(
        "/v1/api_keys", json={**KEY_BODY, "name": "bob"}, headers={**bob.headers, **key("k2")}
    )
    assert bob_other.status_code == 201
    assert bob_other.json()["name"] == "bob"
    assert await count(db, ApiKey) == 4
    assert {r.caller for r in await records(db, "shared")} == {alice.id, bob.id}


async def test_an_anonymous_answer_is_never_replayed_to_a_signed_in_caller(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_customer(app)
    anonymous = await client.post("/v1/api_keys", json=KEY_BODY, headers=key("anon-1"))
    assert anonymous.status_code == 401
    as_user = await client.post("/v1/api_keys", json=KEY_BODY, headers={**user.headers, **key("anon-1")})
    assert as_user.status_code == 201
    assert "idempotent-replayed" not in as_user.headers
    anonymous_again = await client.post("/v1/api_keys", json=KEY_BODY, headers=key("anon-1"))
    assert_replayed(anonymous, anonymous_again)
    # a bad token is no credential: it does not reach the signed-in caller's answer either
    forged = await client.post(
        "/v1/api_keys", json=KEY_BODY, headers={"Authorization": "Bearer forged", **key("anon-1")}
    )
    assert forged.status_code == 401
    assert await count(db, ApiKey) == 1


# ---------------------------------------------------------------- what is not stored


async def test_a_server_error_is_not_stored_and_the_retry_runs(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    calls: list[int] = []

    async def flaky(body: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the first attempt breaks")
        return {"object": "flaky", "call": len(calls)}

    app.add_api_route("/v1/test-only/flaky", flaky, methods=["POST"])
    failed = await client.post("/v1/test-only/flaky", json={}, headers=key("flaky-1"))
    assert failed.status_code == 500
    assert failed.json()["error"]["type"] == "api_error"
    assert await records(db, "flaky-1") == []
    retried = await client.post("/v1/test-only/flaky", json={}, headers=key("flaky-1"))
    assert retried.status_code == 200
    assert retried.json() == {"object": "flaky", "call": 2}
    again = await client.post("/v1/test-only/flaky", json={}, headers=key("flaky-1"))
    assert_replayed(retried, again)
    assert len(calls) == 2


async def test_a_conflict_is_not_stored_and_the_retry_runs(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    holder = await make_customer(app, email=REGISTER["email"])
    conflict = await client.post("/v1/auth/register", json=REGISTER, headers=key("taken-1"))
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "email_taken"
    assert await records(db, "taken-1") == []
    async with db.transaction() as session:
        await session.execute(update(User).where(User.id == holder.id).values(email="moved@example.com"))
    retried = await client.post("/v1/auth/register", json=REGISTER, headers=key("taken-1"))
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await count(db, User) == 2


@pytest.mark.parametrize("settings_overrides", [{"rate_limits_enabled": True, "rate_limit_auth": "1/minute"}])
async def test_a_rate_limited_answer_is_not_stored(app: Any, client: httpx.AsyncClient, db: Database) -> None:
    first = await client.post("/v1/auth/register", json=REGISTER, headers=key("rl-1"))
    assert first.status_code == 201
    second_body = {**REGISTER, "email": "second@example.com"}
    limited = await client.post("/v1/auth/register", json=second_body, headers=key("rl-2"))
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert await records(db, "rl-2") == []
    await app.state.rate_limiter.reset()
    retried = await client.post("/v1/auth/register", json=second_body, headers=key("rl-2"))
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await count(db, User) == 2


# ---------------------------------------------------------------- expiry


async def test_expired_keys_are_purged_and_may_be_used_afresh(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_customer(app)
    old = await client.post("/v1/api_keys", json=KEY_BODY, headers={**user.headers, **key("old")})
    fresh = await client.post("/v1/api_keys", json=KEY_BODY, headers={**user.headers, **key("fresh")})
    assert old.status_code == fresh.status_code == 201
    async with db.transaction() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    # an expired key is not replayed, even before the purge runs
    reused = await client.post("/v1/api_keys", json=KEY_BODY, headers={**user.headers, **key("old")})
    assert reused.status_code == 201
    assert "idempotent-replayed" not in reused.headers
    assert reused.json()["id"] != old.json()["id"]

    async with db.transaction() as session:
        await session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert await idempotency.purge_expired(db) == 1
    assert await records(db, "old") == []
    assert len(await records(db, "fresh")) == 1
    assert await idempotency.purge_expired(db) == 0
    # the runner carries the purge job
    assert "idempotency_purge" in {job.name for job in app.state.runner.jobs}


@pytest.mark.parametrize("settings_overrides", [{"trusted_proxies": "127.0.0.1"}])
async def test_anonymous_callers_behind_a_proxy_are_scoped_by_their_own_address(
    client: httpx.AsyncClient, db: Database
) -> None:
    first = await client.post(
        "/v1/auth/register", json=REGISTER, headers={**key("signup"), "X-Forwarded-For": "198.51.100.1"}
    )
    assert first.status_code == 201
    # someone else, through the same proxy, with the same key and body: their own request, not her answer
    other = await client.post(
        "/v1/auth/register", json=REGISTER, headers={**key("signup"), "X-Forwarded-For": "198.51.100.2"}
    )
    assert other.status_code == 409
    assert "idempotent-replayed" not in other.headers
    assert REGISTER["email"] not in other.text
    again = await client.post(
        "/v1/auth/register", json=REGISTER, headers={**key("signup"), "X-Forwarded-For": "198.51.100.1"}
    )
    assert_replayed(first, again)
    assert {r.caller for r in await records(db, "signup")} == {"anon:198.51.100.1"}
