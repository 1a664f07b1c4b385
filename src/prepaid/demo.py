"""Demo data for ``prepaid demo``: an admin and a demo user (later domains add plans and prices)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth import service as auth_service

DEMO_ADMIN_EMAIL = "admin@example.com"
DEMO_USER_EMAIL = "demo@example.com"


@dataclass(frozen=True)
class CreatedAccount:
    email: str
    password: str
    role: str


def generate_password() -> str:
    return secrets.token_urlsafe(12)


async def ensure_admin(session: AsyncSession, *, email: str, password: str | None) -> tuple[str, str | None]:
    """Create the admin, or promote an existing account. Returns the user id and the password to print
    (None when an existing account keeps its password)."""
    user = await auth_service.get_user_by_email(session, email)
    if user is None:
        password = password or generate_password()
        user = await auth_service.create_user(
            session,
            email=email,
            password=password,
            name="Admin",
            roles=["user", "admin"],
            email_verified=True,
        )
        return user.id, password
    if "admin" not in user.roles:
        user.roles = [*user.roles, "admin"]
    user.active = True
    if password is not None:
        user.password_hash = auth_service.hash_password(password)
    return user.id, password


async def seed(session: AsyncSession) -> list[CreatedAccount]:
    """Idempotent: only accounts that do not exist yet are created, and only their passwords are returned."""
    created: list[CreatedAccount] = []
    if await auth_service.get_user_by_email(session, DEMO_ADMIN_EMAIL) is None:
        _user_id, password = await ensure_admin(session, email=DEMO_ADMIN_EMAIL, password=None)
        created.append(CreatedAccount(DEMO_ADMIN_EMAIL, password or "", "admin"))
    if await auth_service.get_user_by_email(session, DEMO_USER_EMAIL) is None:
        password = generate_password()
        await auth_service.create_user(
            session, email=DEMO_USER_EMAIL, password=password, name="Demo User", email_verified=True
        )
        created.append(CreatedAccount(DEMO_USER_EMAIL, password, "user"))
    return created
