"""The realtime stream on real ``prepaid serve`` processes, through a real WebSocket client (``websockets``): a
buyer connected to ``/v1/stream`` sees ``order.paid`` and ``balance.updated`` when their order is paid on the
sandbox, and no one else sees them; a metered session's ``session.tick`` and the ``wallet.low_balance`` its hold
causes reach its owner only (on SQLite and PostgreSQL); credentials and the browser cookie's ``Origin`` are checked at the
handshake. On PostgreSQL, with one ``serve --workers 2`` and a second ``serve`` process, an event caused through
the first reaches clients connected to either (LISTEN/NOTIFY, or Redis pub/sub when configured)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import skip_or_fail
from tests.e2e.conftest import ServerFactory, ServerProcess, form_fields, register, run_prepaid, unique_email
from tests.e2e.test_payments_sandbox import _login, _pay, _wait_for

WAIT = 20.0


@dataclass
class Shop:
    """An admin, a plan to buy, and a signed-in buyer, on one server."""

    admin: dict[str, str]
    plan: str
    buyer: dict[str, str]
    buyer_email: str
    buyer_password: str


def open_shop(server: ServerProcess) -> Shop:
    admin_email, admin_password = unique_email("admin"), "admin-" + secrets.token_urlsafe(12)
    made = run_prepaid(
        "create-admin", "--email", admin_email, "--password", admin_password, env=server.env, cwd=server.cwd
    )
    assert made.returncode == 0, made.output
    buyer_email, buyer_password = unique_email("buyer"), "buyer-" + secrets.token_urlsafe(12)
    with server.client() as http:
        admin = _login(http, admin_email, admin_password)
        code = f"stream-{secrets.token_hex(4)}"
        plan = {"code": code, "name": "Standard", "credits": 500, "bonus_credits": 50}
        created = http.post("/v1/plans", json=plan | {"prices": {"INR": 450_000}}, headers=admin)
        assert created.status_code == 201, created.text
        register(http, email=buyer_email, password=buyer_password)
        buyer = _login(http, buyer_email, buyer_password)
    return Shop(admin, code, buyer, buyer_email, buyer_password)


def buy(server: ServerProcess, shop: Shop) -> dict[str, Any]:
    """The buyer orders the plan and pays on the sandbox's page; answers the fulfilled order."""
    with server.client() as http:
        order = http.post("/v1/orders", json={"plan": shop.plan, "currency": "INR"}, headers=shop.buyer)
        assert order.status_code == 201, order.text
        created: dict[str, Any] = order.json()
        _pay(server, created["checkout"]["redirect_url"], "4111 1111 1111 1111")
        return _wait_for(http, shop.buyer, created["id"], "fulfilled")


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/v1/stream"


@contextlib.contextmanager
def open_stream(
    server: ServerProcess, headers: dict[str, str], origin: str | None = None
) -> Iterator[ClientConnection]:
    """A connected stream, past its ``stream.ready`` message."""
    with connect(ws_url(server), additional_headers=headers, origin=origin, open_timeout=10) as client:  # type: ignore[arg-type]
        ready = json.loads(client.recv(timeout=10))
        assert ready["type"] == "stream.ready", ready
        yield client


def next_events(client: ClientConnection, count: int) -> list[dict[str, Any]]:
    return [json.loads(client.recv(timeout=WAIT)) for _ in range(count)]


def refused(
    server: ServerProcess, headers: dict[str, str], origin: str | None = None
) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as caught:
        connect(ws_url(server), additional_headers=headers, origin=origin, open_timeout=10)  # type: ignore[arg-type]
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")


def test_a_buyer_sees_their_own_order_paid_and_balance_live(servers: ServerFactory) -> None:
    server = servers.serve()
    shop = open_shop(server)
    with server.client() as http:
        register(http, email=(other_email := unique_email("other")), password="other-password-123")
        other = _login(http, other_email, "other-password-123")
    with open_stream(server, shop.buyer) as mine, open_stream(server, other) as theirs:
        order = buy(server, shop)
        paid, balance = next_events(mine, 2)
        assert paid["type"] == "order.paid" and paid["id"].startswith("pev_")
        assert paid["data"] | {"order_id": order["id"], "credits": 500, "bonus_credits": 50} == paid["data"]
        assert (paid["data"]["amount"], paid["data"]["currency"]) == (450_000, "INR")
        assert balance["type"] == "balance.updated"
        assert (
            balance["data"] | {"wallet_id": order["wallet_id"], "available": 550, "balance": 550}
            == (balance["data"])
        )
        with pytest.raises(TimeoutError):
            theirs.recv(timeout=1.0)  # another user's events are not theirs to see
        with pytest.raises(TimeoutError):
            mine.recv(timeout=0.5)  # each event once


