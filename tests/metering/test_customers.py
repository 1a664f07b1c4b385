"""Customers by the app's own id on both engines: create or update with PUT, read with balance and wallets,
their transactions, and provisioning on first use with the signup credits granted exactly once."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.auth.models import User
from prepaid.db import Database
from prepaid.ledger.models import Account, Lot
from tests.factories import make_admin, make_api_key, make_customer
from tests.helpers import assert_error, audit_log


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"signup_credits": 3}


def phone() -> str:
    return f"+9198{secrets.randbelow(10**8):08d}"


@pytest.fixture
async def keys(app: Any, client: httpx.AsyncClient) -> dict[str, Any]:
    admin = await make_admin(app)
    response = await client.post(
        "/v1/meters",
        json={"code": "image", "name": "Image", "kind": "unit", "unit": "image", "price": 1, "per": 1},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text
    server = await make_api_key(
        app, admin, scopes=["customers:write", "usage:write", "balance:read"], server=True
    )
    reader = await make_api_key(app, admin, scopes=["balance:read"], server=True)
    spender = await make_api_key(app, admin, scopes=["usage:write"], server=True)
    return {"admin": admin, "server": server, "reader": reader, "spender": spender}


async def users_with(db: Database, external_id: str) -> int:
    async with db.transaction(write=False) as session:
        return int(
            await session.scalar(
                select(func.count()).select_from(User).where(User.external_id == external_id)
            )
            or 0
        )


async def lots_of(db: Database, user_id: str) -> list[tuple[str, int]]:
    async with db.transaction(write=False) as session:
        rows = await session.execute(
            select(Lot.source, Lot.amount)
            .join(Account, Account.id == Lot.wallet_id)
            .where(Account.user_id == user_id)
        )
        return [(source, amount) for source, amount in rows.all()]


async def test_put_creates_then_updates_and_get_shows_balance_and_wallets(
    client: httpx.AsyncClient, db: Database, keys: dict[str, Any]
) -> None:
    number = phone()
    headers = keys["server"].headers
    created = await client.put(
        f"/v1/customers/{number}", json={"name": "Asha", "phone": number}, headers=headers
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["external_id"], body["name"], body["phone"], body["provisioned"]) == (
        number,
        "Asha",
        number,
        True,
    )
    assert body["balance"] == {"asset": "credit", "balance": 3, "available": 3, "held": 0, "debt": 0}
    assert [wallet["promotional"] for wallet in body["wallets"]] == [3]
    updated = await client.put(f"/v1/customers/{number}", json={"email": "Asha@Example.com"}, headers=headers)
    assert updated.status_code == 200, updated.text
    assert (updated.json()["name"], updated.json()["email"], updated.json()["provisioned"]) == (
        "Asha",
        "asha@example.com",
        False,
    )
    read = await client.get(f"/v1/customers/{number}", headers=keys["reader"].headers)
    assert read.status_code == 200 and read.json()["id"] == body["id"]
    assert read.json()["balance"]["available"] == 3
    assert await lots_of(db, body["id"]) == [("promotional", 3)]
    entries = await audit_log(client, keys["admin"].headers, action="customer.update")
    assert entries and entries[0]["before"]["email"] is None
    same = await client.put(f"/v1/customers/{number}", json={"name": "Asha"}, headers=headers)
    assert same.status_code == 200
    assert len(await audit_log(client, keys["admin"].headers, action="customer.update")) == 1


async def test_fifty_first_requests_for_one_new_id_provision_it_once(
    client: httpx.AsyncClient, db: Database, keys: dict[str, Any]
) -> None:
    number = phone()
    headers = keys["server"].headers

    async def use(n: int) -> httpx.Response:
        event = {"id": f"{number}-{n}", "customer": number, "meter": "image", "quantity": 0}
        return await client.post("/v1/usage", json=event, headers=headers)

    responses = await asyncio.gather(*(use(n) for n in range(50)))
    assert all(response.status_code == 201 for response in responses), [r.text for r in responses][:3]
    assert len({response.json()["customer"] for response in responses}) == 1
    assert await users_with(db, number) == 1
    user_id = responses[0].json()["customer"]
    assert await lots_of(db, user_id) == [("promotional", 3)]
    read = await client.get(f"/v1/customers/{number}", headers=headers)
    assert read.json()["balance"]["available"] == 3


async def test_fifty_concurrent_puts_for_one_new_id_create_it_once(
    client: httpx.AsyncClient, db: Database, keys: dict[str, Any]
) -> None:
    number = phone()
    responses = await asyncio.gather(
        *(client.put(f"/v1/customers/{number}", json={}, headers=keys["server"].headers) for _ in range(50))
    )
    assert sorted(response.status_code for response in responses) == [200] * 49 + [201]
    assert await users_with(db, number) == 1
    assert await lots_of(db, responses[0].json()["id"]) == [("promotional", 3)]


async def test_the_bot_flow_spends_the_free_credits_then_is_refused(
    client: httpx.AsyncClient, keys: dict[str, Any]
) -> None:
    number = phone()
    headers = keys["server"].headers
    answers = []
    for n in range(4):
        event = {"id": f"img-{number}-{n}", "customer": number, "meter": "image", "quantity": 1}
        answers.append(await client.post("/v1/usage", json=event, headers=headers))
    assert [answer.status_code for answer in answers] == [201, 201, 201, 402]
    assert [answer.json().get("balance_after") for answer in answers[:3]] == [2, 1, 0]
    assert_error(answers[3], 402, "insufficient_funds", "insufficient_credits", "amount")
    transactions = await client.get(f"/v1/customers/{number}/transactions", headers=keys["reader"].headers)
    assert transactions.status_code == 200
    assert [t["kind"] for t in transactions.json()["data"]] == ["spend", "spend", "spend", "grant"]


async def test_who_may_provision_and_read_customers(
    app: Any, client: httpx.AsyncClient, db: Database, keys: dict[str, Any]
) -> None:
    number = phone()
    event = {"id": f"x-{number}", "customer": number, "meter": "image", "quantity": 1}
    # usage:write alone does not create customers; reads never do.
    missing = await client.post("/v1/usage", json=event, headers=keys["spender"].headers)
    assert_error(missing, 404, "not_found", "resource_missing", "customer")
    read = await client.get(f"/v1/customers/{number}", headers=keys["reader"].headers)
    assert_error(read, 404, "not_found", "resource_missing", "external_id")
    assert await users_with(db, number) == 0
    user = await make_customer(app)
    own_key = await make_api_key(app, user, scopes=["usage:write", "balance:read"])
    forbidden = await client.put(f"/v1/customers/{number}", json={}, headers=user.headers)
    assert_error(forbidden, 403, "permission_error", "customer_forbidden", "external_id")
    forbidden = await client.put(f"/v1/customers/{number}", json={}, headers=own_key.headers)
    assert_error(forbidden, 403, "permission_error", "missing_scope", "customers:write")
    assert await users_with(db, number) == 0
    created = await client.put(f"/v1/customers/{number}", json={}, headers=keys["server"].headers)
    assert created.status_code == 201
    # A user's own key cannot read someone else.
    hidden = await client.get(f"/v1/customers/{number}", headers=own_key.headers)
    assert_error(hidden, 404, "not_found", "resource_missing", "external_id")
    bad = await client.put(
        f"/v1/customers/{number}", json={"email": "not-an-email"}, headers=keys["server"].headers
    )
    assert bad.status_code == 400


@pytest.mark.parametrize("settings_overrides", [{"signup_credits": 3, "auto_provision": False}])
async def test_auto_provision_off_refuses_unknown_customers_in_usage(
    client: httpx.AsyncClient, db: Database, keys: dict[str, Any]
) -> None:
    number = phone()
    event = {"id": f"x-{number}", "customer": number, "meter": "image", "quantity": 1}
    missing = await client.post("/v1/usage", json=event, headers=keys["server"].headers)
    assert_error(missing, 404, "not_found", "resource_missing", "customer")
    assert await users_with(db, number) == 0
