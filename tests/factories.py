"""Test data made through the services, the way the server itself makes it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from prepaid.auth import service as auth_service
from prepaid.db import Database


@dataclass
class TestUser:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str
    roles: list[str] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class TestKey:
    id: str
    secret: str
    scopes: list[str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


async def make_user(
    app: Any,
    *,
    email: str | None = None,
    password: str | None = None,
    roles: list[str] | None = None,
    name: str = "Test User",
    verified: bool = True,
) -> TestUser:
    db: Database = app.state.db
    email = email or f"user-{secrets.token_hex(4)}@example.com"
    password = password or "pw-" + secrets.token_urlsafe(12)
    async with db.transaction() as session:
        user = await auth_service.create_user(
            session,
            email=email,
            password=password,
            name=name,
            roles=roles or ["user"],
            email_verified=verified,
        )
        pair = await auth_service.issue_tokens(session, user=user, settings=app.state.settings)
    return TestUser(user.id, email, password, pair.access_token, pair.refresh_token, list(user.roles))


async def make_admin(app: Any, **kwargs: Any) -> TestUser:
    return await make_user(app, roles=["user", "admin"], name="Test Admin", **kwargs)


async def make_api_key(app: Any, owner: TestUser, *, scopes: list[str], server: bool = False) -> TestKey:
    db: Database = app.state.db
    async with db.transaction() as session:
        user = await auth_service.get_user(session, owner.id)
        key, secret = await auth_service.create_api_key(
            session, actor=auth_service.Principal(user=user), name="test key", scopes=scopes, server=server
        )
    return TestKey(key.id, secret, list(key.scopes))


async def make_customer(
    app: Any,
    *,
    email: str | None = None,
    name: str = "Test User",
    roles: list[str] | None = None,
    verified: bool = True,
) -> TestUser:
    """A signed-in user without a password (no argon2 hash to compute), for tests that never use one.

    Argon2 costs a quarter of a second per hash; routes that check a password get a user from ``make_user``.
    """
    db: Database = app.state.db
    email = email or f"customer-{secrets.token_hex(4)}@example.com"
    async with db.transaction() as session:
        user = await auth_service.create_user(
            session, email=email, password=None, name=name, roles=roles or ["user"], email_verified=verified
        )
        pair = await auth_service.issue_tokens(session, user=user, settings=app.state.settings)
    return TestUser(user.id, email, "", pair.access_token, pair.refresh_token, list(user.roles))
