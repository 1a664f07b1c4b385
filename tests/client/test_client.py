"""``prepaid.client.AsyncPrepaid`` against the real app (httpx ASGITransport) on both engines: customers,
balance, usage one by one and in batches, AI holds as a context manager (captured on exit, released on error),
orders with a ``checkout_url``, typed errors carrying the API error object, and retries that reuse the
Idempotency-Key so a lost answer is charged once."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from prepaid.client import (
    AsyncPrepaid,
    AuthenticationError,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PrepaidError,
    ServerError,
    SignatureError,
    usage_event,
    verify_webhook,
)
from prepaid.webhook_signature import sign
from tests import factories
from tests.factories import make_admin, make_api_key
from tests.payments.test_orders_support import make_plan


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"signup_credits": 3}


def phone() -> str:
    return f"+9198{secrets.randbelow(10**8):08d}"


class Flaky(httpx.AsyncBaseTransport):
    """Passes every request to the app, but loses the answer of the first ``lose`` POSTs (answering 503
    instead, or raising a network error): the server did the work, the client never heard."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, lose: int, network: bool = False) -> None:
        self.inner = inner
        self.lose = lose
        self.network = network
        self.seen: list[tuple[str, str, str | None]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, request.headers.get("idempotency-key")))
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and self.lose > 0:
            self.lose -= 1
            await response.aread()
            if self.network:
                raise httpx.ReadError("connection reset", request=request)
            return httpx.Response(503, json={"error": {"type": "api_error", "code": "unavailable"}})
        return response


@dataclass
class Bot:
    app: Any
    admin: factories.TestUser
    secret: str
    transport: httpx.AsyncBaseTransport

    def client(self, **kwargs: Any) -> AsyncPrepaid:
        kwargs.setdefault("transport", self.transport)
        kwargs.setdefault("backoff", 0.0)
        return AsyncPrepaid(self.secret, base_url="http://testserver", **kwargs)


@pytest.fixture
async def bot(app: Any, client: httpx.AsyncClient) -> Bot:
    admin = await make_admin(app)
    meters = [
        {"code": "image", "name": "Image", "kind": "unit", "unit": "image", "price": 1, "per": 1},
        # 1 credit per input token, 2 per output token
        {
            "code": "chat",
            "name": "Chat",
            "kind": "model",
            "input_price": 1_000_000,
            "output_price": 2_000_000,
        },
    ]
    for meter in meters:
        made = await client.post("/v1/meters", json=meter, headers=admin.headers)
        assert made.status_code == 201, made.text
    key = await make_api_key(
        app, admin, scopes=["customers:write", "usage:write", "balance:read", "orders:write"], server=True
    )
    return Bot(app, admin, key.secret, httpx.ASGITransport(app=app, raise_app_exceptions=False))


@pytest.fixture
async def prepaid(bot: Bot) -> AsyncIterator[AsyncPrepaid]:
    async with bot.client() as api:
        yield api


async def grant(client: httpx.AsyncClient, admin: factories.TestUser, wallet: str, amount: int) -> None:
    answer = await client.post(
        f"/v1/wallets/{wallet}/grants",
        json={"amount": amount, "idempotency_key": secrets.token_hex(8)},
        headers=admin.headers,
    )
    assert answer.status_code == 201, answer.text


async def test_customers_balance_and_usage_until_insufficient_credits(prepaid: AsyncPrepaid) -> None:
    number = phone()
    created = await prepaid.upsert_customer(number, phone=number, name="Asha")
    assert (created["provisioned"], created["phone"], created["balance"]["available"]) == (True, number, 3)
    again = await prepaid.upsert_customer(number, name="Asha Rao")
    assert (again["provisioned"], again["name"], again["balance"]["available"]) == (False, "Asha Rao", 3)
    assert (await prepaid.get_customer(number))["id"] == created["id"]

    for n in range(3):
        used = await prepaid.record_usage(id=f"img-{number}-{n}", customer=number, meter="image", quantity=1)
        assert (used["cost"], used["balance_after"], used["replayed"]) == (1, 2 - n, False)
    replay = await prepaid.record_usage(id=f"img-{number}-0", customer=number, meter="image", quantity=1)
    assert (replay["replayed"], replay["cost"]) == (True, 1)
    with pytest.raises(InsufficientCredits) as refused:
        await prepaid.record_usage(id=f"img-{number}-3", customer=number, meter="image", quantity=1)
    assert (refused.value.status, refused.value.code, refused.value.available) == (
        402,
        "insufficient_credits",
        0,
    )
    assert refused.value.error["type"] == "insufficient_funds"
    assert await prepaid.balance(number) == {
        "asset": "credit",
        "balance": 0,
        "available": 0,
        "held": 0,
        "debt": 0,
    }


async def test_a_batch_answers_each_event_and_charges_only_what_it_can(prepaid: AsyncPrepaid) -> None:
    number = phone()
    await prepaid.upsert_customer(number)
    events = [
        usage_event(f"b-{number}-1", "image", customer=number, quantity=2),
        usage_event(f"b-{number}-1", "image", customer=number, quantity=2),
        usage_event(f"b-{number}-2", "nope", customer=number, quantity=1),
        usage_event(f"b-{number}-3", "image", customer=number, quantity=5),
        usage_event(f"b-{number}-4", "image", customer=number, quantity=1),
    ]
    batch = await prepaid.record_usage_batch(events)
    statuses = [(item["status"], (item["error"] or {}).get("code")) for item in batch["data"]]
    assert statuses[0] == ("charged", None)
    assert statuses[1][0] == "duplicate"
    assert statuses[2][0] == "refused" and statuses[3] == ("refused", "insufficient_credits")
    assert statuses[4] == ("charged", None)
    assert (batch["charged"], batch["cost"]) == (2, 3)
    assert (await prepaid.balance(number))["available"] == 0


