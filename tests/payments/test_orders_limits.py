"""Order creation and verification are rate limited per user (DESIGN: 15/hour and 10/15 min by default,
configurable), on both engines, against the built-in sandbox gateway."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.factories import make_customer
from tests.helpers import assert_error
from tests.payments.test_orders_support import make_plan


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "gateways": "sandbox",
        "rate_limits_enabled": True,
        "rate_limit_order_create": "2/hour",
        "rate_limit_order_verify": "2/15minute",
    }


async def test_creating_and_verifying_orders_is_limited_per_user(app: Any, client: httpx.AsyncClient) -> None:
    await app.state.rate_limiter.reset()
    buyer, other = await make_customer(app), await make_customer(app)
    body = {"plan": await make_plan(app), "currency": "INR"}
    created = [await client.post("/v1/orders", json=body, headers=buyer.headers) for _ in range(2)]
    assert [response.status_code for response in created] == [201, 201]
    assert created[0].json()["gateway"] == "sandbox"  # the first gateway enabled
    refused = await client.post("/v1/orders", json=body, headers=buyer.headers)
    assert_error(refused, 429, "rate_limit_error", "rate_limited")
    assert int(refused.headers["Retry-After"]) > 0
    listed = await client.get("/v1/orders", headers=buyer.headers)
    assert len(listed.json()["data"]) == 2  # the refused one made nothing
    assert (await client.post("/v1/orders", json=body, headers=other.headers)).status_code == 201

    order_id = created[0].json()["id"]
    fields = {"razorpay_payment_id": "pay_x", "razorpay_signature": "0" * 64}
    answers = [
        await client.post(f"/v1/orders/{order_id}/verify", json=fields, headers=buyer.headers)
        for _ in range(3)
    ]
    assert [answer.status_code for answer in answers] == [400, 400, 429]
