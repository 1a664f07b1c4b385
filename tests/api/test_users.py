"""Admin user management: ``GET /v1/users``, ``GET/PATCH /v1/users/{id}``, and the audit trail it leaves."""

from __future__ import annotations

from typing import Any

import httpx

from prepaid.auth import service as auth_service
from tests.factories import make_api_key, make_customer, make_user
from tests.helpers import assert_error, audit_log, browser_signed_in


async def customers(app: Any, count: int, *, roles: list[str] | None = None) -> list[str]:
    """Users without a password (no argon2 hash to compute), for listing tests."""
    ids = []
    for number in range(count):
        async with app.state.db.transaction() as session:
            user = await auth_service.create_user(
                session,
                email=f"customer{number}-{'-'.join(roles or ['user'])}@example.com",
                password=None,
                name=f"Customer {number}",
                roles=roles,
            )
            ids.append(user.id)
    return ids


# ---------------------------------------------------------------- who may


async def test_user_routes_are_for_admins_only(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    for method, path in (("GET", "/v1/users"), ("GET", f"/v1/users/{user.id}")):
        assert_error(await client.request(method, path), 401, "authentication_error", "unauthenticated")
        as_user = await client.request(method, path, headers=user.headers)
        assert_error(as_user, 403, "permission_error", "admin_required")
    promote = await client.patch(f"/v1/users/{user.id}", headers=user.headers, json={"roles": ["admin"]})
    assert_error(promote, 403, "permission_error", "admin_required")

    me = (await client.get("/v1/me", headers=user.headers)).json()
    assert me["roles"] == ["user"]


async def test_an_admins_key_acts_as_admin_only_with_the_admin_scope(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    usage_key = await make_api_key(app, admin, scopes=["usage:write"], server=True)
    admin_key = await make_api_key(app, admin, scopes=["admin"], server=True)

    assert_error(
        await client.get("/v1/users", headers=usage_key.headers), 403, "permission_error", "admin_required"
    )
    listed = await client.get("/v1/users", headers=admin_key.headers)
    assert listed.status_code == 200, listed.text
    assert [row["id"] for row in listed.json()["data"]] == [admin.id]

    (customer,) = await customers(app, 1)
    renamed = await client.patch(f"/v1/users/{customer}", headers=admin_key.headers, json={"name": "Renamed"})
    assert renamed.status_code == 200, renamed.text
    (entry,) = await audit_log(client, admin.headers, object_id=customer)
    assert (entry["actor_user_id"], entry["actor_api_key_id"]) == (admin.id, admin_key.id)


# ---------------------------------------------------------------- reading


async def test_list_users_pages_newest_first_with_cursors(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    everyone = sorted([admin.id, *await customers(app, 4)], reverse=True)

    seen: list[str] = []
    cursor: dict[str, str] = {}
    while True:
        page = await client.get("/v1/users", headers=admin.headers, params={"limit": 2, **cursor})
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["object"] == "list"
        assert all(row["object"] == "user" for row in body["data"])
        seen += [row["id"] for row in body["data"]]
        if not body["has_more"]:
            break
        cursor = {"starting_after": body["data"][-1]["id"]}
    assert seen == everyone

    back = await client.get(
        "/v1/users", headers=admin.headers, params={"limit": 2, "ending_before": everyone[-1]}
    )
    assert [row["id"] for row in back.json()["data"]] == everyone[-3:-1]
    assert back.json()["has_more"] is True

    for params, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit")):
        refused = await client.get("/v1/users", headers=admin.headers, params=params)
        assert_error(refused, 400, "invalid_request_error", "invalid_field", param)


async def test_list_users_filters_by_email_and_role(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    vendors = await customers(app, 2, roles=["user", "vendor"])
    plain = await customers(app, 1)

    by_email = await client.get(
        "/v1/users", headers=admin.headers, params={"email": "CUSTOMER0-user@example.com"}
    )
    assert [row["id"] for row in by_email.json()["data"]] == plain

    by_role = await client.get("/v1/users", headers=admin.headers, params={"role": "vendor"})
    assert sorted(row["id"] for row in by_role.json()["data"]) == sorted(vendors)
    admins = await client.get("/v1/users", headers=admin.headers, params={"role": "admin"})
    assert [row["id"] for row in admins.json()["data"]] == [admin.id]

    unknown_role = await client.get("/v1/users", headers=admin.headers, params={"role": "superuser"})
    assert_error(unknown_role, 400, "invalid_request_error", "invalid_field", "role")


async def test_admin_reads_one_user_and_unknown_ids_are_404(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    (customer,) = await customers(app, 1)
    one = await client.get(f"/v1/users/{customer}", headers=admin.headers)
    assert one.status_code == 200, one.text
    assert (one.json()["id"], one.json()["name"]) == (customer, "Customer 0")

    missing = await client.get("/v1/users/usr_00000000000000000000000000", headers=admin.headers)
    assert_error(missing, 404, "not_found", "resource_missing", "id")
    patch_missing = await client.patch(
        "/v1/users/usr_00000000000000000000000000", headers=admin.headers, json={"active": False}
    )
    assert_error(patch_missing, 404, "not_found", "resource_missing", "id")


# ---------------------------------------------------------------- writing


async def test_admin_changes_roles_and_the_audit_log_keeps_before_and_after(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app, name="Vera")
    changed = await client.patch(
        f"/v1/users/{user.id}", headers=admin.headers, json={"roles": ["vendor", "user"], "name": "Vera V."}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["roles"] == ["user", "vendor"]
    assert (await client.get("/v1/me", headers=user.headers)).json()["roles"] == ["user", "vendor"]

    (entry,) = await audit_log(client, admin.headers, object_id=user.id)
    assert entry["object"] == "audit_log_entry"
    assert entry["request_id"] == changed.headers["X-Request-Id"]
    assert entry["actor_api_key_id"] is None
    assert (entry["action"], entry["object_type"], entry["actor_user_id"]) == (
        "user.update",
        "user",
        admin.id,
    )
    assert entry["before"]["roles"] == ["user"]
    assert entry["after"]["roles"] == ["user", "vendor"]
    assert (entry["before"]["name"], entry["after"]["name"]) == ("Vera", "Vera V.")

    invalid = await client.patch(f"/v1/users/{user.id}", headers=admin.headers, json={"roles": ["owner"]})
    assert_error(invalid, 400, "invalid_request_error", "invalid_field", "roles.0")
    empty = await client.patch(f"/v1/users/{user.id}", headers=admin.headers, json={"roles": []})
    assert_error(empty, 400, "invalid_request_error", "invalid_field", "roles")
    assert len(await audit_log(client, admin.headers, object_id=user.id)) == 1


async def test_deactivating_a_user_stops_every_credential_at_once(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_user(app)
    key = await make_api_key(app, user, scopes=["balance:read"])
    async with browser_signed_in(app, user, redirected_to="/account") as (browser, csrf):
        cookie_call = {"X-CSRF-Token": csrf}
        assert (await browser.get("/v1/me", headers=cookie_call)).status_code == 200
        assert_error(await browser.get("/v1/me"), 403, "permission_error", "csrf_failed", "X-CSRF-Token")
        assert (await client.get("/v1/me", headers=user.headers)).status_code == 200
        assert (await client.get("/v1/me", headers=key.headers)).status_code == 200

        deactivated = await client.patch(
            f"/v1/users/{user.id}", headers=admin.headers, json={"active": False}
        )
        assert deactivated.status_code == 200, deactivated.text
        assert deactivated.json()["active"] is False

        assert_error(
            await client.get("/v1/me", headers=user.headers), 401, "authentication_error", "account_inactive"
        )
        assert_error(
            await client.get("/v1/me", headers=key.headers), 401, "authentication_error", "account_inactive"
        )
        assert_error(
            await client.get("/v1/me", headers={"X-Api-Key": key.secret}),
            401,
            "authentication_error",
            "account_inactive",
        )
        assert_error(
            await client.post("/v1/auth/refresh", json={"refresh_token": user.refresh_token}),
            401,
            "authentication_error",
            "invalid_refresh_token",
        )
        assert (await browser.get("/v1/me", headers=cookie_call)).status_code == 401
        account = await browser.get("/account")
        assert (account.status_code, account.headers["location"]) == (303, "/login?next=/account")
        signed_in = await client.post("/v1/auth/login", json={"email": user.email, "password": user.password})
        assert_error(signed_in, 401, "authentication_error", "account_inactive")

    (entry,) = await audit_log(client, admin.headers, action="user.update", object_id=user.id)
    assert (entry["before"]["active"], entry["after"]["active"]) == (True, False)
    assert entry["actor_user_id"] == admin.id


async def test_a_reactivated_user_signs_in_again(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_user(app)
    await client.patch(f"/v1/users/{user.id}", headers=admin.headers, json={"active": False})
    reactivated = await client.patch(f"/v1/users/{user.id}", headers=admin.headers, json={"active": True})
    assert reactivated.json()["active"] is True

    signed_in = await client.post("/v1/auth/login", json={"email": user.email, "password": user.password})
    assert signed_in.status_code == 200, signed_in.text
    entries = await audit_log(client, admin.headers, object_id=user.id)
    assert [(entry["before"]["active"], entry["after"]["active"]) for entry in entries] == [
        (False, True),
        (True, False),
    ]


async def test_admins_cannot_demote_or_deactivate_themselves(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    demote = await client.patch(f"/v1/users/{admin.id}", headers=admin.headers, json={"roles": ["user"]})
    assert_error(demote, 400, "invalid_request_error", "self_demotion", "roles")
    deactivate = await client.patch(f"/v1/users/{admin.id}", headers=admin.headers, json={"active": False})
    assert_error(deactivate, 400, "invalid_request_error", "self_deactivation", "active")

    me = await client.get("/v1/me", headers=admin.headers)
    assert me.status_code == 200
    assert (me.json()["roles"], me.json()["active"]) == (["user", "admin"], True)
    assert await audit_log(client, admin.headers, object_id=admin.id) == []


async def test_one_admin_may_demote_another(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    other = await make_customer(app, roles=["user", "admin"])
    demoted = await client.patch(f"/v1/users/{other.id}", headers=admin.headers, json={"roles": ["user"]})
    assert demoted.status_code == 200, demoted.text
    assert_error(
        await client.get("/v1/users", headers=other.headers), 403, "permission_error", "admin_required"
    )