def test_the_handshake_checks_credentials_and_the_cookies_origin(servers: ServerFactory) -> None:
    server = servers.serve()
    shop = open_shop(server)
    status, body = refused(server, {})
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    status, body = refused(server, {"Authorization": "Bearer not-a-token"})
    assert (status, body["error"]["type"]) == (401, "authentication_error")
    # an app's API key: the key owner's events, with balance:read
    with server.client() as http:
        keys = {
            scope: http.post("/v1/api_keys", json={"name": scope, "scopes": [scope]}, headers=shop.buyer)
            for scope in ("usage:write", "balance:read")
        }
    assert all(answer.status_code == 201 for answer in keys.values())
    status, body = refused(server, {"Authorization": f"Bearer {keys['usage:write'].json()['secret']}"})
    assert (status, body["error"]["code"]) == (403, "missing_scope")
    with open_stream(server, {"X-Api-Key": keys["balance:read"].json()["secret"]}) as key_stream:
        buy(server, shop)
        assert [event["type"] for event in next_events(key_stream, 2)] == ["order.paid", "balance.updated"]
    # a browser session: only from this server's own pages (PREPAID_BASE_URL)
    with server.client() as browser:
        fields = form_fields(browser.get("/login").text, "/login")
        signed_in = browser.post(
            "/login", data={**fields, "email": shop.buyer_email, "password": shop.buyer_password}
        )
        assert signed_in.status_code == 303, signed_in.text
        cookie = {"Cookie": f"prepaid_session={browser.cookies['prepaid_session']}"}
    status, body = refused(server, cookie, origin="https://evil.example")
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    status, body = refused(server, cookie)
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    with open_stream(server, cookie, origin=server.env["PREPAID_BASE_URL"]) as browser_stream:
        buy(server, shop)
        assert [event["type"] for event in next_events(browser_stream, 2)] == [
            "order.paid",
            "balance.updated",
        ]


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["listen_notify", "redis"])
def test_an_event_caused_through_one_process_reaches_clients_of_the_others(
    servers: ServerFactory, empty_postgres_url: str, backend: str
) -> None:
    extra: dict[str, str] = {}
    if backend == "redis":
        redis_url = os.environ.get("PREPAID_TEST_REDIS_URL")
        if not redis_url:
            skip_or_fail(
                "the Redis stream test needs PREPAID_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/15)"
            )
        extra["PREPAID_REDIS_URL"] = str(redis_url)
    first = servers.serve(database_url=empty_postgres_url, workers=2, migrate=False, **extra)
    # the second process runs no jobs: the payment is settled through the first one only
    second = servers.serve(
        database_url=empty_postgres_url,
        migrate=False,
        PREPAID_RUN_JOBS="false",
        PREPAID_SECRET_KEY=first.env["PREPAID_SECRET_KEY"],  # one deployment: tokens work on both
        **extra,
    )
    shop = open_shop(first)
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(open_stream(first, shop.buyer)) for _ in range(4)]
        streams.append(stack.enter_context(open_stream(second, shop.buyer)))
        order = buy(first, shop)
        seen = [next_events(stream, 2) for stream in streams]
        for paid, balance in seen:
            assert (paid["type"], paid["data"]["order_id"]) == ("order.paid", order["id"])
            assert (balance["type"], balance["data"]["available"]) == ("balance.updated", 550)
        assert len({paid["id"] for paid, _balance in seen}) == 1  # one event, fanned out
    with httpx.Client(base_url=second.base_url) as http:
        assert http.get(f"/v1/orders/{order['id']}", headers=shop.buyer).json()["status"] == "fulfilled"


