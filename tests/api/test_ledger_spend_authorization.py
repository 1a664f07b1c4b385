"""Debits and holds authorise the wallet in the statement that locks it (``ledger.service`` with an
``owner_id``), not by reading it first; on both engines. A user's API key acts only on that user's wallets:
anyone else's wallet answers exactly as a missing one (404, whatever state it is in) and nothing changes;
a server key and an admin act on any customer's wallet, never on a system account.
"""

from __future__ import annotations

import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.db import Database
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Account, Hold, Lot, Transaction
from tests import factories
from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error


def key() -> str:
    return f"k-{secrets.token_hex(8)}"


async def default_wallet(db: Database, user_id: str) -> str:
    async with db.transaction(write=False) as session:
        return (await ledger_service.default_wallet(session, user_id=user_id)).id


async def books(db: Database) -> tuple[Any, ...]:
    async with db.transaction(write=False) as session:
        counts = [
            await session.scalar(select(func.count()).select_from(model))
            for model in (Transaction, Lot, Hold)
        ]
        wallets = (
            await session.execute(
                select(Account.id, Account.balance, Account.held, Account.debt).order_by(Account.id)
            )
        ).all()
    return tuple(counts), tuple(wallets)


async def grant(client: httpx.AsyncClient, admin: factories.TestUser, wallet_id: str, amount: int) -> None:
    response = await client.post(
        f"/v1/wallets/{wallet_id}/grants",
        json={"amount": amount, "idempotency_key": key()},
        headers=admin.headers,
    )
    assert response.status_code == 201, response.text


async def debit(client: httpx.AsyncClient, wallet_id: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post(
        f"/v1/wallets/{wallet_id}/debits", json={"amount": 1, "idempotency_key": key()}, headers=headers
    )


async def hold(client: httpx.AsyncClient, wallet_id: str, headers: dict[str, str]) -> httpx.Response:
    return await client.post(
        "/v1/holds", json={"wallet": wallet_id, "amount": 1, "idempotency_key": key()}, headers=headers
    )


@pytest.fixture
async def people(app: Any) -> dict[str, Any]:
    user = await make_customer(app)
    other = await make_customer(app)
    admin = await make_customer(app, roles=["user", "admin"])
    return {
        "user": user,
        "other": other,
        "admin": admin,
        "usage": await make_api_key(app, user, scopes=["usage:write"]),
        "server": await make_api_key(app, admin, scopes=["usage:write"], server=True),
        "wallet": await default_wallet(app.state.db, user.id),
        "other_wallet": await default_wallet(app.state.db, other.id),
    }


async def test_a_users_key_finds_no_other_users_wallet_even_a_frozen_one_and_changes_nothing(
    app: Any, client: httpx.AsyncClient, people: dict[str, Any]
) -> None:
    db: Database = app.state.db
    usage: factories.TestKey = people["usage"]
    admin: factories.TestUser = people["admin"]
    await grant(client, admin, people["wallet"], 5)
    await grant(client, admin, people["other_wallet"], 5)
    unknown = "wal_00000000000000000000000000"
    before = await books(db)
    for wallet_id in (people["other_wallet"], unknown):
        assert_error(
            await debit(client, wallet_id, usage.headers), 404, "not_found", "resource_missing", "wallet_id"
        )
        assert_error(
            await hold(client, wallet_id, usage.headers), 404, "not_found", "resource_missing", "wallet"
        )
    # Frozen, the other user's wallet still does not exist for this key (not 409 wallet_frozen).
    frozen = await client.patch(
        f"/v1/wallets/{people['other_wallet']}", json={"frozen": True}, headers=admin.headers
    )
    assert frozen.status_code == 200, frozen.text
    before = await books(db)
    mine_missing = await debit(client, people["other_wallet"], usage.headers)
    assert_error(mine_missing, 404, "not_found", "resource_missing", "wallet_id")
    assert_error(
        await hold(client, people["other_wallet"], usage.headers),
        404,
        "not_found",
        "resource_missing",
        "wallet",
    )
    unknown_missing = await debit(client, unknown, usage.headers)
    assert mine_missing.json()["error"]["message"].replace(
        people["other_wallet"], "X"
    ) == unknown_missing.json()["error"]["message"].replace(unknown, "X")
    assert await books(db) == before
    # The account that holds its own wallet's reserved credits belongs to the same user, but is no wallet.
    async with db.transaction(write=False) as session:
        own_hold_account = (await ledger_service.get_wallet(session, people["wallet"])).hold_account_id
    assert own_hold_account is not None
    assert_error(
        await debit(client, own_hold_account, usage.headers),
        404,
        "not_found",
        "resource_missing",
        "wallet_id",
    )
    assert await books(db) == before
    # Its own wallet it debits and holds on.
    own = await debit(client, people["wallet"], usage.headers)
    assert own.status_code == 201, own.text
    assert own.json()["wallet"]["available"] == 4
    held = await hold(client, people["wallet"], usage.headers)
    assert held.status_code == 201, held.text
    assert held.json()["wallet"]["available"] == 3


async def test_a_server_key_debits_any_customer_but_never_a_system_account(
    app: Any, client: httpx.AsyncClient, people: dict[str, Any]
) -> None:
    db: Database = app.state.db
    server: factories.TestKey = people["server"]
    await grant(client, people["admin"], people["other_wallet"], 3)
    served = await debit(client, people["other_wallet"], server.headers)
    assert served.status_code == 201, served.text
    assert served.json()["wallet"]["wallet_id"] == people["other_wallet"]
    assert served.json()["wallet"]["available"] == 2
    held = await hold(client, people["other_wallet"], server.headers)
    assert held.status_code == 201 and held.json()["wallet"]["available"] == 1, held.text
    before = await books(db)
    for system_id in ledger_service.SYSTEM_ACCOUNTS.values():
        assert_error(
            await debit(client, system_id, server.headers), 404, "not_found", "resource_missing", "wallet_id"
        )
        assert_error(
            await hold(client, system_id, server.headers), 404, "not_found", "resource_missing", "wallet"
        )
    assert await books(db) == before


async def test_the_caller_is_refused_before_any_wallet_is_looked_at(
    app: Any, client: httpx.AsyncClient, people: dict[str, Any]
) -> None:
    """A signed-in person (not an app's key) and a key without usage:write get 403 for any wallet id, known,
    another user's or unknown alike: the answer tells nothing about the wallet."""
    reader = await make_api_key(app, people["user"], scopes=["balance:read"])
    for wallet_id in (people["wallet"], people["other_wallet"], "wal_00000000000000000000000000"):
        assert_error(
            await debit(client, wallet_id, people["user"].headers),
            403,
            "permission_error",
            "api_key_required",
        )
        assert_error(
            await debit(client, wallet_id, reader.headers),
            403,
            "permission_error",
            "missing_scope",
            "usage:write",
        )
