"""The audit log: every admin write records who, what, when, before and after; admins read it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from prepaid.audit.models import AuditLogEntry
from prepaid.db import Database
from tests.factories import make_api_key, make_customer
from tests.helpers import audit_log


async def test_an_admin_update_records_actor_before_after_and_request(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app, name="Before Name")
    response = await client.patch(
        f"/v1/users/{user.id}",
        json={"name": "After Name", "roles": ["user", "vendor"], "active": False},
        headers={**admin.headers, "X-Request-Id": "req-audit-0001"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-audit-0001"

    [entry] = await audit_log(client, admin.headers)
    assert entry["object"] == "audit_log_entry"
    assert entry["id"].startswith("aud_")
    assert entry["actor_user_id"] == admin.id
    assert entry["actor_api_key_id"] is None
    assert entry["action"] == "user.update"
    assert entry["object_type"] == "user"
    assert entry["object_id"] == user.id
    assert entry["before"] == {"name": "Before Name", "roles": ["user"], "active": True, "email": user.email}
    assert entry["after"] == {
        "name": "After Name",
        "roles": ["user", "vendor"],
        "active": False,
        "email": user.email,
    }
    assert entry["request_id"] == "req-audit-0001"
    assert entry["ip"] == "127.0.0.1"
    created = datetime.fromisoformat(entry["created_at"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)


async def test_a_write_that_changes_nothing_or_is_refused_records_nothing(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app, name="Same")
    same = await client.patch(f"/v1/users/{user.id}", json={"name": "Same"}, headers=admin.headers)
    assert same.status_code == 200
    refused = await client.patch(f"/v1/users/{admin.id}", json={"roles": ["user"]}, headers=admin.headers)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "self_demotion"
    invalid = await client.patch(f"/v1/users/{user.id}", json={"roles": []}, headers=admin.headers)
    assert invalid.status_code == 400
    missing = await client.patch(
        "/v1/users/usr_01AAAAAAAAAAAAAAAAAAAAAAAA", json={"name": "x"}, headers=admin.headers
    )
    assert missing.status_code == 404
    assert await audit_log(client, admin.headers) == []


async def test_api_key_writes_by_an_admin_are_recorded_without_the_secret(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    created = await client.post(
        "/v1/api_keys",
        json={"name": "server", "scopes": ["orders:write"], "server": True},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text
    key_id, secret = created.json()["id"], created.json()["secret"]
    revoked = await client.delete(f"/v1/api_keys/{key_id}", headers=admin.headers)
    assert revoked.status_code == 200

    revoke_entry, create_entry = await audit_log(client, admin.headers)
    assert create_entry["action"] == "api_key.create"
    assert create_entry["object_id"] == key_id
    assert create_entry["before"] is None
    assert create_entry["after"] == {"name": "server", "scopes": ["orders:write"], "server": True}
    assert revoke_entry["action"] == "api_key.revoke"
    assert revoke_entry["before"] == {"revoked": False}
    assert revoke_entry["after"] == {"revoked": True}
    listing = await client.get("/v1/audit_log", headers=admin.headers)
    assert secret not in listing.text
    assert secret[len("sk_") + 12 :] not in listing.text


async def test_an_admin_acting_through_an_api_key_is_recorded_with_the_key(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    key = await make_api_key(app, admin, scopes=["admin"], server=True)
    user = await make_customer(app)
    response = await client.patch(f"/v1/users/{user.id}", json={"name": "Renamed"}, headers=key.headers)
    assert response.status_code == 200, response.text
    entries = await audit_log(client, admin.headers, action="user.update")
    [entry] = entries
    assert entry["actor_user_id"] == admin.id
    assert entry["actor_api_key_id"] == key.id


async def test_filters(app: Any, client: httpx.AsyncClient, db: Database) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    other_admin = await make_customer(app, roles=["user", "admin"])
    alice = await make_customer(app)
    bob = await make_customer(app)
    await client.patch(f"/v1/users/{alice.id}", json={"name": "A1"}, headers=admin.headers)
    await client.patch(f"/v1/users/{bob.id}", json={"name": "B1"}, headers=other_admin.headers)
    key = await client.post(
        "/v1/api_keys", json={"name": "k", "scopes": ["usage:write"]}, headers=other_admin.headers
    )
    assert key.status_code == 201
    everything = await audit_log(client, admin.headers)
    assert len(everything) == 3

    assert [e["object_id"] for e in await audit_log(client, admin.headers, actor=admin.id)] == [alice.id]
    assert {e["object_id"] for e in await audit_log(client, admin.headers, actor=other_admin.id)} == {
        bob.id,
        key.json()["id"],
    }
    assert [e["object_id"] for e in await audit_log(client, admin.headers, action="api_key.create")] == [
        key.json()["id"]
    ]
    assert {e["object_id"] for e in await audit_log(client, admin.headers, object_type="user")} == {
        alice.id,
        bob.id,
    }
    assert [e["actor_user_id"] for e in await audit_log(client, admin.headers, object_id=bob.id)] == [
        other_admin.id
    ]
    assert await audit_log(client, admin.headers, action="user.delete") == []

    # time filters: move Alice's entry a day back
    async with db.transaction() as session:
        await session.execute(
            update(AuditLogEntry)
            .where(AuditLogEntry.object_id == alice.id)
            .values(created_at=datetime.now(UTC) - timedelta(days=1))
        )
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert [e["object_id"] for e in await audit_log(client, admin.headers, created_before=hour_ago)] == [
        alice.id
    ]
    recent = await audit_log(client, admin.headers, created_after=hour_ago)
    assert alice.id not in {e["object_id"] for e in recent}
    assert len(recent) == 2
    both = await audit_log(client, admin.headers, created_after=hour_ago, object_type="user")
    assert [e["object_id"] for e in both] == [bob.id]
    bad = await client.get("/v1/audit_log", params={"created_after": "yesterday"}, headers=admin.headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "created_after"


async def test_only_admins_read_the_audit_log(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app)
    await client.patch(f"/v1/users/{user.id}", json={"name": "Seen by admins"}, headers=admin.headers)

    anonymous = await client.get("/v1/audit_log")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    as_user = await client.get("/v1/audit_log", headers=user.headers)
    assert as_user.status_code == 403
    assert as_user.json()["error"]["type"] == "permission_error"
    assert "Seen by admins" not in as_user.text
    user_key = await make_api_key(app, user, scopes=["balance:read"])
    assert (await client.get("/v1/audit_log", headers=user_key.headers)).status_code == 403
    # an admin's key without the admin scope is not an admin
    weak_key = await make_api_key(app, admin, scopes=["balance:read"])
    assert (await client.get("/v1/audit_log", headers=weak_key.headers)).status_code == 403
    admin_key = await make_api_key(app, admin, scopes=["admin"], server=True)
    assert (await client.get("/v1/audit_log", headers=admin_key.headers)).status_code == 200


async def test_the_audit_log_is_append_only_over_http(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    for method in ("POST", "PATCH", "PUT", "DELETE"):
        response = await client.request(method, "/v1/audit_log", json={}, headers=admin.headers)
        assert response.status_code == 405, method
