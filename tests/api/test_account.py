"""The signed-in person's own account: ``GET/PATCH /v1/me`` and ``POST /v1/me/delete``."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import text, update

from prepaid.auth.models import User
from tests.factories import make_api_key, make_customer, make_user
from tests.helpers import assert_error, browser_signed_in, login, refresh

NEW_PASSWORD = "a brand new passphrase"


async def test_me_needs_credentials(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/v1/me")
    assert_error(anonymous, 401, "authentication_error", "unauthenticated")
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"


async def test_me_answers_the_signed_in_user(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app, name="Ada Lovelace")
    me = await client.get("/v1/me", headers=user.headers)
    assert me.status_code == 200, me.text
    body = me.json()
    assert body["object"] == "user"
    assert (body["id"], body["email"], body["name"]) == (user.id, user.email, "Ada Lovelace")
    assert body["roles"] == ["user"]
    assert body["active"] is True
    assert body["email_verified"] is True
    assert not {"password", "password_hash"} & set(body)


async def test_patch_me_changes_name_and_phone(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    patched = await client.patch(
        "/v1/me", headers=user.headers, json={"name": "Ada King", "phone": "+91 98765 43210"}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["phone"]) == ("Ada King", "+91 98765 43210")

    name_only = await client.patch("/v1/me", headers=user.headers, json={"name": "Countess"})
    assert name_only.status_code == 200, name_only.text

    me = (await client.get("/v1/me", headers=user.headers)).json()
    assert (me["name"], me["phone"]) == ("Countess", "+91 98765 43210")


async def test_patch_me_with_a_null_phone_removes_it(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app, name="Keeps Name")
    await client.patch("/v1/me", headers=user.headers, json={"phone": "+1 555 0100"})
    cleared = await client.patch("/v1/me", headers=user.headers, json={"phone": None})
    assert cleared.status_code == 200, cleared.text
    me = (await client.get("/v1/me", headers=user.headers)).json()
    assert (me["phone"], me["name"]) == (None, "Keeps Name")


async def test_patch_me_refuses_bad_fields_and_changes_nothing(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app, name="Unchanged")
    bad_phone = await client.patch("/v1/me", headers=user.headers, json={"name": "X", "phone": "call me"})
    assert_error(bad_phone, 400, "invalid_request_error", "invalid_field", "phone")
    # Roles, email and activity are not the person's to set.
    for field, value in (("roles", ["user", "admin"]), ("email", "new@example.com"), ("active", True)):
        refused = await client.patch("/v1/me", headers=user.headers, json={field: value})
        assert_error(refused, 400, "invalid_request_error", "unknown_field", field)

    me = (await client.get("/v1/me", headers=user.headers)).json()
    assert (me["name"], me["phone"], me["email"], me["roles"]) == ("Unchanged", None, user.email, ["user"])


async def test_password_change_needs_the_current_password(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    missing = await client.patch("/v1/me", headers=user.headers, json={"new_password": NEW_PASSWORD})
    assert_error(missing, 400, "invalid_request_error", "missing_field", "current_password")
    wrong = await client.patch(
        "/v1/me",
        headers=user.headers,
        json={"current_password": "not my password", "new_password": NEW_PASSWORD},
    )
    assert_error(wrong, 400, "invalid_request_error", "invalid_password", "current_password")
    weak = await client.patch(
        "/v1/me", headers=user.headers, json={"current_password": user.password, "new_password": "short"}
    )
    assert_error(weak, 400, "invalid_request_error", "invalid_field", "new_password")

    assert (await login(client, user.email, user.password)).status_code == 200
    assert (await refresh(client, user.refresh_token)).status_code == 200


async def test_password_change_signs_out_other_refresh_tokens(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    other_device = (await login(client, user.email, user.password)).json()["refresh_token"]

    changed = await client.patch(
        "/v1/me", headers=user.headers, json={"current_password": user.password, "new_password": NEW_PASSWORD}
    )
    assert changed.status_code == 200, changed.text

    for token in (user.refresh_token, other_device):
        assert_error(await refresh(client, token), 401, "authentication_error", "invalid_refresh_token")
    assert_error(
        await login(client, user.email, user.password), 401, "authentication_error", "invalid_credentials"
    )
    assert (await login(client, user.email, NEW_PASSWORD)).status_code == 200


async def test_password_change_from_a_browser_keeps_that_browser_signed_in(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    async with (
        browser_signed_in(app, user) as (other_browser, other_csrf),
        browser_signed_in(app, user) as (browser, csrf),
    ):
        changed = await browser.patch(
            "/v1/me",
            headers={"X-CSRF-Token": csrf},
            json={"current_password": user.password, "new_password": NEW_PASSWORD},
        )
        assert changed.status_code == 200, changed.text

        assert (await browser.get("/v1/me", headers={"X-CSRF-Token": csrf})).status_code == 200
        signed_out = await other_browser.get("/v1/me", headers={"X-CSRF-Token": other_csrf})
        assert_error(signed_out, 401, "authentication_error", "session_expired")
    assert_error(
        await refresh(client, user.refresh_token), 401, "authentication_error", "invalid_refresh_token"
    )


async def test_deleting_the_account_anonymises_the_person_and_keeps_the_row(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app, name="Ada Lovelace")
    key = await make_api_key(app, user, scopes=["balance:read"])
    other_device = (await login(client, user.email, user.password)).json()["refresh_token"]
    await client.patch("/v1/me", headers=user.headers, json={"phone": "+44 20 7946 0000"})
    async with app.state.db.transaction() as session:
        await session.execute(update(User).where(User.id == user.id).values(external_id="wa:447946000000"))
    assert (await client.get("/v1/me", headers=key.headers)).status_code == 200

    deleted = await client.post("/v1/me/delete", headers=user.headers, json={"password": user.password})
    assert deleted.status_code == 200, deleted.text

    async with app.state.db.transaction(write=False) as session:
        row = (
            await session.execute(
                text(
                    "SELECT email, name, phone, external_id, password_hash, active, deleted_at "
                    "FROM auth_user WHERE id = :id"
                ),
                {"id": user.id},
            )
        ).one()
    assert row.email is None
    assert row.phone is None
    assert row.external_id is None
    assert row.password_hash is None
    assert "Ada" not in row.name
    assert not row.active
    assert row.deleted_at is not None

    assert_error(
        await login(client, user.email, user.password), 401, "authentication_error", "invalid_credentials"
    )
    assert (await client.get("/v1/me", headers=user.headers)).status_code == 401
    assert_error(
        await client.get("/v1/me", headers=key.headers), 401, "authentication_error", "invalid_api_key"
    )
    for token in (user.refresh_token, other_device):
        assert_error(await refresh(client, token), 401, "authentication_error", "invalid_refresh_token")


async def test_deleting_the_account_erases_the_person_from_the_audit_log_and_the_outbox(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app, name="Grace Hopper", email="grace@example.com")
    admin = await make_user(app, roles=["user", "admin"])
    changed = await client.patch(
        f"/v1/users/{user.id}", headers=admin.headers, json={"name": "Grace B. Hopper"}
    )
    assert changed.status_code == 200
    await client.post("/v1/auth/password_reset", json={"email": user.email})  # a message waiting to be sent

    deleted = await client.post("/v1/me/delete", headers=user.headers, json={"password": user.password})
    assert deleted.status_code == 200, deleted.text

    async with app.state.db.transaction(write=False) as session:
        audit_rows = (
            await session.execute(
                text("SELECT action, before, after FROM audit_log_entry WHERE object_id = :id"),
                {"id": user.id},
            )
        ).all()
        outbox_rows = (
            await session.execute(text("SELECT recipient, payload, status FROM notify_outbox"))
        ).all()
    assert [row.action for row in audit_rows] == ["user.update"], "the record of the admin's change stays"
    assert "Grace" not in str(audit_rows) and "grace@" not in str(audit_rows)
    assert outbox_rows and all("grace" not in str(row) for row in outbox_rows)
    assert {row.status for row in outbox_rows} == {"cancelled"}, "nothing is sent to an erased address"
    await app.state.runner.run_once()
    assert app.state.mailer.outbox == []


async def test_a_deleted_accounts_email_can_sign_up_again_as_a_new_person(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    await client.post("/v1/me/delete", headers=user.headers, json={"password": user.password})

    again = await client.post("/v1/auth/register", json={"email": user.email, "password": NEW_PASSWORD})
    assert again.status_code == 201, again.text
    assert again.json()["id"] != user.id


async def test_deleting_the_account_needs_the_password(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    for body in ({"password": "not my password"}, {}):
        refused = await client.post("/v1/me/delete", headers=user.headers, json=body)
        assert_error(refused, 400, "invalid_request_error", "invalid_password", "password")

    me = await client.get("/v1/me", headers=user.headers)
    assert me.status_code == 200
    assert me.json()["email"] == user.email


async def test_api_keys_cannot_change_or_delete_the_account(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app, name="Keeps Name")
    key = await make_api_key(app, user, scopes=["usage:write", "balance:read"])
    for headers in (key.headers, {"X-Api-Key": key.secret}):
        patched = await client.patch("/v1/me", headers=headers, json={"name": "Hijacked"})
        assert_error(patched, 403, "permission_error", "session_required")
        deleted = await client.post("/v1/me/delete", headers=headers, json={"password": user.password})
        assert_error(deleted, 403, "permission_error", "session_required")

    me = await client.get("/v1/me", headers=user.headers)
    assert me.status_code == 200
    assert me.json()["name"] == "Keeps Name"
