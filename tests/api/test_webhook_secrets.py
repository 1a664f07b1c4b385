"""Webhook endpoint secrets are sealed at rest, on both engines: the row holds AES-GCM ciphertext under a key
derived from ``PREPAID_SECRET_KEY`` and the endpoint's id (no column holds the secret), deliveries are still
signed with the real secret (a real local receiver verifies them), another key opens nothing, and migration
0014 seals the secrets of existing rows on the way up and gives them back on the way down."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from sqlalchemy import text
from sqlalchemy.engine import make_url

from prepaid.db import create_engine, utcnow
from prepaid.migrate import downgrade, upgrade
from prepaid.notify import webhooks_out
from prepaid.webhook_signature import verify_signature
from tests.api.test_migrations import _postgres_admin
from tests.api.test_webhooks_out import Receiver, emit_committed, make_endpoint, run_job
from tests.conftest import PG_URL, skip_or_fail
from tests.factories import make_admin, make_customer


async def _raw_row(app: Any, endpoint_id: str) -> dict[str, Any]:
    async with app.state.db.transaction(write=False) as session:
        row = (
            await session.execute(
                text("SELECT * FROM notify_webhook_endpoint WHERE id = :id"), {"id": endpoint_id}
            )
        ).one()
        return dict(row._mapping)


def _holds(value: Any, secret: str) -> bool:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return secret.encode() in bytes(value)
    return secret in str(value)


async def test_the_stored_row_does_not_hold_the_secret_and_deliveries_are_still_signed(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin, buyer = await make_admin(app), await make_customer(app)
    with Receiver() as receiver:
        endpoint = await make_endpoint(client, admin, receiver.url, ["order.paid"])
        secret = endpoint["secret"]
        assert secret.startswith("whsec_") and len(secret) > 40

        row = await _raw_row(app, endpoint["id"])
        assert "secret" not in row  # the clear column is gone
        assert not [name for name, value in row.items() if _holds(value, secret)]
        sealed = bytes(row["secret_sealed"])
        assert len(sealed) == 12 + len(secret) + 16  # nonce, ciphertext, tag
        key = app.state.settings.secret_key
        assert webhooks_out.unseal_secret(key, endpoint["id"], sealed) == secret
        with pytest.raises(InvalidTag):  # another deployment's key opens nothing
            webhooks_out.unseal_secret("another-secret-key-" + "x" * 40, endpoint["id"], sealed)
        with pytest.raises(InvalidTag):  # nor does the same ciphertext on another endpoint's row
            webhooks_out.unseal_secret(key, "whe_other", sealed)

        await emit_committed(app.state.db, buyer.id, "order.paid", order_id="ord_sealed")
        assert await run_job(app) == 1
        [(headers, body)] = receiver.received()
        assert verify_signature(secret, headers["prepaid-signature"], body) > 0

    deleted = await client.delete(f"/v1/webhook_endpoints/{endpoint['id']}", headers=admin.headers)
    assert deleted.status_code == 200, deleted.text
    assert (await _raw_row(app, endpoint["id"]))["secret_sealed"] is None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_at_0013(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database migrated up to 0013 (secrets in clear)."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'sealing.db'}"
        upgrade(url, "0013_webhooks_out")
        yield url
        return
    if not PG_URL:
        skip_or_fail(
            "PostgreSQL tests need PREPAID_TEST_DATABASE_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1/test)"
        )
    name = f"prepaid_sealing_{os.getpid()}_{secrets.token_hex(3)}"
    _postgres_admin(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        upgrade(url, "0013_webhooks_out")
        yield url
    finally:
        _postgres_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _sql(url: str, statement: str, **params: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                result = await connection.execute(text(statement), params)
                return [dict(row._mapping) for row in result] if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_migration_0014_seals_existing_secrets_and_its_downgrade_gives_them_back(
    database_at_0013: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "sealing-test-key-" + secrets.token_hex(16)
    monkeypatch.setenv("PREPAID_SECRET_KEY", key)
    url = database_at_0013
    live, gone = "whsec_" + secrets.token_urlsafe(32), ""
    for endpoint_id, secret, deleted in (("whe_live", live, None), ("whe_gone", gone, utcnow())):
        _sql(
            url,
            "INSERT INTO notify_webhook_endpoint (id, url, description, event_types, secret, created_at, "
            "deleted_at) VALUES (:id, 'https://app.example.com/hooks', NULL, '[\"order.paid\"]', :secret, "
            ":created_at, :deleted_at)",
            id=endpoint_id,
            secret=secret,
            created_at=utcnow(),
            deleted_at=deleted,
        )

    upgrade(url)
    rows = {row["id"]: row for row in _sql(url, "SELECT * FROM notify_webhook_endpoint")}
    assert all("secret" not in row for row in rows.values())
    assert not [row for row in rows.values() for value in row.values() if _holds(value, live)]
    assert webhooks_out.unseal_secret(key, "whe_live", bytes(rows["whe_live"]["secret_sealed"])) == live
    assert rows["whe_gone"]["secret_sealed"] is None

    downgrade(url, "0013_webhooks_out")
    back = {row["id"]: row for row in _sql(url, "SELECT * FROM notify_webhook_endpoint")}
    assert {endpoint_id: row["secret"] for endpoint_id, row in back.items()} == {
        "whe_live": live,
        "whe_gone": "",
    }
    assert all("secret_sealed" not in row for row in back.values())

    # With another PREPAID_SECRET_KEY the sealed secrets cannot be opened: the downgrade refuses and changes
    # nothing rather than writing garbage.
    upgrade(url)
    monkeypatch.setenv("PREPAID_SECRET_KEY", "another-key-" + secrets.token_hex(16))
    with pytest.raises(InvalidTag):
        downgrade(url, "0013_webhooks_out")
    monkeypatch.setenv("PREPAID_SECRET_KEY", key)
    still = {row["id"]: row for row in _sql(url, "SELECT * FROM notify_webhook_endpoint")}
    assert webhooks_out.unseal_secret(key, "whe_live", bytes(still["whe_live"]["secret_sealed"])) == live
