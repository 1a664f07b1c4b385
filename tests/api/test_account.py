"""The signed-in person's own account: ``GET/PATCH /v1/me`` and ``POST /v1/me/delete``."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import text, update

from prepaid.auth import service as auth_service
from prepaid.auth.models import User
from tests import factories
from tests.factories import make_api_key, make_user

NEW_PASSWORD = "a brand new passphrase"


def assert_error(
    response: httpx.Response, status: int, type_: str, code: str, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert (error["type"], error["code"], error["param"]) == (type_, code, param), error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"email": email, "password": password})


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": token})


async def make_customer(
    app: Any, *, email: str | None = None, name: str = "Test User", roles: list[str] | None = None
) -> factories.TestUser:
    """A signed-in user without a password (no argon2 hash to compute), for tests that never use one."""
    email = email or f"customer-{secrets.token_hex(4)}@example.com"
    async with app.state.db.transaction() as session:
        user = await auth_service.create_user(
            session, email=email, password=None, name=name, roles=roles or ["user"], email_verified=True
        )
        pair = await auth_service.issue_tokens(session, user=user, settings=app.state.settings)
    return factories.TestUser(user.id, email, "", pair.access_token, pair.refresh_token, list(user.roles))


@asynccontextmanager
async def browser_signed_in(
    app: Any, user: factories.TestUser
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A browser signed in through the login form: its cookie jar, and the CSRF token of its session."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        form = await browser.get("/login")
        form_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert form_csrf, form.text
        signed_in = await browser.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": form_csrf.group(1)}
        )
        assert signed_in.status_code == 303, signed_in.text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', (await browser.get("/account")).text)
        assert csrf
        yield browser, csrf.group(1)


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
