from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import EmailStr, Field, StrictBool, StringConstraints

from prepaid.schemas import Input, Output

# Passwords are kept exactly as typed (never trimmed), the same way the web forms take them.
Password = Annotated[
    str, StringConstraints(strip_whitespace=False, min_length=10, max_length=256, pattern=r"\S")
]
GivenPassword = Annotated[str, StringConstraints(strip_whitespace=False, max_length=256)]
Name = Annotated[str, Field(max_length=200)]
Role = Literal["user", "vendor", "admin"]
Scope = Literal["usage:write", "balance:read", "customers:write", "orders:write", "admin"]


class RegisterRequest(Input):
    email: EmailStr
    password: Password
    name: Name = ""


class LoginRequest(Input):
    email: EmailStr
    password: Annotated[GivenPassword, Field(min_length=1)]


class RefreshRequest(Input):
    refresh_token: Annotated[str, Field(min_length=1, max_length=200)]


class TokenResponse(Output):
    object: Literal["token"] = "token"
    token_type: Literal["bearer"] = "bearer"
    access_token: str
    refresh_token: str
    expires_in: int


class PasswordResetRequest(Input):
    """Asks for an emailed link (password reset, or a new verification link)."""

    email: EmailStr


class PasswordResetConfirm(Input):
    token: Annotated[str, Field(min_length=1, max_length=200)]
    password: Password


class VerifyEmailRequest(Input):
    token: Annotated[str, Field(min_length=1, max_length=200)]


class AcceptedResponse(Output):
    object: Literal["accepted"] = "accepted"
    message: str


class UserRead(Output):
    object: Literal["user"] = "user"
    id: str
    email: str | None
    name: str
    phone: str | None
    external_id: str | None
    roles: list[str]
    active: bool
    email_verified: bool
    created_at: datetime


class MeRead(UserRead):
    """You, with your purchase totals: money paid per currency (minor units) and the credits your orders
    granted (bought and bonus, in the credit asset's smallest unit)."""

    total_spent: dict[str, int]
    lifetime_credits: int


class MeUpdate(Input):
    name: Name | None = None
    phone: Annotated[str, Field(max_length=32, pattern=r"^\+?[0-9 ()-]{4,32}$")] | None = None
    current_password: GivenPassword | None = None
    new_password: Password | None = None


class DeleteAccountRequest(Input):
    password: GivenPassword | None = None


class UserUpdate(Input):
    name: Name | None = None
    roles: Annotated[list[Role], Field(min_length=1, max_length=3)] | None = None
    active: StrictBool | None = None


class ApiKeyCreate(Input):
    name: Name = ""
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=5)]
    server: StrictBool = False


class ApiKeyRead(Output):
    object: Literal["api_key"] = "api_key"
    id: str
    user_id: str
    name: str
    prefix: str
    scopes: list[str]
    server: bool
    created_at: datetime


class ApiKeyCreated(ApiKeyRead):
    secret: str = Field(description="The full key. Shown once; store it now.")
