"""Register, login, refresh rotation, logout, password reset, email verification and the access JWT."""

from __future__ import annotations

import asyncio
import re
import time
from email.message import EmailMessage
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select

from prepaid.auth.models import User
from prepaid.settings import Settings
from tests.factories import make_customer, make_user
from tests.helpers import assert_error, login, refresh

NEW_PASSWORD = "a brand new passphrase"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def emails_sent(app: Any) -> list[EmailMessage]:
    """Deliver the outbox the way the background runner does, and answer what the mailer received."""
    await app.state.runner.run_once()
    outbox: list[EmailMessage] = app.state.mailer.outbox
    return outbox


def link_in(message: EmailMessage, path: str) -> str:
    """The one-time token of the ``http://testserver{path}?token=...`` link in the email's text part."""
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    found = re.search(rf"http://testserver{re.escape(path)}\?token=([A-Za-z0-9_-]+)", text)
    assert found, text
    return found.group(1)


# ---------------------------------------------------------------- register


async def test_register_normalises_the_email_and_answers_the_new_user(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/v1/auth/register",
        json={"email": "  Grace.Hopper@Example.COM ", "password": "correct horse battery", "name": "Grace"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["object"] == "user"
    assert body["id"].startswith("usr_")
    assert body["email"] == "grace.hopper@example.com"
    assert body["roles"] == ["user"]
    assert body["active"] is True
    assert body["email_verified"] is False
    assert not {"password", "password_hash"} & set(body)

    signed_in = await login(client, "GRACE.HOPPER@example.com", "correct horse battery")
    assert signed_in.status_code == 200, signed_in.text


async def test_register_with_a_taken_email_is_409_whatever_its_case(
    app: Any, client: httpx.AsyncClient
) -> None:
    existing = await make_user(app, email="taken@example.com")
    again = await client.post(
        "/v1/auth/register", json={"email": "Taken@Example.com", "password": "another long password"}
    )
    assert_error(again, 409, "conflict", "email_taken", "email")

    still = await login(client, existing.email, existing.password)
    assert still.status_code == 200, "the first account keeps its password"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"email": "weak@example.com", "password": "short"}, "invalid_field", "password"),
        ({"email": "weak@example.com", "password": "          "}, "invalid_field", "password"),
        ({"email": "not-an-email", "password": "long enough password"}, "invalid_field", "email"),
        ({"email": "weak@example.com"}, "missing_field", "password"),
        (
            {"email": "weak@example.com", "password": "long enough password", "roles": ["admin"]},
            "unknown_field",
            "roles",
        ),
    ],
)
async def test_register_refuses_bad_input_naming_the_field_and_creates_nothing(
    app: Any, client: httpx.AsyncClient, body: dict[str, Any], code: str, param: str
) -> None:
    refused = await client.post("/v1/auth/register", json=body)
    assert_error(refused, 400, "invalid_request_error", code, param)
    async with app.state.db.transaction(write=False) as session:
        assert (await session.scalars(select(User))).all() == []


async def test_two_registrations_racing_for_one_email_make_one_account(
    app: Any, client: httpx.AsyncClient
) -> None:
    body = {"email": "race@example.com", "password": "correct horse battery"}
    answers = await asyncio.gather(*(client.post("/v1/auth/register", json=body) for _ in range(2)))
    assert sorted(answer.status_code for answer in answers) == [201, 409]
    async with app.state.db.transaction(write=False) as session:
        assert len((await session.scalars(select(User))).all()) == 1


