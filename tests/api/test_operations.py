"""Operations: health and readiness, metrics, security headers, CORS, request ids and logs, the API docs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from prepaid.app import create_app
from prepaid.observability import configure_logging
from prepaid.settings import Settings
from tests.factories import make_user

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "strict-origin-when-cross-origin",
}
GENERATED_ID = re.compile(r"^req_[0-9a-f]{24}$")
EXTERNAL_URL = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


def assert_security_headers(response: httpx.Response) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, response.url)
    [csp] = response.headers.get_list("content-security-policy")
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'self'" in csp


async def sample(client: httpx.AsyncClient, name: str, labels: dict[str, str]) -> float:
    response = await client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for metric in family.samples:
            if metric.name == name and all(metric.labels.get(k) == v for k, v in labels.items()):
                return float(metric.value)
    return 0.0


# ---------------------------------------------------------------- health


async def test_healthz_and_readyz_answer_when_all_is_well(client: httpx.AsyncClient) -> None:
    health = await client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok"}


@pytest.fixture
async def unreachable_client(
    engine_name: str, settings: Settings, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose database cannot be reached: a SQLite file in a folder that does not exist, or a
    PostgreSQL port nobody listens on."""
    url = (
        f"sqlite+aiosqlite:///{tmp_path}/missing-folder/prepaid.db"
        if engine_name == "sqlite"
        else "postgresql+asyncpg://postgres@127.0.0.1:1/prepaid"
    )
    application = create_app(settings.model_copy(update={"database_url": url}))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def test_readyz_is_503_when_the_database_is_unreachable(unreachable_client: httpx.AsyncClient) -> None:
    ready = await unreachable_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "database": "unreachable"}
    assert "127.0.0.1" not in ready.text
    health = await unreachable_client.get("/healthz")
    assert health.status_code == 200  # alive, just not ready
    # an API call that needs the database fails cleanly, in the error format
    login = await unreachable_client.post("/v1/auth/login", json={"email": "a@example.com", "password": "x"})
    assert login.status_code == 500
    assert login.json()["error"]["type"] == "api_error"
    assert "Traceback" not in login.text
    assert "127.0.0.1" not in login.text


# ---------------------------------------------------------------- metrics


async def test_metrics_count_requests_by_route_and_status(client: httpx.AsyncClient) -> None:
    ok = {"method": "GET", "route": "/healthz", "status": "200"}
    missing = {"method": "GET", "route": "unmatched", "status": "404"}
    by_template = {"method": "GET", "route": "/v1/users/{user_id}", "status": "401"}
    before = {
        "ok": await sample(client, "prepaid_http_requests_total", ok),
        "missing": await sample(client, "prepaid_http_requests_total", missing),
        "template": await sample(client, "prepaid_http_requests_total", by_template),
        "latency": await sample(
            client, "prepaid_http_request_duration_seconds_count", {"method": "GET", "route": "/healthz"}
        ),
    }
    for _ in range(3):
        await client.get("/healthz")
    await client.get("/no/such/route")
    await client.get("/v1/users/usr_one")
    await client.get("/v1/users/usr_two")

    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert await sample(client, "prepaid_http_requests_total", ok) == before["ok"] + 3
    assert await sample(client, "prepaid_http_requests_total", missing) == before["missing"] + 1
    # routes are labelled by their template, so ids do not explode the label set
    assert await sample(client, "prepaid_http_requests_total", by_template) == before["template"] + 2
    assert "usr_one" not in metrics.text
    latency = await sample(
        client, "prepaid_http_request_duration_seconds_count", {"method": "GET", "route": "/healthz"}
    )
    assert latency == before["latency"] + 3


# ---------------------------------------------------------------- headers


async def test_security_headers_on_every_kind_of_answer(app: Any, client: httpx.AsyncClient) -> None:
    async def explode() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/v1/test-only/explode", explode, methods=["GET"])
    answers = [
        await client.get("/healthz"),
        await client.get("/v1/me"),
        await client.get("/no/such/route"),
        await client.post(
            "/v1/auth/register", content=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "text/plain"}
        ),
        await client.post("/v1/auth/register", content=b"hi", headers={"Content-Type": "text/plain"}),
        await client.get("/v1/test-only/explode"),
        await client.get("/static/app.css"),
        await client.get("/openapi.json"),
    ]
    assert [a.status_code for a in answers] == [200, 401, 404, 413, 415, 500, 200, 200]
    for answer in answers:
        assert_security_headers(answer)
        assert "strict-transport-security" not in answer.headers  # plain http