def events_until(client: ClientConnection, wanted: set[str]) -> list[dict[str, Any]]:
    """Events received until one of each ``wanted`` type has arrived (others may come between)."""
    seen: list[dict[str, Any]] = []
    while not wanted <= {event["type"] for event in seen}:
        seen.append(json.loads(client.recv(timeout=WAIT)))
    return seen


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_metered_sessions_tick_and_the_low_balance_alert_reach_only_their_owner(
    servers: ServerFactory, request: pytest.FixtureRequest, engine: str
) -> None:
    if engine == "postgresql":  # the session's shared, migrated database: LISTEN/NOTIFY carries the events
        server = servers.serve(database_url=request.getfixturevalue("empty_postgres_url"), migrate=False)
    else:
        server = servers.serve()
    shop = open_shop(server)
    with server.client() as http:
        register(http, email=(other_email := unique_email("other")), password="other-password-123")
        other = _login(http, other_email, "other-password-123")
        meter = f"live-{secrets.token_hex(4)}"
        made = http.post(
            "/v1/meters",
            json={"code": meter, "name": "Live call", "kind": "unit", "unit": "second", "price": 1, "per": 1},
            headers=shop.admin,
        )
        assert made.status_code == 201, made.text
        key = http.post("/v1/api_keys", json={"name": "app", "scopes": ["usage:write"]}, headers=shop.buyer)
        assert key.status_code == 201, key.text
        app_key = {"Authorization": f"Bearer {key.json()['secret']}"}
        wallets = {
            who: http.get("/v1/wallets", headers=headers).json()["data"][0]["id"]
            for who, headers in (("buyer", shop.buyer), ("other", other))
        }
        for wallet in wallets.values():
            granted = http.post(
                f"/v1/wallets/{wallet}/grants",
                json={"amount": 100, "idempotency_key": secrets.token_hex(8)},
                headers=shop.admin,
            )
            assert granted.status_code == 201, granted.text
        for who, headers in (("buyer", shop.buyer), ("other", other)):
            patched = http.patch(
                f"/v1/wallets/{wallets[who]}", json={"low_balance_threshold": 50}, headers=headers
            )
            assert patched.status_code == 200, patched.text

        with open_stream(server, shop.buyer) as mine, open_stream(server, other) as theirs:
            # One interval (60 s at 1 credit a second) is held at the start: 40 left, below the threshold.
            started = http.post(
                "/v1/sessions",
                json={"meter": meter, "interval_seconds": 60, "grace_seconds": 30},
                headers=app_key,
            )
            assert started.status_code == 201, started.text
            session_id = started.json()["id"]
            low = [
                event
                for event in events_until(mine, {"wallet.low_balance"})
                if event["type"] == "wallet.low_balance"
            ]
            assert [event["data"]["wallet_id"] for event in low] == [wallets["buyer"]]
            assert (low[0]["data"]["balance"], low[0]["data"]["threshold"]) == (40, 50)

            beat = http.post(
                f"/v1/sessions/{session_id}/heartbeat", json={"metrics": {"viewers": 3}}, headers=app_key
            )
            assert beat.status_code == 200, beat.text
            ticks = [
                event for event in events_until(mine, {"session.tick"}) if event["type"] == "session.tick"
            ]
            assert [(t["data"]["session_id"], t["data"]["wallet_id"]) for t in ticks] == [
                (session_id, wallets["buyer"])
            ]
            assert ticks[0]["data"]["status"] == "active"
            stopped = http.post(f"/v1/sessions/{session_id}/stop", json={}, headers=app_key)
            assert stopped.status_code == 200, stopped.text
            ended = events_until(mine, {"session.ended"})
            assert all(event["data"]["wallet_id"] == wallets["buyer"] for event in ended)
            with pytest.raises(TimeoutError):
                theirs.recv(timeout=1.0)  # none of it reached the other user

            # The other user's wallet crossing its own threshold is theirs alone.
            spent = http.post(
                f"/v1/wallets/{wallets['other']}/debits",
                json={"amount": 60, "idempotency_key": secrets.token_hex(8)},
                headers=shop.admin,
            )
            assert spent.status_code == 201, spent.text
            theirs_now = events_until(theirs, {"balance.updated"})
            assert all(event["data"]["wallet_id"] == wallets["other"] for event in theirs_now)
            with pytest.raises(TimeoutError):
                while True:  # the buyer's stream stays quiet: anything left is the buyer's own session's
                    event = json.loads(mine.recv(timeout=1.0))
                    assert event["data"]["wallet_id"] == wallets["buyer"], event
