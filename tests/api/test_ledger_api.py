"""The ledger over HTTP, on both engines: wallets, transactions, lots, grants, debits, holds and transfers.

Who may call which route is pinned by the authorisation matrix; these tests prove what the answers hold,
that another user's objects do not exist for a caller, every error code, that a refused call changes
nothing, that a retried movement answers the same transaction, lists and filters, and the audit trail of
admins' grants and wallet changes. The books must balance (``check_invariants``) after every test.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from prepaid.auth import service as auth_service
from prepaid.db import Database, utcnow
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Account, Hold, Lot, Posting, Transaction
from tests import factories
from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error, audit_log


@dataclass
class Shop:
    """An app's customers and the keys that act for them."""

    app: Any
    client: httpx.AsyncClient
    user: factories.TestUser
    other: factories.TestUser
    admin: factories.TestUser
    usage: factories.TestKey  # the user's own key, usage:write
    reader: factories.TestKey  # the user's own key, balance:read
    other_usage: factories.TestKey  # the other user's own key, usage:write
    server: factories.TestKey  # an admin's server key: usage:write, balance:read, customers:write
    server_admin: factories.TestKey  # an admin's server key with the admin scope
    wallet: str  # the user's default wallet
    other_wallet: str  # the other user's default wallet

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database


async def _default_wallet(app: Any, user_id: str) -> str:
    async with app.state.db.transaction(write=False) as session:
        return (await ledger_service.default_wallet(session, user_id=user_id)).id


@pytest.fixture
async def shop(app: Any, client: httpx.AsyncClient) -> Any:
    user = await make_customer(app)
    other = await make_customer(app)
    admin = await make_customer(app, roles=["user", "admin"])
    world = Shop(
        app=app,
        client=client,
        user=user,
        other=other,
        admin=admin,
        usage=await make_api_key(app, user, scopes=["usage:write"]),
        reader=await make_api_key(app, user, scopes=["balance:read"]),
        other_usage=await make_api_key(app, other, scopes=["usage:write"]),
        server=await make_api_key(
            app, admin, scopes=["usage:write", "balance:read", "customers:write"], server=True
        ),
        server_admin=await make_api_key(app, admin, scopes=["admin"], server=True),
        wallet=await _default_wallet(app, user.id),
        other_wallet=await _default_wallet(app, other.id),
    )
    yield world
    async with world.db.transaction(write=False) as session:
        assert await ledger_service.check_invariants(session) == [], (
            "the books do not balance after this test"
        )


def key() -> str:
    return f"k-{secrets.token_hex(8)}"


