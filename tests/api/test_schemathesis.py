"""schemathesis over ``/openapi.json``: every documented operation, fed generated requests, answers no 5xx,
only status codes its operation documents, and bodies that match the documented schemas.

Runs against the ASGI app on SQLite (the engines share every code path this exercises; the authorisation matrix
and the domain tests cover PostgreSQL). Each operation is called twice over: anonymously, and as a signed-in
admin, so protected routes are exercised past their 401. Bounded by hypothesis settings (a few examples per
operation, no deadline, derandomized) to finish well under three minutes on a two-core machine.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from prepaid.app import create_app
from prepaid.auth import service as auth_service
from prepaid.db import open_database
from prepaid.settings import Settings
from tests.conftest import run_blocking
from tests.factories import make_admin, make_user


@dataclass
class Target:
    app: Any
    admin_headers: dict[str, str]


async def _make_admin(url: str, app_settings: Settings) -> str:
    db = open_database(url)
    try:
        async with db.transaction() as session:
            admin = await auth_service.create_user(
                session,
                email="fuzz-admin@example.com",
                password="fuzz-admin-" + secrets.token_urlsafe(12),
                name="Fuzz Admin",
                roles=["user", "admin"],
                email_verified=True,
            )
            pair = await auth_service.issue_tokens(session, user=admin, settings=app_settings)
    finally:
        await db.dispose()
    return pair.access_token


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path) -> Iterator[Target]:
    path = tmp_path_factory.mktemp("schemathesis") / "prepaid.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"
    app_settings = Settings(
        _env_file=None,
        database_url=url,
        secret_key=secrets.token_urlsafe(48),
        base_url="http://testserver",
        run_jobs=False,
        email_backend="memory",
        rate_limits_enabled=False,
    )
    token = run_blocking(lambda: asyncio.run(_make_admin(url, app_settings)))
    app = create_app(app_settings)
    yield Target(app=app, admin_headers={"Authorization": f"Bearer {token}"})
    # schemathesis started the app's lifespan on its own event loop thread; end it there.
    from schemathesis.python import asgi

    asgi.shutdown_lifespans()


def _openapi_document() -> dict[str, Any]:
    """The document ``/openapi.json`` serves (``test_served_document_is_the_one_tested`` holds them equal).

    Loaded at import, when schemathesis builds one test per operation. Its pytest lazy loader
    (``schemathesis.pytest.from_fixture``) would fetch it from the fixture's app instead, but it breaks on
    pytest 9 (it sets ``request.node._nodeid``, which pytest 9 no longer has), so the document is built from an
    app that is never started, and every call goes to the started one (``app=target.app``).
    """
    app_settings = Settings(_env_file=None, database_url="sqlite+aiosqlite:///unused.db", secret_key="x" * 48)
    document: dict[str, Any] = create_app(app_settings).openapi()
    return document


DOCUMENT = _openapi_document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_served_document_is_the_one_tested(target: Target) -> None:
    from schemathesis.python import asgi

    with asgi.get_client(target.app) as client:
        served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == DOCUMENT


# What the server's own validation answers (``responses.py``); any other 400 code is a rule of the domain.
VALIDATION_CODES = frozenset({"invalid_field", "missing_field", "unknown_field", "malformed_json"})
# Refusals of schema-valid data that are deliberate, by (operation or "*", the error's param), with the reason.
DELIBERATE_REFUSALS = {
    ("*", "email"): "format: email is loose; pydantic's EmailStr (email-validator) also refuses special-use "
    "domains such as .test, which the generator produces",
    ("PATCH /v1/me", "current_password"): "new_password needs current_password, a rule across two fields",
}


def schema_valid_requests_pass_validation(ctx: Any, response: Any, case: Any) -> bool | None:
    """Replaces schemathesis' ``positive_data_acceptance``, which wants every schema-valid request accepted.

    Here a well-formed request may still be refused by a rule the schema cannot express (a spent or unknown
    token, a wrong current password, both pagination cursors at once): 400 with a domain error code. What
    must never happen is our own validation refusing what the document says is valid, except where
    ``DELIBERATE_REFUSALS`` says why.
    """
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 400:
        return None
    error = response.json().get("error", {})
    param = error.get("param")
    if error.get("code") not in VALIDATION_CODES:
        return None
    if ("*", param) in DELIBERATE_REFUSALS or (case.operation.label, param) in DELIBERATE_REFUSALS:
        return None
    raise AssertionError(
        f"Validation refused a request the OpenAPI document says is valid: {response.text[:500]}"
    )


CHECKS: dict[str, Any] = {
    "additional_checks": [schema_valid_requests_pass_validation],
    "excluded_checks": [positive_data_acceptance],
}
EXAMPLES = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@schema.parametrize()
@EXAMPLES
def test_api_answers_as_documented(case: Any, target: Target) -> None:
    case.call_and_validate(app=target.app, **CHECKS)


@schema.parametrize()
@EXAMPLES
def test_api_answers_an_admin_as_documented(case: Any, target: Target) -> None:
    case.call_and_validate(app=target.app, headers=target.admin_headers, **CHECKS)


# ---------------------------------------------------------------- what the fuzzing found, pinned on both engines


async def test_audit_log_times_are_iso_8601_with_a_time_zone(app: Any, client: httpx.AsyncClient) -> None:
    """A time without a zone was a 500 (the UTC column refuses naive values); a bare number was read as Unix
    seconds although the document says ``date-time``. Both are now 400, and real times still filter."""
    admin = await make_admin(app)
    user = await make_user(app)
    renamed = await client.patch(f"/v1/users/{user.id}", json={"name": "Renamed"}, headers=admin.headers)
    assert renamed.status_code == 200
    for bad in ("2020-01-01T00:00:00", "0.5", "1700000000"):
        response = await client.get("/v1/audit_log", params={"created_after": bad}, headers=admin.headers)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"]["param"] == "created_after"
    past = await client.get(
        "/v1/audit_log", params={"created_after": "2000-01-01T00:00:00+05:30"}, headers=admin.headers
    )
    future = await client.get(
        "/v1/audit_log", params={"created_after": "2999-01-01T00:00:00Z"}, headers=admin.headers
    )
    assert [entry["object_id"] for entry in past.json()["data"]] == [user.id]
    assert future.json()["data"] == []


async def test_method_not_allowed_names_every_method_of_the_path(app: Any, client: httpx.AsyncClient) -> None:
    """``GET /v1/me`` and ``PATCH /v1/me`` are two routes; the 405 used to allow only the first."""
    user = await make_user(app)
    for method, path, allowed in (
        ("OPTIONS", "/v1/me", "GET, PATCH"),
        ("DELETE", f"/v1/users/{user.id}", "GET, PATCH"),
        ("PUT", "/v1/api_keys", "GET, POST"),
    ):
        response = await client.request(method, path, headers=user.headers)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allowed
        assert response.json()["error"]["code"] == "method_not_allowed"


async def test_booleans_are_not_guessed_from_other_types(app: Any, client: httpx.AsyncClient) -> None:
    """The document says ``boolean``; ``0`` or ``"false"`` used to be read as false and accepted."""
    admin = await make_admin(app)
    user = await make_user(app)
    key = await client.post(
        "/v1/api_keys", json={"scopes": ["balance:read"], "server": 0}, headers=admin.headers
    )
    assert key.status_code == 400
    assert key.json()["error"]["param"] == "server"
    deactivate = await client.patch(f"/v1/users/{user.id}", json={"active": "false"}, headers=admin.headers)
    assert deactivate.status_code == 400
    assert deactivate.json()["error"]["param"] == "active"
    assert (await client.get("/v1/me", headers=user.headers)).status_code == 200