@pytest.mark.parametrize("settings_overrides", [{"base_url": "https://credits.example.com"}])
async def test_hsts_when_served_over_https(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.headers["strict-transport-security"].startswith("max-age=")
    assert int(response.headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 31536000


async def test_cors_is_off_without_configured_origins(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(
        "/v1/me", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers


@pytest.mark.parametrize(
    "settings_overrides", [{"cors_origins": "https://app.example.com, https://admin.example.com"}]
)
async def test_cors_allows_the_configured_origins_only(app: Any, client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/v1/api_keys",
        headers={
            "Origin": "https://admin.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://admin.example.com"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed_headers = preflight.headers["access-control-allow-headers"].lower()
    for header in ("authorization", "content-type", "idempotency-key"):
        assert header in allowed_headers
    assert "access-control-allow-credentials" not in preflight.headers

    user = await make_user(app)
    actual = await client.get("/v1/me", headers={**user.headers, "Origin": "https://app.example.com"})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == "https://app.example.com"
    exposed = actual.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed

    evil = await client.options(
        "/v1/me", headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in evil.headers
    evil_get = await client.get("/v1/me", headers={**user.headers, "Origin": "https://evil.example.com"})
    assert "access-control-allow-origin" not in evil_get.headers


# ---------------------------------------------------------------- request ids and logs


async def test_request_id_is_echoed_or_generated(client: httpx.AsyncClient) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-Id": "client-chosen-id.42"})
    assert echoed.headers["x-request-id"] == "client-chosen-id.42"
    generated = [(await client.get("/healthz")).headers["x-request-id"] for _ in range(2)]
    assert all(GENERATED_ID.match(value) for value in generated)
    assert generated[0] != generated[1]
    for unsafe in ("short", "has spaces in it", "x" * 65, "quote\"injection'here", "new\\nline-injected"):
        replaced = await client.get("/healthz", headers={"X-Request-Id": unsafe})
        assert GENERATED_ID.match(replaced.headers["x-request-id"]), unsafe
    error = await client.get("/no/such/route", headers={"X-Request-Id": "on-errors-too-1"})
    assert error.headers["x-request-id"] == "on-errors-too-1"


async def test_log_lines_carry_the_request_id_and_never_a_secret(
    app: Any, client: httpx.AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    user = await make_user(app)

    async def explode() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/v1/test-only/explode", explode, methods=["GET"])
    configure_logging(json_logs=True)  # into the captured stderr, one JSON object a line
    try:
        capsys.readouterr()
        login = await client.post(
            "/v1/auth/login",
            json={"email": user.email, "password": user.password},
            headers={"X-Request-Id": "log-test-login-1"},
        )
        assert login.status_code == 200
        tokens = login.json()
        me = await client.get(
            "/v1/me",
            headers={"Authorization": f"Bearer {tokens['access_token']}", "X-Request-Id": "log-test-me-1"},
        )
        assert me.status_code == 200
        boom = await client.get("/v1/test-only/explode", headers={"X-Request-Id": "log-test-boom-1"})
        assert boom.status_code == 500
        captured = capsys.readouterr()
    finally:
        configure_logging(json_logs=False)

    output = captured.out + captured.err
    lines = [json.loads(line) for line in captured.err.splitlines() if line.startswith("{")]
    assert lines, output
    for line in lines:
        assert line.get("request_id", "").startswith("log-test-"), line
    access = {line["request_id"]: line for line in lines if line["event"] == "request"}
    assert access["log-test-login-1"]["route"] == "/v1/auth/login"
    assert access["log-test-login-1"]["status"] == 200
    assert access["log-test-boom-1"]["status"] == 500
    assert any(
        line["event"] == "unhandled_error" and line["request_id"] == "log-test-boom-1" for line in lines
    )
    for secret in (user.password, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in output


# ---------------------------------------------------------------- docs


async def test_docs_and_openapi_are_served_without_any_cdn(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert not EXTERNAL_URL.search(docs.text), EXTERNAL_URL.search(docs.text)
    assert "cdn" not in docs.text.lower()
    # the page's own policy (Swagger UI needs inline styles), once, and still no other origin allowed
    [csp] = docs.headers.get_list("content-security-policy")
    assert "style-src 'self' 'unsafe-inline'" in csp
    assert "script-src 'self';" in csp
    assets = re.findall(r'(?:src|href)="([^"]+)"', docs.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for asset in assets:
        assert asset.startswith("/"), asset
        fetched = await client.get(asset)
        assert fetched.status_code == 200, asset
        assert len(fetched.content) > 0
        if asset.endswith("docs.js"):
            assert not EXTERNAL_URL.search(fetched.text)
            assert "/openapi.json" in fetched.text

    spec = await client.get("/openapi.json")
    assert spec.status_code == 200
    document = spec.json()
    assert document["openapi"].startswith("3.")
    for path in ("/v1/auth/register", "/v1/users", "/v1/audit_log", "/v1/api_keys", "/healthz", "/readyz"):
        assert path in document["paths"], path
    assert "cdn" not in spec.text.lower()
    assert "Error" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
