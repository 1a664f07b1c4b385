"""100 concurrent debits of 1 credit on a wallet holding 10, over real HTTP to a real ``prepaid serve``: on
PostgreSQL with 2 worker processes (either may take any request, so only the database keeps them apart), and
on SQLite with its one process. Exactly 10 go through, 90 are refused with ``insufficient_credits``, the wallet
ends at 0, and ``prepaid check`` passes.

The set-up (an admin, a server key with ``usage:write``, a customer's wallet granted 10 credits) is written
straight into the database the server uses, through the same services the API calls.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from prepaid.auth import service as auth_service
from prepaid.db import create_engine, open_database
from prepaid.ledger import service as ledger
from prepaid.ledger.models import Account, Transaction
from tests.e2e.conftest import ServerFactory, run_prepaid

DEBITS = 100
CREDITS = 10
REQUEST_TIMEOUT = 60.0  # per request: far above what 100 small writes need, far below pytest's patience


@dataclass
class Scene:
    api_key: str
    wallet_id: str


async def _set_up(database_url: str) -> Scene:
    db = open_database(database_url)
    try:
        async with db.transaction() as session:
            tag = secrets.token_hex(4)
            admin = await auth_service.create_user(
                session, email=f"spends-admin-{tag}@example.com", password=None, roles=["admin"]
            )
            customer = await auth_service.create_user(
                session, email=f"spends-customer-{tag}@example.com", password=None, roles=["user"]
            )
            _key, secret = await auth_service.create_api_key(
                session,
                actor=auth_service.Principal(user=admin),
                name="concurrent spends",
                scopes=["usage:write"],
                server=True,
            )
            wallet = await ledger.open_wallet(session, user_id=customer.id, name="agent")
        async with db.transaction() as session:
            await ledger.grant(session, wallet_id=wallet.id, amount=CREDITS, idempotency_key=f"grant-{tag}")
        return Scene(api_key=secret, wallet_id=wallet.id)
    finally:
        await db.dispose()


async def _wallet_state(database_url: str, wallet_id: str) -> tuple[int, int, int]:
    """The wallet's balance and held credits, and the number of spend transactions in the database."""
    db = open_database(database_url)
    try:
        async with db.transaction(write=False) as session:
            wallet = await session.get(Account, wallet_id)
            assert wallet is not None
            spends = await session.scalar(
                select(func.count()).select_from(Transaction).where(Transaction.kind == "spend")
            )
            return wallet.balance, wallet.held, int(spends or 0)
    finally:
        await db.dispose()


async def _debit_all_at_once(base_url: str, scene: Scene) -> list[httpx.Response]:
    """``DEBITS`` requests, each on its own connection, all sent before any is answered."""
    limits = httpx.Limits(max_connections=DEBITS, max_keepalive_connections=DEBITS)
    headers = {"Authorization": f"Bearer {scene.api_key}"}
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=REQUEST_TIMEOUT
    ) as http:
        run = secrets.token_hex(4)
        return await asyncio.gather(
            *(
                http.post(
                    f"/v1/wallets/{scene.wallet_id}/debits",
                    json={"amount": 1, "idempotency_key": f"debit-{run}-{i}", "reason": "concurrency test"},
                )
                for i in range(DEBITS)
            )
        )


async def _admin_sql(url: str, sql: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture
def fresh_postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this test's own on the test PostgreSQL server, so ``prepaid check`` judges only the rows
    this test made (the shared test database holds whatever the tests before it left, corrupt rows included).
    ``prepaid migrate`` fills it; it is dropped afterwards."""
    base: str = request.getfixturevalue("postgres_url")
    name = f"prepaid_spends_{secrets.token_hex(4)}"
    asyncio.run(_admin_sql(base, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin_sql(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _assert_exactly_ten_went_through(responses: list[httpx.Response]) -> None:
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {201: CREDITS, 402: DEBITS - CREDITS}, {
        status: [r.text[:300] for r in responses if r.status_code == status][:3] for status in statuses
    }
    errors: list[dict[str, Any]] = [r.json()["error"] for r in responses if r.status_code == 402]
    assert {(error["type"], error["code"]) for error in errors} == {
        ("insufficient_funds", "insufficient_credits")
    }


@pytest.mark.parametrize("engine", ["postgresql", "sqlite"])
def test_hundred_concurrent_http_debits_of_one_on_ten_credits_let_exactly_ten_through(
    engine: str, servers: ServerFactory, request: pytest.FixtureRequest
) -> None:
    if engine == "postgresql":
        database_url = request.getfixturevalue("fresh_postgres_url")
        workers = 2
    else:
        database_url = servers.sqlite_url("spends.db")
        workers = 1
    server = servers.serve(database_url=database_url, workers=workers)  # migrates first
    scene = asyncio.run(_set_up(database_url))

    responses = asyncio.run(_debit_all_at_once(server.base_url, scene))

    _assert_exactly_ten_went_through(responses)
    balance, held, spends = asyncio.run(_wallet_state(database_url, scene.wallet_id))
    assert (balance, held) == (0, 0)
    assert spends == CREDITS
    check = run_prepaid("check", env=server.env, cwd=server.cwd)
    assert check.returncode == 0, check.output
    assert "Ledger check passed" in check.output
