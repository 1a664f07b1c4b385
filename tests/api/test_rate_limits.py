"""Rate limits per route class and per user, key or address: ``429 rate_limit_error`` with ``Retry-After``."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from prepaid.auth.models import User
from prepaid.errors import RateLimited
from prepaid.ratelimit import RateLimiter
from prepaid.settings import Settings
from tests.conftest import skip_or_fail
from tests.factories import make_api_key, make_customer, make_user
from tests.helpers import login

LIMITED = {"rate_limits_enabled": True, "trusted_proxies": "127.0.0.1"}
REDIS_URL = os.environ.get("PREPAID_TEST_REDIS_URL", "")


def from_ip(ip: str) -> dict[str, str]:
    """The test client talks from 127.0.0.1, a trusted proxy here, so X-Forwarded-For names the client."""
    return {"X-Forwarded-For": ip}


def assert_limited(response: httpx.Response, window_seconds: int = 60) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "rate_limited"
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= window_seconds


@pytest.mark.parametrize(
    "settings_overrides",
    [{**LIMITED, "rate_limit_login_ip": "3/minute", "rate_limit_login_email": "100/minute"}],
)
async def test_the_fourth_login_from_one_address_is_429(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    other = await make_customer(app)
    assert (await login(client, user.email, user.password)).status_code == 200
    assert (await login(client, user.email, "wrong password")).status_code == 401  # failures count too
    assert (await login(client, "nobody@example.com", "whatever")).status_code == 401  # any email counts
    fourth = await login(client, user.email, user.password)
    assert_limited(fourth)
    assert "access_token" not in fourth.text
    # a token of one's own does not turn the per-address limit into a per-user one
    assert_limited(
        await login(client, user.email, user.password, Authorization=f"Bearer {other.access_token}")
    )
    # another address has its own allowance
    elsewhere = await login(client, user.email, user.password, **from_ip("203.0.113.9"))
    assert elsewhere.status_code == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [{**LIMITED, "rate_limit_login_ip": "100/minute", "rate_limit_login_email": "2/minute"}],
)
async def test_logins_are_limited_per_email_from_any_address(app: Any, client: httpx.AsyncClient) -> None:
    target = await make_user(app)
    bystander = await make_user(app, password=target.password)
    assert (await login(client, target.email, "guess one", **from_ip("198.51.100.1"))).status_code == 401
    assert (
        await login(client, target.email.upper(), "guess two", **from_ip("198.51.100.2"))
    ).status_code == 401
    # even the right password waits now, from a third address, for the same (normalised) email
    assert_limited(await login(client, f" {target.email} ", target.password, **from_ip("198.51.100.3")))
    assert (
        await login(client, bystander.email, bystander.password, **from_ip("198.51.100.1"))
    ).status_code == 200
    # password reset requests count against the same email
    reset = await client.post("/v1/auth/password_reset", json={"email": target.email})
    assert_limited(reset)


@pytest.mark.parametrize(
    "settings_overrides", [{**LIMITED, "rate_limit_read": "2/minute", "rate_limit_write": "2/minute"}]
)
async def test_read_and_write_limits_are_per_caller(app: Any, client: httpx.AsyncClient) -> None:
    alice = await make_customer(app)
    bob = await make_customer(app)
    key = await make_api_key(app, alice, scopes=["balance:read"])

    for _ in range(2):
        assert (await client.get("/v1/me", headers=alice.headers)).status_code == 200
    assert_limited(await client.get("/v1/me", headers=alice.headers))
    assert_limited(await client.get("/v1/api_keys", headers=alice.headers))  # every read route shares it

    # another user, and Alice's own API key, are callers of their own
    assert (await client.get("/v1/me", headers=bob.headers)).status_code == 200
    assert (await client.get("/v1/me", headers=key.headers)).status_code == 200
    # writes are another class
    for name in ("one", "two"):
        assert (await client.patch("/v1/me", json={"name": name}, headers=alice.headers)).status_code == 200
    limited = await client.patch("/v1/me", json={"name": "three"}, headers=alice.headers)
    assert_limited(limited)
    me = await client.get("/v1/me", headers=bob.headers)
    assert me.status_code == 200
    assert (await client.patch("/v1/me", json={"name": "bob"}, headers=bob.headers)).status_code == 200

    # nothing changed by the refused write
    async with app.state.db.transaction(write=False) as session:
        assert (await session.get(User, alice.id)).name == "two"


@pytest.mark.parametrize("settings_overrides", [{**LIMITED, "rate_limit_read": "2/minute"}])
async def test_anonymous_callers_are_limited_per_address(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        assert (await client.get("/v1/me", headers=from_ip("192.0.2.7"))).status_code == 401
    assert_limited(await client.get("/v1/me", headers=from_ip("192.0.2.7")))
    assert (await client.get("/v1/me", headers=from_ip("192.0.2.8"))).status_code == 401


@pytest.mark.parametrize(
    "settings_overrides", [{**LIMITED, "trusted_proxies": "", "rate_limit_read": "2/minute"}]
)
async def test_forwarded_for_is_ignored_from_an_untrusted_peer(client: httpx.AsyncClient) -> None:
    for ip in ("192.0.2.1", "192.0.2.2"):
        assert (await client.get("/v1/me", headers=from_ip(ip))).status_code == 401
    assert_limited(await client.get("/v1/me", headers=from_ip("192.0.2.3")))


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limits_enabled": False, "rate_limit_read": "1/minute"}]
)
async def test_limits_can_be_switched_off(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    for _ in range(3):
        assert (await client.get("/v1/me", headers=user.headers)).status_code == 200


# ---------------------------------------------------------------- Redis


@pytest.fixture
async def redis_client() -> AsyncIterator[redis.Redis]:
    if not REDIS_URL:
        skip_or_fail("the Redis tests need PREPAID_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15)")
    client = redis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except Exception as error:
        await client.aclose()
        skip_or_fail(f"Redis at {REDIS_URL} is not reachable ({type(error).__name__}: {error})")
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    "settings_overrides", [{**LIMITED, "redis_url": REDIS_URL, "rate_limit_read": "2/minute"}]
)
async def test_redis_storage_shares_counters_between_processes(
    app: Any, client: httpx.AsyncClient, settings: Settings, redis_client: redis.Redis
) -> None:
    alice = await make_customer(app)
    bob = await make_customer(app)
    try:
        for _ in range(2):
            assert (await client.get("/v1/me", headers=alice.headers)).status_code == 200
        assert_limited(await client.get("/v1/me", headers=alice.headers))
        assert (await client.get("/v1/me", headers=bob.headers)).status_code == 200

        stored = [key async for key in redis_client.scan_iter(match=f"*{alice.id}*")]
        assert stored, "the counters live in Redis"
        # another process (its own limiter on the same Redis) sees the same count
        other_process = RateLimiter(settings)
        with pytest.raises(RateLimited):
            await other_process.hit("read", alice.id)
        await other_process.hit("read", bob.id)  # Bob has one left
    finally:
        for who in (alice.id, bob.id):
            keys = [key async for key in redis_client.scan_iter(match=f"*{who}*")]
            if keys:
                await redis_client.delete(*keys)


async def test_a_limiter_without_redis_keeps_counters_in_memory() -> None:
    settings = Settings(_env_file=None, rate_limits_enabled=True, rate_limit_write="1/minute")
    limiter = RateLimiter(settings)
    who = f"usr_{secrets.token_hex(8)}"
    await limiter.hit("write", who)
    with pytest.raises(RateLimited) as refused:
        await limiter.hit("write", who)
    assert 1 <= refused.value.retry_after <= 60
    assert refused.value.headers == {"Retry-After": str(refused.value.retry_after)}
    await limiter.reset()
    await limiter.hit("write", who)
