"""Cursor pagination on every list: ``limit`` 1-100 (default 20), ``starting_after``, ``ending_before``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.db import Database
from tests.factories import TestUser as Caller
from tests.factories import make_customer


async def add_users(db: Database, n: int) -> list[str]:
    """Users made through the service, without passwords (hashing is slow and not under test here)."""
    ids = []
    async with db.transaction() as session:
        for i in range(n):
            user = await auth_service.create_user(session, email=f"page-{i}@example.com", password=None)
            ids.append(user.id)
    return ids


async def add_audit_entries(db: Database, n: int, *, actor: str) -> list[str]:
    ids = []
    async with db.transaction() as session:
        for i in range(n):
            entry = await audit_service.record(
                session,
                actor=audit_service.Actor(user_id=actor),
                action="test.page",
                object_type="thing",
                object_id=f"thing-{i}",
                before=None,
                after={"i": i},
            )
            ids.append(entry.id)
    return ids


async def get_page(client: httpx.AsyncClient, admin: Caller, path: str, **params: Any) -> dict[str, Any]:
    response = await client.get(path, params=params, headers=admin.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["object"] == "list"
    assert set(body) == {"object", "data", "has_more"}
    return body


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


async def setup_rows(app: Any, path: str, n: int) -> tuple[Caller, list[str]]:
    """``n`` rows (made in this order) plus the admin's own; returns the admin and all ids, newest first."""
    admin = await make_customer(app, roles=["user", "admin"])
    db: Database = app.state.db
    if path == "/v1/users":
        created = [admin.id, *await add_users(db, n)]
    else:
        created = await add_audit_entries(db, n, actor=admin.id)
    return admin, list(reversed(created))


@pytest.mark.parametrize("path", ["/v1/users", "/v1/audit_log"])
async def test_pages_walk_forward_and_back_newest_first(
    app: Any, client: httpx.AsyncClient, path: str
) -> None:
    admin, newest_first = await setup_rows(app, path, 44)
    assert len(newest_first) >= 44

    first = await get_page(client, admin, path)
    assert len(first["data"]) == 20  # the default limit
    assert first["has_more"] is True
    assert ids(first) == newest_first[:20]

    walked: list[str] = []
    pages = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 15}
        if cursor:
            params["starting_after"] = cursor
        page = await get_page(client, admin, path, **params)
        pages.append(page)
        walked += ids(page)
        if not page["has_more"]:
            break
        cursor = ids(page)[-1]
    assert walked == newest_first  # every row once, newest first
    assert [len(p["data"]) for p in pages] == [15, 15, len(newest_first) - 30]
    assert all(p["has_more"] for p in pages[:-1])

    # and back: ending_before the first row of a page gives the page before it
    back = await get_page(client, admin, path, limit=15, ending_before=ids(pages[2])[0])
    assert ids(back) == ids(pages[1])
    assert back["has_more"] is True
    back = await get_page(client, admin, path, limit=15, ending_before=ids(pages[1])[0])
    assert ids(back) == ids(pages[0])
    assert back["has_more"] is False
    newest = await get_page(client, admin, path, ending_before=newest_first[0])
    assert newest == {"object": "list", "data": [], "has_more": False}
    oldest = await get_page(client, admin, path, starting_after=newest_first[-1])
    assert oldest == {"object": "list", "data": [], "has_more": False}


@pytest.mark.parametrize("path", ["/v1/users", "/v1/audit_log"])
async def test_limit_bounds(app: Any, client: httpx.AsyncClient, path: str) -> None:
    admin, newest_first = await setup_rows(app, path, 4)
    for bad in ("0", "101", "-1", "ten", "1.5"):
        response = await client.get(path, params={"limit": bad}, headers=admin.headers)
        assert response.status_code == 400, (bad, response.text)
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "limit"
    one = await get_page(client, admin, path, limit=1)
    assert ids(one) == newest_first[:1]
    assert one["has_more"] is True
    hundred = await get_page(client, admin, path, limit=100)
    assert ids(hundred) == newest_first
    assert hundred["has_more"] is False
    exact = await get_page(client, admin, path, limit=len(newest_first))
    assert exact["has_more"] is False


async def test_both_cursors_at_once_are_refused(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    response = await client.get(
        "/v1/users", params={"starting_after": admin.id, "ending_before": admin.id}, headers=admin.headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cursor"
    too_long = await client.get("/v1/users", params={"starting_after": "x" * 65}, headers=admin.headers)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "starting_after"


async def test_filters_and_pagination_combine(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    db: Database = app.state.db
    await add_users(db, 5)
    vendors = []
    async with db.transaction() as session:
        for i in range(5):
            user = await auth_service.create_user(
                session, email=f"vendor-{i}@example.com", password=None, roles=["user", "vendor"]
            )
            vendors.append(user.id)
    first = await get_page(client, admin, "/v1/users", role="vendor", limit=3)
    assert ids(first) == vendors[::-1][:3]
    assert first["has_more"] is True
    rest = await get_page(client, admin, "/v1/users", role="vendor", limit=3, starting_after=ids(first)[-1])
    assert ids(rest) == vendors[::-1][3:]
    assert rest["has_more"] is False
