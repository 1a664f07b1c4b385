"""API keys: minting with scopes, the secret shown once and stored hashed, using and revoking them."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error

ALL_SCOPES = ["usage:write", "balance:read", "customers:write", "orders:write", "admin"]


async def key_rows(app: Any) -> list[dict[str, Any]]:
    async with app.state.db.transaction(write=False) as session:
        rows = (await session.execute(text("SELECT * FROM auth_api_key"))).mappings().all()
    return [dict(row) for row in rows]


async def test_a_new_key_shows_its_secret_once_and_is_stored_only_as_a_hash(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_customer(app)
    created = await client.post(
        "/v1/api_keys",
        headers=user.headers,
        json={"name": "my bot", "scopes": ["usage:write", "balance:read"]},
    )
    assert created.status_code == 201, created.text
    key = created.json()
    secret = key["secret"]
    assert key["object"] == "api_key"
    assert key["id"].startswith("key_")
    assert secret.startswith("sk_")
    assert secret.startswith(key["prefix"]) and len(secret) > len(key["prefix"]) + 16
    assert (key["user_id"], key["name"], key["server"]) == (user.id, "my bot", False)
    assert key["scopes"] == ["balance:read", "usage:write"]

    listed = await client.get("/v1/api_keys", headers=user.headers)
    assert listed.status_code == 200, listed.text
    (row,) = listed.json()["data"]
    assert row["id"] == key["id"]
    assert "secret" not in row
    assert secret not in listed.text

    (stored,) = await key_rows(app)
    assert stored["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    for column, value in stored.items():
        assert secret not in str(value), f"auth_api_key.{column} holds the secret"


async def test_a_key_works_as_bearer_and_as_x_api_key(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    key = await make_api_key(app, user, scopes=["balance:read"])
    for headers in ({"Authorization": f"Bearer {key.secret}"}, {"X-Api-Key": key.secret}):
        me = await client.get("/v1/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == user.id


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param(lambda secret: secret[:-4] + "AAAA", id="right prefix, wrong secret"),
        pytest.param(lambda secret: secret[:15], id="prefix alone"),
        pytest.param(lambda secret: "sk_" + "0" * 60, id="unknown key"),
    ],
)
async def test_a_wrong_key_is_401(app: Any, client: httpx.AsyncClient, presented: Any) -> None:
    user = await make_customer(app)
    key = await make_api_key(app, user, scopes=["balance:read"])
    for headers in (
        {"Authorization": f"Bearer {presented(key.secret)}"},
        {"X-Api-Key": presented(key.secret)},
    ):
        refused = await client.get("/v1/me", headers=headers)
        assert_error(refused, 401, "authentication_error", "invalid_api_key")


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"scopes": ["customers:write"]}, "scope_forbidden", "scopes"),
        ({"scopes": ["usage:write", "orders:write"]}, "scope_forbidden", "scopes"),
        ({"scopes": ["admin"]}, "scope_forbidden", "scopes"),
        ({"scopes": ["usage:write"], "server": True}, "server_key_forbidden", "server"),
    ],
)
async def test_a_user_may_mint_only_usage_and_balance_keys_for_themselves(
    app: Any, client: httpx.AsyncClient, body: dict[str, Any], code: str, param: str
) -> None:
    user = await make_customer(app)
    refused = await client.post("/v1/api_keys", headers=user.headers, json=body)
    assert_error(refused, 403, "permission_error", code, param)
    assert await key_rows(app) == []


async def test_key_scopes_must_be_known_and_not_empty(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    unknown = await client.post("/v1/api_keys", headers=user.headers, json={"scopes": ["wallets:drain"]})
    assert_error(unknown, 400, "invalid_request_error", "invalid_field", "scopes.0")
    empty = await client.post("/v1/api_keys", headers=user.headers, json={"scopes": []})
    assert_error(empty, 400, "invalid_request_error", "invalid_field", "scopes")
    assert await key_rows(app) == []


async def test_an_admin_mints_server_keys_with_any_scope(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    created = await client.post(
        "/v1/api_keys", headers=admin.headers, json={"name": "bot", "scopes": ALL_SCOPES, "server": True}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["server"] is True
    assert sorted(key["scopes"]) == sorted(ALL_SCOPES)
    users = await client.get("/v1/users", headers={"X-Api-Key": key["secret"]})
    assert users.status_code == 200, "a server key with the admin scope acts as its admin"

    audit = await client.get("/v1/audit_log", headers=admin.headers, params={"object_id": key["id"]})
    (entry,) = audit.json()["data"]
    assert (entry["action"], entry["actor_user_id"], entry["before"]) == ("api_key.create", admin.id, None)
    assert entry["after"]["server"] is True
    assert key["secret"] not in audit.text


async def test_a_revoked_key_answers_401(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    key = await make_api_key(app, user, scopes=["usage:write"])
    kept = await make_api_key(app, user, scopes=["balance:read"])

    revoked = await client.delete(f"/v1/api_keys/{key.id}", headers=user.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["id"] == key.id
    assert "secret" not in revoked.json()

    assert_error(
        await client.get("/v1/me", headers=key.headers), 401, "authentication_error", "invalid_api_key"
    )
    assert_error(
        await client.get("/v1/me", headers={"X-Api-Key": key.secret}),
        401,
        "authentication_error",
        "invalid_api_key",
    )
    assert (await client.get("/v1/me", headers=kept.headers)).status_code == 200
    listed = await client.get("/v1/api_keys", headers=user.headers)
    assert [row["id"] for row in listed.json()["data"]] == [kept.id]
    again = await client.delete(f"/v1/api_keys/{key.id}", headers=user.headers)
    assert_error(again, 404, "not_found", "resource_missing", "id")


async def test_api_keys_cannot_reach_session_only_routes(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    key = await make_api_key(app, admin, scopes=ALL_SCOPES, server=True)
    calls = [
        ("POST", "/v1/api_keys", {"scopes": ["admin"], "server": True}),
        ("GET", "/v1/api_keys", None),
        ("DELETE", f"/v1/api_keys/{key.id}", None),
        ("PATCH", "/v1/me", {"name": "Changed by a key"}),
        ("POST", "/v1/me/delete", {"password": admin.password}),
    ]
    for method, path, body in calls:
        for headers in (key.headers, {"X-Api-Key": key.secret}):
            refused = await client.request(method, path, headers=headers, json=body)
            assert_error(refused, 403, "permission_error", "session_required")

    assert len(await key_rows(app)) == 1
    assert (await client.get("/v1/me", headers=key.headers)).status_code == 200


async def test_a_user_cannot_see_or_revoke_another_users_keys(app: Any, client: httpx.AsyncClient) -> None:
    owner = await make_customer(app)
    other = await make_customer(app)
    key = await make_api_key(app, owner, scopes=["usage:write"])

    listed = await client.get("/v1/api_keys", headers=other.headers)
    assert listed.json()["data"] == []
    refused = await client.delete(f"/v1/api_keys/{key.id}", headers=other.headers)
    assert_error(refused, 404, "not_found", "resource_missing", "id")
    assert (await client.get("/v1/me", headers=key.headers)).status_code == 200


async def test_an_admin_sees_and_revokes_any_key_and_the_audit_log_says_so(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app)
    key = await make_api_key(app, user, scopes=["usage:write"])
    listed = await client.get("/v1/api_keys", headers=admin.headers)
    assert key.id in [row["id"] for row in listed.json()["data"]]

    revoked = await client.delete(f"/v1/api_keys/{key.id}", headers=admin.headers)
    assert revoked.status_code == 200, revoked.text
    assert_error(
        await client.get("/v1/me", headers=key.headers), 401, "authentication_error", "invalid_api_key"
    )
    audit = await client.get("/v1/audit_log", headers=admin.headers, params={"action": "api_key.revoke"})
    (entry,) = audit.json()["data"]
    assert (entry["object_id"], entry["actor_user_id"]) == (key.id, admin.id)
    assert (entry["before"], entry["after"]) == ({"revoked": False}, {"revoked": True})


async def test_a_demoted_admins_server_keys_stop_working(app: Any, client: httpx.AsyncClient) -> None:
    """Server keys act on any customer, so only a current admin's server keys are honoured."""
    admin = await make_customer(app, roles=["user", "admin"])
    former = await make_customer(app, roles=["user", "admin"])
    server_key = await make_api_key(app, former, scopes=["orders:write", "customers:write"], server=True)
    own_key = await make_api_key(app, former, scopes=["balance:read"])
    assert (await client.get("/v1/me", headers=server_key.headers)).status_code == 200

    demoted = await client.patch(f"/v1/users/{former.id}", headers=admin.headers, json={"roles": ["user"]})
    assert demoted.status_code == 200, demoted.text

    for headers in (server_key.headers, {"X-Api-Key": server_key.secret}):
        refused = await client.get("/v1/me", headers=headers)
        assert_error(refused, 401, "authentication_error", "invalid_api_key")
    assert (await client.get("/v1/me", headers=own_key.headers)).status_code == 200