async def test_a_password_is_kept_exactly_as_typed_on_every_sign_in_path(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Spaces are part of a password: the API and the login form must agree on it."""
    email, password = "spaces@example.com", "  correct horse battery  "
    created = await client.post("/v1/auth/register", json={"email": email, "password": password})
    assert created.status_code == 201, created.text

    assert (await login(client, email, password)).status_code == 200
    assert_error(
        await login(client, email, password.strip()), 401, "authentication_error", "invalid_credentials"
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        form = await browser.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf, form.text
        signed_in = await browser.post(
            "/login", data={"email": email, "password": password, "csrf_token": csrf.group(1)}
        )
        assert signed_in.status_code == 303, signed_in.text


# ---------------------------------------------------------------- login


async def test_wrong_password_and_unknown_email_answer_the_same_401(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    wrong_password = await login(client, user.email, user.password + "x")
    unknown_email = await login(client, "nobody-here@example.com", user.password)

    first = assert_error(wrong_password, 401, "authentication_error", "invalid_credentials")
    second = assert_error(unknown_email, 401, "authentication_error", "invalid_credentials")
    assert first["message"] == second["message"]


async def test_login_answers_a_bearer_token_pair(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await make_user(app)
    signed_in = await login(client, user.email.upper(), user.password)
    assert signed_in.status_code == 200, signed_in.text
    body = signed_in.json()
    assert body["object"] == "token"
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl
    me = await client.get("/v1/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == user.id
    assert (await refresh(client, body["refresh_token"])).status_code == 200


# ---------------------------------------------------------------- refresh and logout


async def test_refresh_rotates_the_pair_and_spends_the_old_token(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await make_customer(app)
    rotated = await refresh(client, user.refresh_token)
    assert rotated.status_code == 200, rotated.text
    pair = rotated.json()
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == settings.access_token_ttl
    assert pair["refresh_token"] != user.refresh_token
    me = await client.get("/v1/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == user.id

    spent = await refresh(client, user.refresh_token)
    assert_error(spent, 401, "authentication_error", "refresh_token_reused")


async def test_reused_refresh_token_revokes_the_family(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    second = (await refresh(client, user.refresh_token)).json()["refresh_token"]
    newest = (await refresh(client, second)).json()["refresh_token"]
    other_login = (await login(client, user.email, user.password)).json()["refresh_token"]

    reused = await refresh(client, user.refresh_token)
    assert_error(reused, 401, "authentication_error", "refresh_token_reused")

    # The revocation was committed with the 401: the newest token of the family is dead too ...
    assert_error(await refresh(client, newest), 401, "authentication_error", "invalid_refresh_token")
    assert_error(await refresh(client, second), 401, "authentication_error", "invalid_refresh_token")
    # ... while another login of the same person is a family of its own and keeps working.
    assert (await refresh(client, other_login)).status_code == 200


async def test_unknown_refresh_token_is_401(client: httpx.AsyncClient) -> None:
    unknown = await refresh(client, "rt_this-token-was-never-issued")
    assert_error(unknown, 401, "authentication_error", "invalid_refresh_token")


async def test_logout_revokes_the_family(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    current = (await refresh(client, user.refresh_token)).json()["refresh_token"]
    other_login = (await login(client, user.email, user.password)).json()["refresh_token"]

    signed_out = await client.post("/v1/auth/logout", json={"refresh_token": current})
    assert signed_out.status_code == 200, signed_out.text
    assert signed_out.json()["object"] == "accepted"

    assert_error(await refresh(client, current), 401, "authentication_error", "invalid_refresh_token")
    assert (await refresh(client, other_login)).status_code == 200

    unknown = await client.post("/v1/auth/logout", json={"refresh_token": "rt_never-issued"})
    assert unknown.status_code == 200, "logging out an unknown token says nothing about it"


# ---------------------------------------------------------------- password reset


async def test_password_reset_answers_202_for_known_and_unknown_emails_alike(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_customer(app)
    known = await client.post("/v1/auth/password_reset", json={"email": user.email.upper()})
    unknown = await client.post("/v1/auth/password_reset", json={"email": "ghost@example.com"})

    assert known.status_code == unknown.status_code == 202
    assert known.json() == unknown.json()
    sent = await emails_sent(app)
    assert [message["To"] for message in sent] == [user.email]


async def test_password_reset_link_works_once_and_only_once(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    await client.post("/v1/auth/password_reset", json={"email": user.email})
    (message,) = await emails_sent(app)
    token = link_in(message, "/reset-password")

    weak = await client.post("/v1/auth/password_reset/confirm", json={"token": token, "password": "short"})
    assert_error(weak, 400, "invalid_request_error", "invalid_field", "password")

    racing = await asyncio.gather(
        *(
            client.post("/v1/auth/password_reset/confirm", json={"token": token, "password": NEW_PASSWORD})
            for _ in range(2)
        )
    )
    assert sorted(answer.status_code for answer in racing) == [200, 400], [answer.text for answer in racing]
    again = await client.post(
        "/v1/auth/password_reset/confirm", json={"token": token, "password": "yet another password"}
    )
    assert_error(again, 400, "invalid_request_error", "invalid_token", "token")

    assert_error(
        await login(client, user.email, user.password), 401, "authentication_error", "invalid_credentials"
    )
    assert (await login(client, user.email, NEW_PASSWORD)).status_code == 200
    # A reset signs out every earlier login.
    assert_error(
        await refresh(client, user.refresh_token), 401, "authentication_error", "invalid_refresh_token"
    )


async def test_a_new_password_reset_link_replaces_the_earlier_one(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_customer(app)
    await client.post("/v1/auth/password_reset", json={"email": user.email})
    await client.post("/v1/auth/password_reset", json={"email": user.email})
    first, second = await emails_sent(app)

    stale = await client.post(
        "/v1/auth/password_reset/confirm",
        json={"token": link_in(first, "/reset-password"), "password": NEW_PASSWORD},
    )
    assert_error(stale, 400, "invalid_request_error", "invalid_token", "token")
    fresh = await client.post(
        "/v1/auth/password_reset/confirm",
        json={"token": link_in(second, "/reset-password"), "password": NEW_PASSWORD},
    )
    assert fresh.status_code == 200, fresh.text


async def test_password_reset_token_cannot_verify_an_email(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app, verified=False)
    await client.post("/v1/auth/password_reset", json={"email": user.email})
    (message,) = await emails_sent(app)
    wrong_purpose = await client.post(
        "/v1/auth/verify_email", json={"token": link_in(message, "/reset-password")}
    )
    assert_error(wrong_purpose, 400, "invalid_request_error", "invalid_token", "token")


# ---------------------------------------------------------------- email verification


async def test_registration_emails_a_verification_link_that_works_once(
    app: Any, client: httpx.AsyncClient
) -> None:
    created = await client.post(
        "/v1/auth/register", json={"email": "Verify.Me@example.com", "password": "correct horse battery"}
    )
    assert created.status_code == 201, created.text
    (message,) = await emails_sent(app)
    assert message["To"] == "verify.me@example.com"
    token = link_in(message, "/verify-email")

    verified = await client.post("/v1/auth/verify_email", json={"token": token})
    assert verified.status_code == 200, verified.text
    assert verified.json()["id"] == created.json()["id"]
    assert verified.json()["email_verified"] is True

    again = await client.post("/v1/auth/verify_email", json={"token": token})
    assert_error(again, 400, "invalid_request_error", "invalid_token", "token")


async def test_resend_emails_a_verification_link_until_the_email_is_verified(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app, verified=False)
    resent = await client.post("/v1/auth/verify_email/resend", json={"email": user.email})
    assert resent.status_code == 202, resent.text
    (message,) = await emails_sent(app)
    assert message["To"] == user.email

    verified = await client.post("/v1/auth/verify_email", json={"token": link_in(message, "/verify-email")})
    assert verified.status_code == 200, verified.text
    assert (await client.get("/v1/me", headers=user.headers)).json()["email_verified"] is True
    again = await client.post("/v1/auth/verify_email/resend", json={"email": user.email})
    assert again.status_code == 202
    unknown = await client.post("/v1/auth/verify_email/resend", json={"email": "nobody@example.com"})
    assert unknown.status_code == 202
    assert unknown.json() == again.json(), "the answer does not tell whether an account exists"
    assert len(await emails_sent(app)) == 1, "a verified address (or an unknown one) gets no new link"


@pytest.mark.parametrize("settings_overrides", [{"require_email_verification": True}])
async def test_login_waits_for_email_verification_when_required(app: Any, client: httpx.AsyncClient) -> None:
    email, password = "careful@example.com", "correct horse battery"
    created = await client.post("/v1/auth/register", json={"email": email, "password": password})
    assert created.status_code == 201, created.text

    early = await login(client, email, password)
    assert_error(early, 403, "permission_error", "email_not_verified")
    wrong = await login(client, email, password + "!")
    assert_error(wrong, 401, "authentication_error", "invalid_credentials")

    (message,) = await emails_sent(app)
    verified = await client.post("/v1/auth/verify_email", json={"token": link_in(message, "/verify-email")})
    assert verified.status_code == 200, verified.text
    assert (await login(client, email, password)).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"require_email_verification": True}])
async def test_a_password_reset_proves_the_mailbox_and_verifies_the_email(
    app: Any, client: httpx.AsyncClient
) -> None:
    """Without this, someone who lost the verification email could never sign in again."""
    email = "lost-the-link@example.com"
    created = await client.post(
        "/v1/auth/register", json={"email": email, "password": "correct horse battery"}
    )
    assert created.status_code == 201, created.text
    await client.post("/v1/auth/password_reset", json={"email": email})
    _verification, reset = await emails_sent(app)

    confirmed = await client.post(
        "/v1/auth/password_reset/confirm",
        json={"token": link_in(reset, "/reset-password"), "password": NEW_PASSWORD},
    )
    assert confirmed.status_code == 200, confirmed.text
    assert (await login(client, email, NEW_PASSWORD)).status_code == 200


# ---------------------------------------------------------------- the access token


def forge(
    settings: Settings, user_id: str, *, key: str | None = None, algorithm: str = "HS256", **claims: Any
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": user_id,
        "iss": "prepaid",
        "iat": now,
        "exp": now + 300,
        "typ": "access",
        **claims,
    }
    payload = {name: value for name, value in payload.items() if value is not None}
    signing_key = None if algorithm == "none" else (key or settings.secret_key)
    return jwt.encode(payload, signing_key, algorithm=algorithm)


async def test_a_token_forged_with_the_servers_key_is_accepted(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    """The control for the refusals below: the forging itself is right."""
    user_id = (await make_customer(app)).id
    me = await client.get("/v1/me", headers=bearer(forge(settings, user_id)))
    assert me.status_code == 200, me.text
    assert me.json()["id"] == user_id


@pytest.mark.parametrize(
    ("case", "forgery", "code"),
    [
        ("alg none", {"algorithm": "none"}, "invalid_token"),
        ("another key", {"key": "an-attacker-chosen-key-that-is-long-enough-for-hs256"}, "invalid_token"),
        ("HS512 with the right key", {"algorithm": "HS512"}, "invalid_token"),
        ("expired", {"exp": int(time.time()) - 60}, "token_expired"),
        ("no exp", {"exp": None}, "invalid_token"),
        ("another issuer", {"iss": "someone-else"}, "invalid_token"),
        ("no issuer", {"iss": None}, "invalid_token"),
        ("not an access token", {"typ": "refresh"}, "invalid_token"),
    ],
)
async def test_access_token_is_refused(
    app: Any,
    client: httpx.AsyncClient,
    settings: Settings,
    case: str,
    forgery: dict[str, Any],
    code: str,
) -> None:
    user_id = (await make_customer(app)).id
    refused = await client.get("/v1/me", headers=bearer(forge(settings, user_id, **forgery)))
    assert_error(refused, 401, "authentication_error", code)
    assert refused.headers["WWW-Authenticate"] == "Bearer"


async def test_a_refresh_token_is_not_an_access_token(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    refused = await client.get("/v1/me", headers=bearer(user.refresh_token))
    assert_error(refused, 401, "authentication_error", "invalid_token")