async def test_an_ai_hold_captures_the_real_tokens_and_releases_on_error(
    bot: Bot, prepaid: AsyncPrepaid, client: httpx.AsyncClient
) -> None:
    number = phone()
    customer = await prepaid.upsert_customer(number)
    await grant(client, bot.admin, customer["wallets"][0]["id"], 997)  # 1,000 in all
    async with prepaid.ai_hold(
        customer=number, meter="chat", input_tokens=100, max_output_tokens=200
    ) as hold:
        assert hold.estimate == 500
        assert (await prepaid.balance(number))["held"] == 500
        hold.set_usage(input_tokens=100, output_tokens=50)
    assert hold.capture is not None
    assert (hold.capture["charged"], hold.capture["released"]) == (200, 300)
    assert (await prepaid.balance(number))["available"] == 800

    class ModelDown(Exception):
        pass

    with pytest.raises(ModelDown):
        async with prepaid.ai_hold(
            customer=number, meter="chat", input_tokens=10, max_output_tokens=10
        ) as failed:
            raise ModelDown
    assert (failed.released, failed.capture) == (True, None)
    assert await prepaid.balance(number) == {
        "asset": "credit",
        "balance": 800,
        "available": 800,
        "held": 0,
        "debt": 0,
    }

    async with prepaid.ai_hold(
        customer=number, meter="chat", input_tokens=10, max_output_tokens=10
    ) as unused:
        pass  # no usage reported: nothing is charged
    assert unused.released and (await prepaid.balance(number))["available"] == 800

    with pytest.raises(InsufficientCredits) as refused:
        async with prepaid.ai_hold(customer=number, meter="chat", input_tokens=1000, max_output_tokens=1000):
            pytest.fail("the block must not run without a hold")
    assert refused.value.available == 800


async def test_orders_for_a_customer_carry_a_checkout_url(bot: Bot, prepaid: AsyncPrepaid) -> None:
    number = phone()
    customer = await prepaid.upsert_customer(number)
    plan = await make_plan(bot.app, credits=100, prices={"INR": 100_000})
    order = await prepaid.create_order(customer=number, plan=plan, currency="INR", gateway="sandbox")
    assert order["user_id"] == customer["id"]
    assert order["checkout_url"].startswith("http://testserver/checkout/")
    assert (await prepaid.get_order(order["id"]))["id"] == order["id"]
    with pytest.raises(InvalidRequest) as bad:
        await prepaid.create_order(customer=number, plan=plan, currency="inr!")
    assert (bad.value.status, bad.value.code, bad.value.param) == (400, "invalid_field", "currency")


async def test_errors_are_typed_and_carry_the_api_error(bot: Bot, prepaid: AsyncPrepaid) -> None:
    with pytest.raises(InvalidRequest) as invalid:
        await prepaid.record_usage(id="x", customer=phone(), meter="image", quantity=-1)
    assert (invalid.value.status, invalid.value.code, invalid.value.param) == (
        400,
        "invalid_field",
        "quantity",
    )
    async with AsyncPrepaid("pk_wrong", base_url="http://testserver", transport=bot.transport) as stranger:
        with pytest.raises(AuthenticationError) as unauthenticated:
            await stranger.get_customer("anyone")
    assert (unauthenticated.value.status, unauthenticated.value.type) == (401, "authentication_error")
    reader = await make_api_key(bot.app, bot.admin, scopes=["balance:read"], server=True)
    async with AsyncPrepaid(reader.secret, base_url="http://testserver", transport=bot.transport) as limited:
        with pytest.raises(NotFound):
            await limited.get_customer(f"nobody-{secrets.token_hex(4)}")
        with pytest.raises(PermissionDenied):
            await limited.record_usage(id="y", customer=phone(), meter="image", quantity=1)


async def test_a_lost_answer_is_retried_with_the_same_key_and_charged_once(bot: Bot) -> None:
    number = phone()
    for network in (False, True):
        flaky = Flaky(bot.transport, lose=2, network=network)
        async with bot.client(transport=flaky, max_retries=2) as api:
            if not network:
                await api.upsert_customer(number)
            used = await api.record_usage(
                id=f"r-{number}-{network}", customer=number, meter="image", quantity=1
            )
            assert used["cost"] == 1
        posts = [seen for seen in flaky.seen if seen[0] == "POST"]
        assert len(posts) == 3 and len({key for _m, _p, key in posts}) == 1 and posts[0][2]
    async with bot.client() as api:
        assert (await api.balance(number))["available"] == 1  # 3 - 2: each event charged once

    given = Flaky(bot.transport, lose=5)
    async with bot.client(transport=given, max_retries=1) as api:
        with pytest.raises(ServerError) as failed:
            await api.record_usage(
                id=f"g-{number}", customer=number, meter="image", quantity=1, idempotency_key="my-key-1"
            )
    assert failed.value.status == 503
    assert [key for _m, _p, key in given.seen] == ["my-key-1", "my-key-1"]


def test_the_api_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREPAID_API_KEY", raising=False)
    with pytest.raises(PrepaidError, match="PREPAID_API_KEY"):
        AsyncPrepaid()
    monkeypatch.setenv("PREPAID_API_KEY", "pk_from_env")
    client = AsyncPrepaid(base_url="http://prepaid.test/")
    assert client._config.api_key == "pk_from_env" and client._config.base_url == "http://prepaid.test"


def test_verify_webhook_is_re_exported() -> None:
    body = b'{"type":"order.paid"}'
    header = sign("whsec_1", body)
    assert verify_webhook("whsec_1", header, body) > 0
    with pytest.raises(SignatureError):
        verify_webhook("whsec_1", header, body + b" ")