async def grant(shop: Shop, wallet_id: str, amount: int, **fields: Any) -> dict[str, Any]:
    response = await shop.client.post(
        f"/v1/wallets/{wallet_id}/grants",
        json={"amount": amount, "idempotency_key": key(), **fields},
        headers=shop.admin.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def debit(
    shop: Shop,
    wallet_id: str,
    amount: int,
    *,
    headers: dict[str, str] | None = None,
    idempotency_key: str = "",
) -> httpx.Response:
    return await shop.client.post(
        f"/v1/wallets/{wallet_id}/debits",
        json={"amount": amount, "idempotency_key": idempotency_key or key()},
        headers=headers or shop.usage.headers,
    )


async def hold(shop: Shop, wallet_id: str, amount: int, **fields: Any) -> httpx.Response:
    body = {"wallet": wallet_id, "amount": amount, "idempotency_key": key(), **fields}
    return await shop.client.post("/v1/holds", json=body, headers=shop.usage.headers)


async def wallet(shop: Shop, wallet_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await shop.client.get(f"/v1/wallets/{wallet_id}", headers=headers or shop.user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def books(db: Database) -> tuple[Any, ...]:
    """Every ledger row that a movement or a wallet change would touch, to show a refused call changed none."""
    async with db.transaction(write=False) as session:
        counts = [
            await session.scalar(select(func.count()).select_from(model))
            for model in (Transaction, Posting, Lot, Hold, Account)
        ]
        wallets = (
            await session.execute(
                select(
                    Account.id,
                    Account.name,
                    Account.balance,
                    Account.held,
                    Account.debt,
                    Account.overdraft_limit,
                    Account.frozen,
                    Account.low_balance_threshold,
                ).order_by(Account.id)
            )
        ).all()
        lots = (await session.execute(select(Lot.id, Lot.remaining).order_by(Lot.id))).all()
        holds = (await session.execute(select(Hold.id, Hold.status, Hold.captured).order_by(Hold.id))).all()
    return tuple(counts), tuple(wallets), tuple(lots), tuple(holds)


# ---------------------------------------------------------------- wallets


async def test_a_new_user_has_one_default_wallet_showing_every_part(shop: Shop) -> None:
    response = await shop.client.get("/v1/wallets", headers=shop.user.headers)
    assert response.status_code == 200
    listed = response.json()
    assert listed["object"] == "list" and listed["has_more"] is False
    (only,) = listed["data"]
    assert only["id"] == shop.wallet
    assert {key: only[key] for key in only if key not in ("id", "created_at")} == {
        "object": "wallet",
        "user_id": shop.user.id,
        "name": "Default",
        "asset": "credit",
        "balance": 0,
        "held": 0,
        "available": 0,
        "debt": 0,
        "paid": 0,
        "promotional": 0,
        "refund": 0,
        "adjustment": 0,
        "overdraft_limit": 0,
        "frozen": False,
        "is_default": True,
        "low_balance_threshold": None,
    }


async def test_a_wallet_shows_balance_held_available_and_its_paid_and_promotional_parts(shop: Shop) -> None:
    await grant(shop, shop.wallet, 70, source="paid")
    await grant(shop, shop.wallet, 30, source="promotional")
    held = await hold(shop, shop.wallet, 20, expires_in=600)
    assert held.status_code == 201, held.text
    shown = await wallet(shop, shop.wallet)
    # Promotional credits go first: the hold took 20 of the 30 promotional ones out of their lot.
    assert (shown["balance"], shown["held"], shown["available"], shown["debt"]) == (100, 20, 80, 0)
    assert (shown["paid"], shown["promotional"], shown["refund"], shown["adjustment"]) == (70, 10, 0, 0)
    assert shown["asset"] == "credit"
    assert await wallet(shop, shop.wallet, headers=shop.reader.headers) == shown
    assert await wallet(shop, shop.wallet, headers=shop.admin.headers) == shown


async def test_another_users_wallets_holds_and_transactions_do_not_exist_for_them(shop: Shop) -> None:
    granted = await grant(shop, shop.wallet, 50)
    held = (await hold(shop, shop.wallet, 10)).json()["hold"]["id"]
    before = await books(shop.db)
    as_other, other_key = shop.other.headers, shop.other_usage.headers
    refused = [
        await shop.client.get(f"/v1/wallets/{shop.wallet}", headers=as_other),
        await shop.client.get(f"/v1/wallets/{shop.wallet}/transactions", headers=as_other),
        await shop.client.get(f"/v1/wallets/{shop.wallet}/lots", headers=as_other),
        await shop.client.patch(f"/v1/wallets/{shop.wallet}", json={"name": "Mine now"}, headers=as_other),
        await shop.client.get(f"/v1/transactions/{granted['transaction']['id']}", headers=as_other),
        await debit(shop, shop.wallet, 5, headers=other_key),
        await shop.client.post(
            "/v1/holds",
            json={"wallet": shop.wallet, "amount": 5, "idempotency_key": key()},
            headers=other_key,
        ),
        await shop.client.get(f"/v1/holds/{held}", headers=other_key),
        await shop.client.get(f"/v1/holds/{held}", headers=as_other),
        await shop.client.post(
            f"/v1/holds/{held}/capture", json={"amount": 5, "idempotency_key": key()}, headers=other_key
        ),
        await shop.client.post(
            f"/v1/holds/{held}/release", json={"idempotency_key": key()}, headers=other_key
        ),
        await shop.client.post(
            "/v1/transfers",
            json={
                "from_wallet": shop.wallet,
                "to_wallet": shop.other_wallet,
                "amount": 5,
                "idempotency_key": key(),
            },
            headers=as_other,
        ),
    ]
    for response in refused:
        assert response.status_code == 404, (response.request.url, response.text)
        assert response.json()["error"]["type"] == "not_found"
    # An id that exists answers exactly as one that does not.
    unknown = await shop.client.get("/v1/wallets/wal_00000000000000000000000000", headers=as_other)
    mine = await shop.client.get(f"/v1/wallets/{shop.wallet}", headers=as_other)
    assert unknown.json()["error"]["code"] == mine.json()["error"]["code"] == "resource_missing"
    assert await books(shop.db) == before


async def test_keys_act_only_within_their_scopes(shop: Shop) -> None:
    await grant(shop, shop.wallet, 20)
    before = await books(shop.db)
    assert_error(
        await shop.client.get(f"/v1/wallets/{shop.wallet}", headers=shop.usage.headers),
        403,
        "permission_error",
        "missing_scope",
        "balance:read",
    )
    assert_error(
        await debit(shop, shop.wallet, 5, headers=shop.reader.headers),
        403,
        "permission_error",
        "missing_scope",
        "usage:write",
    )
    # A signed-in person does not debit their own wallet; their app does, with a key.
    assert_error(
        await debit(shop, shop.wallet, 5, headers=shop.user.headers),
        403,
        "permission_error",
        "api_key_required",
    )
    assert_error(
        await shop.client.post(
            f"/v1/wallets/{shop.wallet}/grants",
            json={"amount": 5, "idempotency_key": key()},
            headers=shop.server.headers,
        ),
        403,
        "permission_error",
        "admin_required",
    )
    assert await books(shop.db) == before


async def test_a_server_key_acts_on_any_customer_and_a_users_key_only_on_its_own(shop: Shop) -> None:
    await grant(shop, shop.other_wallet, 30)
    served = await debit(shop, shop.other_wallet, 10, headers=shop.server.headers)
    assert served.status_code == 201, served.text
    assert served.json()["wallet"]["available"] == 20
    seen = await shop.client.get(f"/v1/wallets/{shop.other_wallet}", headers=shop.server.headers)
    assert seen.status_code == 200 and seen.json()["available"] == 20
    assert (await debit(shop, shop.other_wallet, 10, headers=shop.usage.headers)).status_code == 404


async def test_admins_and_server_keys_name_a_customer_by_id_or_external_id(shop: Shop) -> None:
    external_id = f"whatsapp:+91{secrets.randbelow(10**10):010d}"
    async with shop.db.transaction() as session:
        bot_customer = await auth_service.create_user(
            session, email=None, password=None, name="Bot customer", external_id=external_id
        )
    by_external = await shop.client.get(
        "/v1/wallets", params={"customer": external_id}, headers=shop.admin.headers
    )
    assert by_external.status_code == 200, by_external.text
    assert [w["user_id"] for w in by_external.json()["data"]] == [bot_customer.id]
    by_id = await shop.client.get(
        "/v1/wallets", params={"customer": shop.user.id}, headers=shop.server.headers
    )
    assert [w["id"] for w in by_id.json()["data"]] == [shop.wallet]
    # Naming oneself is fine; naming anyone else is for admins and server keys only.
    own = await shop.client.get("/v1/wallets", params={"customer": shop.user.id}, headers=shop.reader.headers)
    assert [w["id"] for w in own.json()["data"]] == [shop.wallet]
    assert_error(
        await shop.client.get("/v1/wallets", params={"customer": shop.other.id}, headers=shop.user.headers),
        403,
        "permission_error",
        "customer_forbidden",
        "customer",
    )
    assert_error(
        await shop.client.get(
            "/v1/wallets", params={"customer": "nobody-at-all"}, headers=shop.admin.headers
        ),
        404,
        "not_found",
        "resource_missing",
        "customer",
    )


async def test_users_open_named_wallets_and_admins_open_them_for_customers(shop: Shop) -> None:
    opened = await shop.client.post(
        "/v1/wallets",
        json={"name": "  research agent  ", "low_balance_threshold": 25},
        headers=shop.user.headers,
    )
    assert opened.status_code == 201, opened.text
    agent = opened.json()
    assert (agent["name"], agent["is_default"], agent["user_id"]) == ("research agent", False, shop.user.id)
    assert (agent["balance"], agent["available"], agent["low_balance_threshold"]) == (0, 0, 25)
    listed = await shop.client.get("/v1/wallets", headers=shop.user.headers)
    assert [w["id"] for w in listed.json()["data"]] == [agent["id"], shop.wallet]  # newest first
    assert await audit_log(shop.client, shop.admin.headers, action="wallet.create") == []

    for_customer = await shop.client.post(
        "/v1/wallets",
        params={"customer": shop.other.id},
        json={"name": "support bot"},
        headers=shop.admin.headers,
    )
    assert for_customer.status_code == 201, for_customer.text
    assert for_customer.json()["user_id"] == shop.other.id
    (entry,) = await audit_log(shop.client, shop.admin.headers, action="wallet.create")
    assert (entry["object_id"], entry["actor_user_id"]) == (for_customer.json()["id"], shop.admin.id)
    assert entry["after"]["user_id"] == shop.other.id

    before = await books(shop.db)
    assert_error(
        await shop.client.post(
            "/v1/wallets", params={"customer": shop.other.id}, json={"name": "x"}, headers=shop.user.headers
        ),
        403,
        "permission_error",
        "customer_forbidden",
        "customer",
    )
    blank = await shop.client.post("/v1/wallets", json={"name": "   "}, headers=shop.user.headers)
    assert_error(blank, 400, "invalid_request_error", "invalid_field", "name")
    assert await books(shop.db) == before


async def test_the_owner_changes_name_and_threshold_but_not_the_admins_settings(shop: Shop) -> None:
    path = f"/v1/wallets/{shop.wallet}"
    renamed = await shop.client.patch(
        path, json={"name": "Main", "low_balance_threshold": 50}, headers=shop.user.headers
    )
    assert renamed.status_code == 200, renamed.text
    assert (renamed.json()["name"], renamed.json()["low_balance_threshold"]) == ("Main", 50)
    cleared = await shop.client.patch(path, json={"low_balance_threshold": None}, headers=shop.user.headers)
    assert (cleared.json()["name"], cleared.json()["low_balance_threshold"]) == ("Main", None)
    before = await books(shop.db)
    for field, value in (("overdraft_limit", 1000), ("frozen", True)):
        refused = await shop.client.patch(
            path, json={"name": "Sneaky", field: value}, headers=shop.user.headers
        )
        assert_error(refused, 403, "permission_error", "admin_required", field)
    assert await books(shop.db) == before  # not even the name changed
    assert await audit_log(shop.client, shop.admin.headers, object_id=shop.wallet) == []


async def test_admin_wallet_changes_are_audited_and_take_effect(shop: Shop) -> None:
    await grant(shop, shop.wallet, 10)
    path = f"/v1/wallets/{shop.wallet}"
    frozen = await shop.client.patch(
        path, json={"frozen": True, "overdraft_limit": 40}, headers=shop.admin.headers
    )
    assert frozen.status_code == 200, frozen.text
    assert (frozen.json()["frozen"], frozen.json()["overdraft_limit"]) == (True, 40)
    (entry,) = await audit_log(shop.client, shop.admin.headers, action="wallet.update", object_id=shop.wallet)
    assert entry["actor_user_id"] == shop.admin.id
    assert (entry["before"]["frozen"], entry["before"]["overdraft_limit"]) == (False, 0)
    assert (entry["after"]["frozen"], entry["after"]["overdraft_limit"]) == (True, 40)

    before = await books(shop.db)
    assert_error(await debit(shop, shop.wallet, 5), 409, "conflict", "wallet_frozen", "wallet_id")
    assert_error(await hold(shop, shop.wallet, 5), 409, "conflict", "wallet_frozen", "wallet_id")
    assert await books(shop.db) == before

    thawed = await shop.client.patch(path, json={"frozen": False}, headers=shop.server_admin.headers)
    assert thawed.status_code == 200
    entries = await audit_log(shop.client, shop.admin.headers, action="wallet.update", object_id=shop.wallet)
    assert entries[0]["actor_api_key_id"] == shop.server_admin.id
    overdrawn = await debit(shop, shop.wallet, 35)  # 10 credits and 25 on the overdraft
    assert overdrawn.status_code == 201, overdrawn.text
    shown = await wallet(shop, shop.wallet)
    assert (shown["balance"], shown["available"], shown["debt"]) == (-25, -25, 25)
    before = await books(shop.db)
    too_low = await shop.client.patch(path, json={"overdraft_limit": 10}, headers=shop.admin.headers)
    assert_error(too_low, 400, "invalid_request_error", "overdraft_limit_too_low", "overdraft_limit")
    assert await books(shop.db) == before
    # The next grant repays the debt first.
    await grant(shop, shop.wallet, 30)
    shown = await wallet(shop, shop.wallet)
    assert (shown["available"], shown["debt"], shown["promotional"]) == (5, 0, 5)


# ---------------------------------------------------------------- grants


async def test_admin_grants_open_a_lot_and_are_audited_once(shop: Shop) -> None:
    expires_at = (utcnow() + timedelta(days=30)).replace(microsecond=0)
    body = {
        "amount": 500,
        "source": "paid",
        "priority": 5,
        "expires_at": expires_at.isoformat(),
        "reason": "allotment for the agent",
        "idempotency_key": "allot-1",
    }
    path = f"/v1/wallets/{shop.wallet}/grants"
    first = await shop.client.post(path, json=body, headers=shop.admin.headers)
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["object"] == "movement" and answer["replayed"] is False
    assert answer["transaction"]["kind"] == "grant"
    assert answer["transaction"]["reason"] == "allotment for the agent"
    assert sorted((p["account_id"], p["amount"], p["asset"]) for p in answer["transaction"]["postings"]) == [
        ("sys_sales", -500, "credit"),
        (shop.wallet, 500, "credit"),
    ]
    assert (answer["wallet"]["wallet_id"], answer["wallet"]["available"], answer["wallet"]["asset"]) == (
        shop.wallet,
        500,
        "credit",
    )
    lots = (await shop.client.get(f"/v1/wallets/{shop.wallet}/lots", headers=shop.user.headers)).json()[
        "data"
    ]
    assert [(lot["source"], lot["priority"], lot["amount"], lot["remaining"]) for lot in lots] == [
        ("paid", 5, 500, 500)
    ]
    assert datetime.fromisoformat(lots[0]["expires_at"]) == expires_at
    again = await shop.client.post(path, json=body, headers=shop.admin.headers)
    assert again.status_code == 201
    assert again.json()["transaction"]["id"] == answer["transaction"]["id"]
    assert again.json()["replayed"] is True
    (entry,) = await audit_log(shop.client, shop.admin.headers, action="wallet.grant")
    assert (entry["object_id"], entry["actor_user_id"]) == (shop.wallet, shop.admin.id)
    assert entry["after"]["transaction_id"] == answer["transaction"]["id"]
    assert (entry["after"]["amount"], entry["after"]["source"], entry["after"]["asset"]) == (
        500,
        "paid",
        "credit",
    )

    by_key = await shop.client.post(
        path, json={"amount": 5, "idempotency_key": key()}, headers=shop.server_admin.headers
    )
    assert by_key.status_code == 201
    newest = (await audit_log(shop.client, shop.admin.headers, action="wallet.grant"))[0]
    assert newest["actor_api_key_id"] == shop.server_admin.id
    assert (await wallet(shop, shop.wallet))["balance"] == 505


async def test_a_grant_expiring_in_the_past_is_refused(shop: Shop) -> None:
    before = await books(shop.db)
    refused = await shop.client.post(
        f"/v1/wallets/{shop.wallet}/grants",
        json={"amount": 5, "expires_at": "2020-01-01T00:00:00Z", "idempotency_key": key()},
        headers=shop.admin.headers,
    )
    assert_error(refused, 400, "invalid_request_error", "invalid_expiry", "expires_at")
    assert await books(shop.db) == before
    assert await audit_log(shop.client, shop.admin.headers, action="wallet.grant") == []


# ---------------------------------------------------------------- debits


async def test_a_debit_answers_the_transaction_and_the_balance_after(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    response = await shop.client.post(
        f"/v1/wallets/{shop.wallet}/debits",
        json={"amount": 30, "reason": "gpt call", "idempotency_key": "call-1"},
        headers=shop.usage.headers,
    )
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["transaction"]["kind"] == "spend"
    assert answer["transaction"]["reason"] == "gpt call"
    assert sorted((p["account_id"], p["amount"]) for p in answer["transaction"]["postings"]) == [
        ("sys_usage", 30),
        (shop.wallet, -30),
    ]
    assert answer["wallet"] == {
        "object": "wallet_balance",
        "wallet_id": shop.wallet,
        "asset": "credit",
        "balance": 70,
        "held": 0,
        "available": 70,
        "debt": 0,
    }
    assert (answer["hold"], answer["to_wallet"], answer["replayed"]) == (None, None, False)
    detail = await shop.client.get(
        f"/v1/transactions/{answer['transaction']['id']}", headers=shop.user.headers
    )
    assert detail.status_code == 200
    assert detail.json() == answer["transaction"]


async def test_not_enough_credits_is_402_with_the_available_amount_and_changes_nothing(shop: Shop) -> None:
    await grant(shop, shop.wallet, 10)
    before = await books(shop.db)
    refused = await debit(shop, shop.wallet, 11)
    error = assert_error(refused, 402, "insufficient_funds", "insufficient_credits", "amount")
    assert (error["available"], error["asset"], error["wallet_id"]) == (10, "credit", shop.wallet)
    assert await books(shop.db) == before
    # A refused key was not used up: the same key goes through once there is enough.
    retry_key = key()
    assert (await debit(shop, shop.wallet, 11, idempotency_key=retry_key)).status_code == 402
    await grant(shop, shop.wallet, 1)
    assert (await debit(shop, shop.wallet, 11, idempotency_key=retry_key)).status_code == 201
    assert (await wallet(shop, shop.wallet))["available"] == 0


async def test_a_retried_debit_answers_the_same_transaction(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    first = await debit(shop, shop.wallet, 30, idempotency_key="usage-42")
    again = await debit(shop, shop.wallet, 30, idempotency_key="usage-42")
    assert first.status_code == again.status_code == 201
    assert again.json()["transaction"] == first.json()["transaction"]
    assert (first.json()["replayed"], again.json()["replayed"]) == (False, True)
    assert again.json()["wallet"]["available"] == 70
    # A second key of the same user shares the user's keys: a retry after rotating the key is still a retry.
    rotated = await make_api_key(shop.app, shop.user, scopes=["usage:write"])
    after_rotation = await debit(shop, shop.wallet, 30, idempotency_key="usage-42", headers=rotated.headers)
    assert after_rotation.json()["transaction"]["id"] == first.json()["transaction"]["id"]
    assert (await wallet(shop, shop.wallet))["available"] == 70
    # The same key for another movement is an error, and changes nothing.
    before = await books(shop.db)
    assert_error(
        await debit(shop, shop.wallet, 31, idempotency_key="usage-42"),
        400,
        "idempotency_error",
        "idempotency_key_reused",
        "idempotency_key",
    )
    assert await books(shop.db) == before
    # Keys are per user: another user's app may use the same string for its own movement.
    await grant(shop, shop.other_wallet, 100)
    theirs = await debit(
        shop, shop.other_wallet, 30, idempotency_key="usage-42", headers=shop.other_usage.headers
    )
    assert theirs.status_code == 201
    assert theirs.json()["transaction"]["id"] != first.json()["transaction"]["id"]
    assert theirs.json()["replayed"] is False


async def test_the_idempotency_key_header_still_replays_on_top(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    request = {"amount": 5, "idempotency_key": key()}
    headers = {**shop.usage.headers, "Idempotency-Key": "header-1"}
    path = f"/v1/wallets/{shop.wallet}/debits"
    first = await shop.client.post(path, json=request, headers=headers)
    again = await shop.client.post(path, json=request, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.content == first.content
    other_body = await shop.client.post(path, json={**request, "amount": 6}, headers=headers)
    assert other_body.status_code == 400 and other_body.json()["error"]["type"] == "idempotency_error"
    assert (await wallet(shop, shop.wallet))["available"] == 95


async def test_a_402_under_an_idempotency_key_header_is_not_kept_so_a_retry_after_a_top_up_goes_through(
    shop: Shop,
) -> None:
    request = {"amount": 5, "idempotency_key": key()}
    headers = {**shop.usage.headers, "Idempotency-Key": "after-top-up"}
    path = f"/v1/wallets/{shop.wallet}/debits"
    refused = await shop.client.post(path, json=request, headers=headers)
    assert refused.status_code == 402
    await grant(shop, shop.wallet, 5)
    retried = await shop.client.post(path, json=request, headers=headers)
    assert retried.status_code == 201, retried.text
    assert "idempotent-replayed" not in retried.headers
    assert (await wallet(shop, shop.wallet))["available"] == 0


async def test_one_key_sent_many_times_at_once_makes_one_transaction(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    answers = await asyncio.gather(*(debit(shop, shop.wallet, 7, idempotency_key="burst") for _ in range(10)))
    assert [answer.status_code for answer in answers] == [201] * 10
    assert len({answer.json()["transaction"]["id"] for answer in answers}) == 1
    assert sum(not answer.json()["replayed"] for answer in answers) == 1
    assert (await wallet(shop, shop.wallet))["available"] == 93


async def test_amounts_are_positive_integers_and_every_movement_needs_a_key(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    before = await books(shop.db)
    path = f"/v1/wallets/{shop.wallet}/debits"
    for amount in (0, -5, 1.5, "5", True, None, 10**16):
        response = await shop.client.post(
            path, json={"amount": amount, "idempotency_key": key()}, headers=shop.usage.headers
        )
        assert_error(response, 400, "invalid_request_error", "invalid_field", "amount")
    missing = await shop.client.post(path, json={"amount": 5}, headers=shop.usage.headers)
    assert_error(missing, 400, "invalid_request_error", "missing_field", "idempotency_key")
    for bad_key in ("", "x" * 256, "tab\there"):
        response = await shop.client.post(
            path, json={"amount": 5, "idempotency_key": bad_key}, headers=shop.usage.headers
        )
        assert_error(response, 400, "invalid_request_error", "invalid_field", "idempotency_key")
    assert await books(shop.db) == before
    # A whole JSON number is an integer; the longest key fits the ledger's column once scoped to the user.
    whole = await shop.client.post(
        path, json={"amount": 5.0, "idempotency_key": "y" * 255}, headers=shop.usage.headers
    )
    assert whole.status_code == 201, whole.text
    again = await shop.client.post(
        path, json={"amount": 5, "idempotency_key": "y" * 255}, headers=shop.usage.headers
    )
    assert again.json()["transaction"]["id"] == whole.json()["transaction"]["id"]


# ---------------------------------------------------------------- holds


async def test_a_hold_reserves_credits_and_a_partial_capture_releases_the_rest(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    created = await hold(shop, shop.wallet, 40, expires_in=120, reason="worst case of one call")
    assert created.status_code == 201, created.text
    answer = created.json()
    pending = answer["hold"]
    assert (pending["status"], pending["amount"], pending["captured"], pending["asset"]) == (
        "pending",
        40,
        0,
        "credit",
    )
    assert pending["reason"] == "worst case of one call"
    expires_at = datetime.fromisoformat(pending["expires_at"])
    assert timedelta(seconds=100) < expires_at - utcnow() <= timedelta(seconds=120)
    assert (answer["wallet"]["balance"], answer["wallet"]["held"], answer["wallet"]["available"]) == (
        100,
        40,
        60,
    )
    assert answer["transaction"]["kind"] == "hold"

    seen = await shop.client.get(f"/v1/holds/{pending['id']}", headers=shop.user.headers)
    assert seen.status_code == 200 and seen.json() == pending

    captured = await shop.client.post(
        f"/v1/holds/{pending['id']}/capture",
        json={"amount": 25, "idempotency_key": "capture-1"},
        headers=shop.usage.headers,
    )
    assert captured.status_code == 200, captured.text
    result = captured.json()
    assert (result["hold"]["status"], result["hold"]["captured"]) == ("captured", 25)
    assert result["hold"]["resolve_transaction_id"] == result["transaction"]["id"]
    assert result["transaction"]["kind"] == "capture"
    assert (result["wallet"]["balance"], result["wallet"]["held"], result["wallet"]["available"]) == (
        75,
        0,
        75,
    )
    retried = await shop.client.post(
        f"/v1/holds/{pending['id']}/capture",
        json={"amount": 25, "idempotency_key": "capture-1"},
        headers=shop.usage.headers,
    )
    assert retried.status_code == 200
    assert (retried.json()["transaction"]["id"], retried.json()["replayed"]) == (
        result["transaction"]["id"],
        True,
    )
    assert (await wallet(shop, shop.wallet))["available"] == 75


async def test_a_hold_captured_without_an_amount_charges_all_of_it(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    pending = (await hold(shop, shop.wallet, 40)).json()["hold"]
    # Made without an expiry: it lasts the default 15 minutes.
    assert (
        timedelta(minutes=14)
        < datetime.fromisoformat(pending["expires_at"]) - utcnow()
        <= timedelta(minutes=15)
    )
    captured = await shop.client.post(
        f"/v1/holds/{pending['id']}/capture", json={"idempotency_key": key()}, headers=shop.server.headers
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["hold"]["captured"] == 40
    assert (await wallet(shop, shop.wallet))["available"] == 60


async def test_a_hold_resolves_once(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    pending = (await hold(shop, shop.wallet, 30)).json()["hold"]
    path = f"/v1/holds/{pending['id']}"
    before = await books(shop.db)
    too_much = await shop.client.post(
        f"{path}/capture", json={"amount": 31, "idempotency_key": key()}, headers=shop.usage.headers
    )
    assert_error(too_much, 400, "invalid_request_error", "capture_exceeds_hold", "amount")
    assert await books(shop.db) == before

    released = await shop.client.post(
        f"{path}/release", json={"idempotency_key": "r-1"}, headers=shop.usage.headers
    )
    assert released.status_code == 200, released.text
    assert released.json()["hold"]["status"] == "released"
    assert released.json()["transaction"]["kind"] == "release"
    assert (released.json()["wallet"]["held"], released.json()["wallet"]["available"]) == (0, 100)
    # The release, retried with its key, answers the same; anything else finds the hold no longer pending.
    retried = await shop.client.post(
        f"{path}/release", json={"idempotency_key": "r-1"}, headers=shop.usage.headers
    )
    assert (
        retried.status_code == 200
        and retried.json()["transaction"]["id"] == released.json()["transaction"]["id"]
    )
    before = await books(shop.db)
    for late in (
        await shop.client.post(
            f"{path}/capture", json={"amount": 5, "idempotency_key": key()}, headers=shop.usage.headers
        ),
        await shop.client.post(
            f"{path}/release", json={"idempotency_key": key()}, headers=shop.admin.headers
        ),
    ):
        assert_error(late, 409, "conflict", "hold_not_pending", "hold_id")
    assert await books(shop.db) == before
    assert (await shop.client.get(path, headers=shop.reader.headers)).json()["status"] == "released"


async def test_an_expired_hold_is_no_longer_pending(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    pending = (await hold(shop, shop.wallet, 30, expires_in=1)).json()["hold"]
    async with shop.db.transaction() as session:
        assert await ledger_service.expire_due_holds(session, now=utcnow() + timedelta(seconds=5)) == 1
    late = await shop.client.post(
        f"/v1/holds/{pending['id']}/capture",
        json={"amount": 5, "idempotency_key": key()},
        headers=shop.usage.headers,
    )
    assert_error(late, 409, "conflict", "hold_not_pending", "hold_id")
    shown = await shop.client.get(f"/v1/holds/{pending['id']}", headers=shop.usage.headers)
    assert shown.json()["status"] == "expired"
    assert (await wallet(shop, shop.wallet))["available"] == 100


async def test_hold_expiry_is_given_once_and_within_thirty_days(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    before = await books(shop.db)
    soon = (utcnow() + timedelta(hours=1)).isoformat()
    cases = [
        ({"expires_in": 60, "expires_at": soon}, "conflicting_fields"),
        ({"expires_at": "2020-01-01T00:00:00Z"}, "invalid_expiry"),
        ({"expires_at": (utcnow() + timedelta(days=31)).isoformat()}, "invalid_expiry"),
    ]
    for fields, code in cases:
        assert_error(
            await hold(shop, shop.wallet, 5, **fields), 400, "invalid_request_error", code, "expires_at"
        )
    assert_error(
        await hold(shop, shop.wallet, 5, expires_in=0),
        400,
        "invalid_request_error",
        "invalid_field",
        "expires_in",
    )
    assert await books(shop.db) == before
    at = await hold(shop, shop.wallet, 5, expires_at="2999-01-01T00:00:00+05:30")
    assert_error(at, 400, "invalid_request_error", "invalid_expiry", "expires_at")
    exact = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    made = await hold(
        shop,
        shop.wallet,
        5,
        expires_at=exact.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
    )
    assert made.status_code == 201, made.text
    assert datetime.fromisoformat(made.json()["hold"]["expires_at"]) == exact


async def test_a_hold_needs_enough_available_credits(shop: Shop) -> None:
    await grant(shop, shop.wallet, 50)
    assert (await hold(shop, shop.wallet, 30)).status_code == 201
    before = await books(shop.db)
    error = assert_error(
        await hold(shop, shop.wallet, 21), 402, "insufficient_funds", "insufficient_credits", "amount"
    )
    assert error["available"] == 20
    assert await books(shop.db) == before
    unknown = await hold(shop, "wal_00000000000000000000000000", 5)
    assert_error(unknown, 404, "not_found", "resource_missing", "wallet")


# ---------------------------------------------------------------- transfers


async def _second_wallet(shop: Shop, user: factories.TestUser, name: str = "agent") -> str:
    opened = await shop.client.post("/v1/wallets", json={"name": name}, headers=user.headers)
    assert opened.status_code == 201, opened.text
    wallet_id: str = opened.json()["id"]
    return wallet_id


async def transfer(
    shop: Shop, source: str, target: str, amount: int, headers: dict[str, str], idempotency_key: str = ""
) -> httpx.Response:
    body = {
        "from_wallet": source,
        "to_wallet": target,
        "amount": amount,
        "idempotency_key": idempotency_key or key(),
    }
    return await shop.client.post("/v1/transfers", json=body, headers=headers)


async def test_a_user_moves_credits_between_their_own_wallets(shop: Shop) -> None:
    agent = await _second_wallet(shop, shop.user)
    await grant(shop, shop.wallet, 100, source="paid")
    moved = await transfer(shop, shop.wallet, agent, 40, shop.user.headers, idempotency_key="allot-agent")
    assert moved.status_code == 201, moved.text
    answer = moved.json()
    assert answer["transaction"]["kind"] == "transfer"
    assert (answer["wallet"]["wallet_id"], answer["wallet"]["available"]) == (shop.wallet, 60)
    assert (answer["to_wallet"]["wallet_id"], answer["to_wallet"]["available"]) == (agent, 40)
    # The credits keep their source: paid credits stay paid in the agent's wallet.
    assert (await wallet(shop, agent))["paid"] == 40
    again = await transfer(shop, shop.wallet, agent, 40, shop.usage.headers, idempotency_key="allot-agent")
    assert (again.json()["transaction"]["id"], again.json()["replayed"]) == (
        answer["transaction"]["id"],
        True,
    )
    before = await books(shop.db)
    error = assert_error(
        await transfer(shop, agent, shop.wallet, 41, shop.user.headers),
        402,
        "insufficient_funds",
        "insufficient_credits",
        "amount",
    )
    assert error["available"] == 40
    assert_error(
        await transfer(shop, agent, agent, 1, shop.user.headers),
        400,
        "invalid_request_error",
        "same_wallet",
        "to_wallet",
    )
    assert await books(shop.db) == before


async def test_sending_credits_to_another_user_is_off_by_default(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    before = await books(shop.db)
    refused = await transfer(shop, shop.wallet, shop.other_wallet, 10, shop.user.headers)
    assert_error(refused, 404, "not_found", "resource_missing", "to_wallet")
    assert "turned off" in refused.json()["error"]["message"]
    assert await books(shop.db) == before
    # Admins move credits between anyone's wallets.
    moved = await transfer(shop, shop.wallet, shop.other_wallet, 10, shop.admin.headers)
    assert moved.status_code == 201, moved.text
    assert moved.json()["to_wallet"]["available"] == 10
    assert (await wallet(shop, shop.other_wallet, headers=shop.other.headers))["available"] == 10


@pytest.mark.parametrize("settings_overrides", [{"allow_user_transfers": True}])
async def test_users_send_credits_to_each_other_when_allowed(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    sent = await transfer(shop, shop.wallet, shop.other_wallet, 25, shop.user.headers)
    assert sent.status_code == 201, sent.text
    answer = sent.json()
    assert answer["wallet"]["available"] == 75
    assert answer["to_wallet"] is None  # the recipient's balance is theirs to see
    assert (await wallet(shop, shop.other_wallet, headers=shop.other.headers))["available"] == 25
    # Both ends see the transaction; a third user does not.
    transaction_id = answer["transaction"]["id"]
    assert (
        await shop.client.get(f"/v1/transactions/{transaction_id}", headers=shop.other.headers)
    ).status_code == 200
    third = await make_customer(shop.app)
    assert (
        await shop.client.get(f"/v1/transactions/{transaction_id}", headers=third.headers)
    ).status_code == 404
    # The sender still cannot take from the recipient's wallet.
    taken = await transfer(shop, shop.other_wallet, shop.wallet, 5, shop.user.headers)
    assert_error(taken, 404, "not_found", "resource_missing", "from_wallet")
    unknown = await transfer(shop, shop.wallet, "wal_00000000000000000000000000", 5, shop.user.headers)
    assert_error(unknown, 404, "not_found", "resource_missing", "to_wallet")


async def test_frozen_wallets_neither_send_nor_receive(shop: Shop) -> None:
    agent = await _second_wallet(shop, shop.user)
    await grant(shop, shop.wallet, 100)
    await grant(shop, agent, 10)
    frozen = await shop.client.patch(
        f"/v1/wallets/{agent}", json={"frozen": True}, headers=shop.admin.headers
    )
    assert frozen.status_code == 200
    before = await books(shop.db)
    for source, target in ((shop.wallet, agent), (agent, shop.wallet)):
        refused = await transfer(shop, source, target, 5, shop.user.headers)
        assert refused.status_code == 409, refused.text
        assert (refused.json()["error"]["type"], refused.json()["error"]["code"]) == (
            "conflict",
            "wallet_frozen",
        )
    assert await books(shop.db) == before


async def test_credits_do_not_move_between_assets(shop: Shop) -> None:
    async with shop.db.transaction() as session:
        dollars = await ledger_service.open_wallet(session, user_id=shop.user.id, name="dollars", asset="USD")
    await grant(shop, shop.wallet, 100)
    before = await books(shop.db)
    mismatch = await transfer(shop, shop.wallet, dollars.id, 5, shop.user.headers)
    assert_error(mismatch, 400, "invalid_request_error", "asset_mismatch", "to_wallet")
    assert await books(shop.db) == before
    assert (await wallet(shop, dollars.id))["asset"] == "USD"


# ---------------------------------------------------------------- lists


async def test_wallet_transactions_page_newest_first_and_filter_by_kind_and_time(shop: Shop) -> None:
    await grant(shop, shop.wallet, 100)
    debits = [(await debit(shop, shop.wallet, amount)).json()["transaction"] for amount in (1, 2, 3, 4)]
    pending = (await hold(shop, shop.wallet, 5)).json()["transaction"]
    path = f"/v1/wallets/{shop.wallet}/transactions"
    everything = (await shop.client.get(path, headers=shop.user.headers)).json()["data"]
    assert [t["kind"] for t in everything] == ["hold", "spend", "spend", "spend", "spend", "grant"]
    assert everything[0] == pending

    first = (await shop.client.get(path, params={"limit": 2}, headers=shop.user.headers)).json()
    assert ([t["id"] for t in first["data"]], first["has_more"]) == ([pending["id"], debits[3]["id"]], True)
    second = (
        await shop.client.get(
            path, params={"limit": 2, "starting_after": first["data"][-1]["id"]}, headers=shop.reader.headers
        )
    ).json()
    assert [t["id"] for t in second["data"]] == [debits[2]["id"], debits[1]["id"]]
    back = (
        await shop.client.get(path, params={"ending_before": debits[1]["id"]}, headers=shop.user.headers)
    ).json()
    assert [t["id"] for t in back["data"]] == [pending["id"], debits[3]["id"], debits[2]["id"]]

    spends = (await shop.client.get(path, params={"kind": "spend"}, headers=shop.user.headers)).json()["data"]
    assert [t["id"] for t in spends] == [d["id"] for d in reversed(debits)]
    assert all(t["postings"] for t in spends)
    middle = debits[2]["created_at"]
    after = (await shop.client.get(path, params={"created_after": middle}, headers=shop.user.headers)).json()
    assert [t["id"] for t in after["data"]] == [pending["id"], debits[3]["id"], debits[2]["id"]]
    before = (
        await shop.client.get(
            path, params={"created_before": middle, "kind": "spend"}, headers=shop.user.headers
        )
    ).json()
    assert [t["id"] for t in before["data"]] == [debits[1]["id"], debits[0]["id"]]
    # Times beyond what UTC can hold are the calendar's edges, not an error.
    edge = await shop.client.get(
        path, params={"created_before": "0001-01-01T00:00:00+14:00"}, headers=shop.user.headers
    )
    assert edge.status_code == 200 and edge.json()["data"] == []

    assert_error(
        await shop.client.get(path, params={"kind": "theft"}, headers=shop.user.headers),
        400,
        "invalid_request_error",
        "invalid_field",
        "kind",
    )
    assert_error(
        await shop.client.get(path, params={"created_after": "yesterday"}, headers=shop.user.headers),
        400,
        "invalid_request_error",
        "invalid_field",
        "created_after",
    )
    assert_error(
        await shop.client.get(
            path,
            params={"starting_after": debits[0]["id"], "ending_before": debits[1]["id"]},
            headers=shop.user.headers,
        ),
        400,
        "invalid_request_error",
        "invalid_cursor",
        "ending_before",
    )


async def test_lots_list_each_grant_with_what_is_left(shop: Shop) -> None:
    promo = await grant(shop, shop.wallet, 30, source="promotional")
    paid = await grant(shop, shop.wallet, 50, source="paid")
    await debit(shop, shop.wallet, 40)
    listed = await shop.client.get(f"/v1/wallets/{shop.wallet}/lots", headers=shop.reader.headers)
    assert listed.status_code == 200
    lots = listed.json()["data"]
    assert [
        (lot["transaction_id"], lot["source"], lot["amount"], lot["remaining"], lot["asset"]) for lot in lots
    ] == [
        (paid["transaction"]["id"], "paid", 50, 40, "credit"),
        (promo["transaction"]["id"], "promotional", 30, 0, "credit"),
    ]
    page = (
        await shop.client.get(
            f"/v1/wallets/{shop.wallet}/lots", params={"limit": 1}, headers=shop.user.headers
        )
    ).json()
    assert (len(page["data"]), page["has_more"]) == (1, True)


async def test_the_wallet_list_pages_and_shows_each_wallets_balance(shop: Shop) -> None:
    agents = [await _second_wallet(shop, shop.user, name=f"agent {n}") for n in range(3)]
    await grant(shop, agents[1], 12)
    page = (await shop.client.get("/v1/wallets", params={"limit": 2}, headers=shop.user.headers)).json()
    assert ([w["id"] for w in page["data"]], page["has_more"]) == ([agents[2], agents[1]], True)
    assert [w["available"] for w in page["data"]] == [0, 12]
    rest = (
        await shop.client.get("/v1/wallets", params={"starting_after": agents[1]}, headers=shop.user.headers)
    ).json()
    assert ([w["id"] for w in rest["data"]], rest["has_more"]) == ([agents[0], shop.wallet], False)
    assert (await shop.client.get("/v1/wallets", headers=shop.other.headers)).json()["data"][0]["id"] == (
        shop.other_wallet
    )


async def test_a_transaction_shows_its_postings_to_whoever_owns_a_wallet_it_touched(shop: Shop) -> None:
    await grant(shop, shop.wallet, 50)
    pending = (await hold(shop, shop.wallet, 20)).json()
    transaction_id = pending["transaction"]["id"]
    for headers in (shop.user.headers, shop.reader.headers, shop.admin.headers, shop.server.headers):
        shown = await shop.client.get(f"/v1/transactions/{transaction_id}", headers=headers)
        assert shown.status_code == 200, shown.text
        assert shown.json() == pending["transaction"]
    postings = pending["transaction"]["postings"]
    assert sum(p["amount"] for p in postings) == 0
    assert {p["asset"] for p in postings} == {"credit"}
    assert_error(
        await shop.client.get(f"/v1/transactions/{transaction_id}", headers=shop.other.headers),
        404,
        "not_found",
        "resource_missing",
        "transaction_id",
    )
    assert_error(
        await shop.client.get("/v1/transactions/txn_00000000000000000000000000", headers=shop.admin.headers),
        404,
        "not_found",
        "resource_missing",
        "transaction_id",
    )
