"""Assertions and HTTP helpers shared by the API tests."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from sqlalchemy import func, select

from prepaid.db import Database
from tests.factories import TestUser


def assert_error(
    response: httpx.Response,
    status: int,
    type_: str,
    code: str,
    param: str | None = None,
    *,
    well_formed: bool = False,
) -> dict[str, Any]:
    """The answer is the error object with this status, type, code and param, and a message.

    ``well_formed=True`` also checks that the answer is JSON by its content type and shows no traceback.
    """
    assert response.status_code == status, response.text
    if well_formed:
        assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) >= {"type", "code", "message", "param"}
    assert (error["type"], error["code"], error["param"]) == (type_, code, param), error
    assert isinstance(error["message"], str) and error["message"]
    if well_formed:
        assert "Traceback" not in response.text
    return error


async def login(client: httpx.AsyncClient, email: str, password: str, **headers: str) -> httpx.Response:
    return await client.post("/v1/auth/login", json={"email": email, "password": password}, headers=headers)


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": token})


async def audit_log(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """The entries ``GET /v1/audit_log`` answers these headers with these filters."""
    response = await client.get("/v1/audit_log", params=params, headers=headers)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def count(db: Database, model: Any) -> int:
    async with db.transaction(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@asynccontextmanager
async def browser_signed_in(
    app: Any, user: TestUser, *, redirected_to: str | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A browser signed in through the login form: its cookie jar, and the CSRF token of its session.

    With ``redirected_to``, the sign-in must also redirect there.
    """
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as browser:
        form = await browser.get("/login")
        form_csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert form_csrf, form.text
        signed_in = await browser.post(
            "/login", data={"email": user.email, "password": user.password, "csrf_token": form_csrf.group(1)}
        )
        assert signed_in.status_code == 303, signed_in.text
        if redirected_to is not None:
            assert signed_in.headers["location"] == redirected_to
        account = await browser.get("/account")
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', account.text)
        assert csrf, account.text
        yield browser, csrf.group(1)
