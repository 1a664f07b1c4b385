"""Every bad request is answered in the error object, never with a 500, and changes nothing."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from prepaid.auth.models import User
from prepaid.db import Database
from prepaid.notify.models import OutboxMessage
from tests import helpers
from tests.factories import make_customer
from tests.helpers import count

MB = 1024 * 1024
VALID = {"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"}

# Every error answer here is also checked to be JSON by its content type and to show no traceback.
assert_error = functools.partial(helpers.assert_error, well_formed=True)


async def assert_nothing_created(db: Database) -> None:
    assert await count(db, User) == 0
    assert await count(db, OutboxMessage) == 0


# ---------------------------------------------------------------- validation


INVALID_REGISTRATIONS: list[tuple[dict[str, Any], str, str]] = [
    ({**VALID, "email": "not-an-email"}, "invalid_field", "email"),
    ({**VALID, "password": "short"}, "invalid_field", "password"),
    ({"email": "ada@example.com", "name": "Ada"}, "missing_field", "password"),
    ({**VALID, "name": 12}, "invalid_field", "name"),
    ({**VALID, "is_admin": True}, "unknown_field", "is_admin"),
    ({**VALID, "roles": ["admin"]}, "unknown_field", "roles"),
]


async def test_invalid_registration_names_the_field_and_creates_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    for body, code, param in INVALID_REGISTRATIONS:
        response = await client.post("/v1/auth/register", json=body)
        assert_error(response, 400, "invalid_request_error", code, param)
        assert response.json()["error"]["message"].startswith(f"{param}:")
    await assert_nothing_created(db)


async def test_nested_validation_error_names_the_list_item(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    response = await client.post(
        "/v1/api_keys", json={"name": "k", "scopes": ["usage:write", "fly:to-the-moon"]}, headers=user.headers
    )
    assert_error(response, 400, "invalid_request_error", "invalid_field", "scopes.1")
    listed = await client.get("/v1/api_keys", headers=user.headers)
    assert listed.json()["data"] == []


async def test_nested_validation_error_on_admin_update(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    user = await make_customer(app)
    response = await client.patch(
        f"/v1/users/{user.id}", json={"roles": ["user", "emperor"]}, headers=admin.headers
    )
    assert_error(response, 400, "invalid_request_error", "invalid_field", "roles.1")
    response = await client.patch(
        f"/v1/users/{user.id}", json={"active": False, "note": "x"}, headers=admin.headers
    )
    assert_error(response, 400, "invalid_request_error", "unknown_field", "note")
    fetched = await client.get(f"/v1/users/{user.id}", headers=admin.headers)
    assert fetched.json()["roles"] == ["user"]
    assert fetched.json()["active"] is True


async def test_query_parameter_errors_name_the_parameter(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    response = await client.get("/v1/users?limit=lots", headers=admin.headers)
    assert_error(response, 400, "invalid_request_error", "invalid_field", "limit")
    response = await client.get("/v1/users?role=emperor", headers=admin.headers)
    assert_error(response, 400, "invalid_request_error", "invalid_field", "role")


async def test_json_that_is_not_an_object_is_refused(client: httpx.AsyncClient, db: Database) -> None:
    for body in (b"[]", b"null", b'"ada"', b"42"):
        response = await client.post(
            "/v1/auth/register", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    await assert_nothing_created(db)


# ---------------------------------------------------------------- malformed bodies


MALFORMED = [
    b'{"email": "ada@example.com", "password": ',
    b"{'email': 'single quotes'}",
    b"{,}",
    b"\xff\xfe{}",
]


async def test_malformed_json_is_a_clear_400(client: httpx.AsyncClient, db: Database) -> None:
    for body in MALFORMED:
        response = await client.post(
            "/v1/auth/register", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["code"] in ("malformed_json", "invalid_request")
        assert "Traceback" not in response.text
    await assert_nothing_created(db)


async def test_truncated_json_is_malformed_json(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/auth/login", content=b'{"email": "a@b.co"', headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "invalid_request_error", "malformed_json")


async def test_a_body_that_is_not_json_is_415(client: httpx.AsyncClient, db: Database) -> None:
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "",
    ):
        response = await client.post(
            "/v1/auth/register", content=json.dumps(VALID).encode(), headers={"Content-Type": content_type}
        )
        assert_error(response, 415, "invalid_request_error", "unsupported_media_type", "Content-Type")
    await assert_nothing_created(db)


async def test_json_content_type_with_charset_and_any_case_is_accepted(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post(
        "/v1/auth/register",
        content=json.dumps(VALID).encode(),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 201, response.text
    assert await count(db, User) == 1


async def test_body_over_one_megabyte_with_content_length_is_413(
    client: httpx.AsyncClient, db: Database
) -> None:
    body = json.dumps({**VALID, "name": "x" * (MB + 10)}).encode()
    response = await client.post(
        "/v1/auth/register", content=body, headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "invalid_request_error", "payload_too_large")
    await assert_nothing_created(db)


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    yield b'{"email": "ada@example.com", "password": "correct horse battery", "name": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"}'


@pytest.mark.parametrize("idempotency_key", [None, "chunky"])
async def test_chunked_body_over_one_megabyte_without_content_length_is_413(
    client: httpx.AsyncClient, db: Database, idempotency_key: str | None
) -> None:
    headers = {"Content-Type": "application/json"}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    request = client.build_request("POST", "/v1/auth/register", content=_chunks(MB + 1), headers=headers)
    assert "content-length" not in request.headers
    assert request.headers["transfer-encoding"] == "chunked"
    response = await client.send(request)
    assert_error(response, 413, "invalid_request_error", "payload_too_large")
    await assert_nothing_created(db)


async def test_chunked_body_under_the_limit_is_served(client: httpx.AsyncClient, db: Database) -> None:
    request = client.build_request(
        "POST",
        "/v1/auth/register",
        content=_chunks(100, size=50),
        headers={"Content-Type": "application/json"},
    )
    assert "content-length" not in request.headers
    response = await client.send(request)
    assert response.status_code == 201, response.text
    assert await count(db, User) == 1


async def test_content_length_that_is_not_a_number_is_400(app: Any) -> None:
    """httpx always sends an honest Content-Length, so this one speaks ASGI directly."""
    body = json.dumps(VALID).encode()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/auth/register",
        "raw_path": b"/v1/auth/register",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-type", b"application/json"),
            (b"content-length", b"12ab"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert messages[0]["status"] == 400
    error = json.loads(b"".join(m.get("body", b"") for m in messages[1:]))["error"]
    assert error["code"] == "bad_length"
    assert error["type"] == "invalid_request_error"


# ---------------------------------------------------------------- routes and methods


async def test_unknown_route_is_404_in_the_error_format(client: httpx.AsyncClient) -> None:
    for path in ("/v1/nothing-here", "/v1/users/usr_x/teleport", "/nope"):
        response = await client.get(path)
        assert_error(response, 404, "not_found", "route_not_found")


async def test_unknown_route_with_a_json_body_is_404(client: httpx.AsyncClient, db: Database) -> None:
    response = await client.post("/v1/teleport", json=VALID)
    assert_error(response, 404, "not_found", "route_not_found")
    await assert_nothing_created(db)


async def test_wrong_method_is_405_in_the_error_format(client: httpx.AsyncClient, db: Database) -> None:
    for method, path in [
        ("DELETE", "/v1/me"),
        ("PUT", "/v1/me"),
        ("GET", "/v1/auth/register"),
        ("PATCH", "/v1/auth/login"),
    ]:
        kwargs: dict[str, Any] = {"json": VALID} if method in ("PUT", "PATCH") else {}
        response = await client.request(method, path, **kwargs)
        assert_error(response, 405, "invalid_request_error", "method_not_allowed")
        assert "allow" in response.headers
    await assert_nothing_created(db)


async def test_unknown_object_is_404_not_found(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_customer(app, roles=["user", "admin"])
    response = await client.get("/v1/users/usr_01AAAAAAAAAAAAAAAAAAAAAAAA", headers=admin.headers)
    assert_error(response, 404, "not_found", "resource_missing", "id")


async def test_an_unexpected_exception_is_a_500_api_error_without_a_trace(
    app: Any, client: httpx.AsyncClient
) -> None:
    async def explode() -> None:
        raise RuntimeError("secret internals: db password hunter2")

    app.add_api_route("/v1/test-only/explode", explode, methods=["GET"])
    response = await client.get("/v1/test-only/explode")
    assert_error(response, 500, "api_error", "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert response.headers["x-request-id"]


async def test_authentication_errors_use_the_error_format(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/me")
    assert_error(response, 401, "authentication_error", "unauthenticated")
    assert response.headers["www-authenticate"] == "Bearer"
    response = await client.get("/v1/me", headers={"Authorization": "Bearer not-a-jwt"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_permission_errors_use_the_error_format(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    response = await client.get("/v1/users", headers=user.headers)
    assert_error(response, 403, "permission_error", "admin_required")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/wallets/%00", None),
        ("GET", "/v1/orders?starting_after=%00", None),
        ("GET", "/v1/transactions/%00", None),
        ("PATCH", "/v1/me", {"name": "Ada\u0000Lovelace"}),
    ],
)
async def test_a_nul_character_is_never_a_500_and_postgresql_refuses_it_changing_nothing(
    app: Any, client: httpx.AsyncClient, engine_name: str, method: str, path: str, body: dict[str, Any] | None
) -> None:
    admin = await make_customer(app, roles=["user", "admin"], name="Ada")
    response = await client.request(method, path, json=body, headers=admin.headers)
    assert response.status_code < 500, response.text
    if engine_name == "postgresql":
        assert_error(response, 400, "invalid_request_error", "invalid_characters")
        assert (await client.get("/v1/me", headers=admin.headers)).json()["name"] == "Ada"
