"""``prepaid serve``, ``demo`` and ``create-admin`` as real processes, spoken to over HTTP."""

from __future__ import annotations

import re
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess

from tests.e2e.conftest import (
    ServerFactory,
    ServerProcess,
    api_login,
    base_env,
    form_fields,
    free_port,
    poll,
    register,
    run_prepaid,
    start_prepaid,
    unique_email,
)

REFUSAL_TIMEOUT = 20.0
LOCK_WAIT = 8.0  # below the server's 10 s SQLite busy timeout


def test_served_process_registers_signs_in_and_answers_me(server: ServerProcess) -> None:
    email = unique_email("ada")
    with server.client() as http:
        created = register(http, email=email, password="correct horse battery", name="Ada")
        login = api_login(http, email=email, password="correct horse battery")
        assert login.status_code == 200, login.text
        me = http.get("/v1/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
        anonymous = http.get("/v1/me")
        ready = http.get("/readyz")
    assert me.status_code == 200, me.text
    assert me.json()["id"] == created["id"]
    assert me.json()["email"] == email
    assert me.json()["name"] == "Ada"
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"
    assert ready.json() == {"status": "ok", "database": "ok"}


def test_serve_refuses_several_workers_on_sqlite(servers: ServerFactory, tmp_path: Path) -> None:
    env = servers.env(servers.sqlite_url(), free_port())
    servers.migrate(env)
    result = run_prepaid("serve", "--workers", "2", env=env, cwd=tmp_path, timeout=REFUSAL_TIMEOUT)
    assert result.returncode == 2, result.output
    assert "--workers must be 1 with a SQLite database" in result.output
    assert "PostgreSQL" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_an_unmigrated_database(servers: ServerFactory, tmp_path: Path) -> None:
    env = servers.env(servers.sqlite_url("empty.db"), free_port())
    result = run_prepaid("serve", env=env, cwd=tmp_path, timeout=REFUSAL_TIMEOUT)
    assert result.returncode == 2, result.output
    assert "run `prepaid migrate` first" in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_a_credit_scale_other_than_the_databases(
    servers: ServerFactory, tmp_path: Path
) -> None:
    created = servers.env(servers.sqlite_url(), free_port(), PREPAID_CREDIT_SCALE="6")
    servers.migrate(created)  # the database is created at scale 6 and keeps it
    for command in (["serve"], ["migrate"]):
        result = run_prepaid(
            *command, env={**created, "PREPAID_CREDIT_SCALE": "2"}, cwd=tmp_path, timeout=REFUSAL_TIMEOUT
        )
        assert result.returncode == 2, result.output
        assert "PREPAID_CREDIT_SCALE=6" in result.output
        assert "Traceback" not in result.output
    assert run_prepaid("check", env=created, cwd=tmp_path).returncode == 0


@pytest.mark.parametrize(
    "secret",
    [None, "dev-only-insecure-secret-key-change-me", "changeme", "short-random-Zq81xV"],
    ids=["missing", "development-default", "well-known", "too-short"],
)
def test_production_start_refuses_a_weak_secret(
    secret: str | None, servers: ServerFactory, tmp_path: Path
) -> None:
    env = servers.env(
        servers.sqlite_url(),
        free_port(),
        PREPAID_ENV="production",
        PREPAID_GATEWAYS="stripe",
        PREPAID_SMTP_URL="smtp://127.0.0.1:25",
    )
    if secret is None:
        del env["PREPAID_SECRET_KEY"]
    else:
        env["PREPAID_SECRET_KEY"] = secret
    result = run_prepaid("serve", env=env, cwd=tmp_path, timeout=REFUSAL_TIMEOUT)
    assert result.returncode == 2, result.output
    assert "Configuration error: PREPAID_SECRET_KEY must be set to a random value of at least 32" in (
        result.output
    )
    assert "Value error" not in result.output
    assert "Traceback" not in result.output
    if secret:
        assert secret not in result.output  # a refused secret is not echoed to the terminal


def test_production_start_refuses_the_sandbox_gateway(servers: ServerFactory, tmp_path: Path) -> None:
    env = servers.env(servers.sqlite_url(), free_port(), PREPAID_ENV="production")
    env["PREPAID_SMTP_URL"] = "smtp://127.0.0.1:25"
    result = run_prepaid("serve", env=env, cwd=tmp_path, timeout=REFUSAL_TIMEOUT)
    assert result.returncode == 2, result.output
    assert "the sandbox gateway cannot be enabled in production (PREPAID_GATEWAYS)" in result.output


def test_serve_refuses_an_enabled_gateway_without_its_keys(servers: ServerFactory, tmp_path: Path) -> None:
    env = servers.env(servers.sqlite_url(), free_port(), PREPAID_GATEWAYS="sandbox,razorpay")
    env["PREPAID_RAZORPAY_KEY_ID"] = "rzp_test_abc"
    servers.migrate(env)
    result = run_prepaid("serve", env=env, cwd=tmp_path, timeout=REFUSAL_TIMEOUT)
    assert result.returncode == 2, result.output
    flat = " ".join(result.output.split())
    assert "Configuration error: The razorpay gateway is enabled" in flat
    assert "PREPAID_RAZORPAY_KEY_SECRET, PREPAID_RAZORPAY_WEBHOOK_SECRET are not set" in flat
    assert "Traceback" not in result.output


def test_production_start_with_a_strong_secret_serves(servers: ServerFactory) -> None:
    """The other side of the refusals above: the same production settings with a strong secret start."""
    server = servers.serve(
        PREPAID_ENV="production",
        PREPAID_GATEWAYS="stripe",
        PREPAID_SMTP_URL="smtp://127.0.0.1:25",
        STRIPE_SECRET_KEY="sk_test_" + "x" * 24,
        STRIPE_PUBLISHABLE_KEY="pk_test_" + "x" * 24,
        STRIPE_WEBHOOK_SECRET="whsec_" + "x" * 24,
    )
    with server.client() as http:
        assert http.get("/readyz").json() == {"status": "ok", "database": "ok"}


DEMO_ACCOUNT = re.compile(r"Demo (admin|user): (\S+@\S+) password \(shown once\): (\S+)")


def _demo_accounts(output: str) -> dict[str, tuple[str, str]]:
    flat = " ".join(output.split())
    return {role: (email, password) for role, email, password in DEMO_ACCOUNT.findall(flat)}


def _start_demo(cwd: Path) -> ServerProcess:
    port = free_port()
    env = base_env()
    del env["PREPAID_SECRET_KEY"]  # the demo runs on the development defaults, like a first try would
    return start_prepaid("demo", "--port", str(port), env=env, cwd=cwd, port=port)


def test_demo_creates_its_database_here_and_prints_the_admin_password_once(tmp_path: Path) -> None:
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    first = _start_demo(cwd)
    try:
        accounts = _demo_accounts(first.log)
        assert (cwd / "prepaid.db").is_file()
        assert set(accounts) == {"admin", "user"}, first.log
        admin_email, admin_password = accounts["admin"]
        assert f"http://127.0.0.1:{first.port}/" in first.log
        with first.client() as http:
            login = api_login(http, email=admin_email, password=admin_password)
            assert login.status_code == 200, login.text
            me = http.get("/v1/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"})
            assert "admin" in me.json()["roles"]
            # A customer named by the app's own id is created on first use with the demo's 3 free credits.
            used = http.post(
                "/v1/usage",
                headers={"Authorization": f"Bearer {login.json()['access_token']}"},
                json={"id": "demo-first-image", "customer": "+15550001", "meter": "image", "quantity": 1},
            )
            assert used.status_code in (200, 201), used.text
            assert (used.json()["cost"], used.json()["balance_after"]) == (2, 1)
            user_email, user_password = accounts["user"]
            assert api_login(http, email=user_email, password=user_password).status_code == 200
            # Development prints emails; their links point at this demo, on the port it was given.
            assert http.post("/v1/auth/password_reset", json={"email": user_email}).status_code == 202
        link = poll(
            lambda: re.search(r"\S+/reset-password\?token=\S+", first.log),
            timeout=15,
            what="the reset email on the demo's console",
        ).group(0)
        assert link.startswith(f"http://127.0.0.1:{first.port}/reset-password?token=")
        with first.client() as browser:  # the link works as printed, copied from the console
            fields = form_fields(browser.get(link).text, "/reset-password")
            reset = browser.post("/reset-password", data={**fields, "password": "demo user's own pw"})
            assert reset.status_code == 200, reset.text
            assert api_login(browser, email=user_email, password="demo user's own pw").status_code == 200
    finally:
        first.stop()

    second = _start_demo(cwd)
    try:
        assert "shown once" not in second.log
        assert admin_password not in second.log
        assert "Demo accounts already exist" in " ".join(second.log.split())
        with second.client() as http:
            # The same file is served: the first run's admin and password still sign in.
            again = api_login(http, email=admin_email, password=admin_password)
            assert again.status_code == 200, again.text
    finally:
        second.stop()
    assert sorted(path.name for path in cwd.glob("*.db")) == ["prepaid.db"]


def test_create_admin_prints_a_generated_password_that_signs_in_as_admin(server: ServerProcess) -> None:
    email = unique_email("boss")
    result = run_prepaid("create-admin", "--email", email, env=server.env, cwd=server.cwd)
    assert result.returncode == 0, result.output
    match = re.search(r"Password \(shown once\): (\S+)", result.output)
    assert match, result.output
    with server.client() as http:
        login = api_login(http, email=email, password=match.group(1))
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        me = http.get("/v1/me", headers=headers)
        users = http.get("/v1/users", headers=headers)
    assert me.json()["email"] == email
    assert "admin" in me.json()["roles"]
    assert users.status_code == 200, users.text


def test_checking_a_password_does_not_wait_for_the_write_lock(server: ServerProcess) -> None:
    """A sign-in checks the password (argon2, a good fraction of a second) before it takes SQLite's write
    lock: while another process holds that lock, a wrong password is still answered, and a right one signs
    in once the lock is free. Checked under the lock, a burst of sign-ins outlasts the busy timeout (500)."""
    email, password = unique_email("lock"), "lock password 12345"
    with server.client() as http:
        register(http, email=email, password=password)

    def sign_in(attempt: str) -> int:
        with server.client(timeout=30.0) as http:
            return api_login(http, email=email, password=attempt).status_code

    def sign_in_on_the_page(attempt: str) -> int:
        with server.client(timeout=30.0) as browser:
            fields = form_fields(browser.get("/login").text, "/login")
            return browser.post("/login", data={**fields, "email": email, "password": attempt}).status_code

    database = server.env["PREPAID_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///")
    holder = sqlite3.connect(database, isolation_level=None)
    with ThreadPoolExecutor(max_workers=4) as pool:
        try:
            holder.execute("BEGIN IMMEDIATE")
            right = [pool.submit(sign_in, password), pool.submit(sign_in_on_the_page, password)]
            wrong = [
                pool.submit(sign_in, "not the password"),
                pool.submit(sign_in_on_the_page, "wrong again"),
            ]
            assert [future.result(timeout=LOCK_WAIT) for future in wrong] == [401, 401]
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert [future.result(timeout=LOCK_WAIT) for future in right] == [200, 303]


# ---------------------------------------------------------------- several workers on PostgreSQL

REQUESTS_COUNTED = re.compile(r"^prepaid_http_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


def _requests_to(metrics_text: str, route: str) -> float:
    total = 0.0
    for labels, value in REQUESTS_COUNTED.findall(metrics_text):
        if f'route="{route}"' in labels:
            total += float(value)
    return total


def _answers_per_worker(metrics_dir: Path, route: str, scratch: Path) -> dict[str, float]:
    """Requests to ``route`` counted by each worker, read from each worker's own metrics file."""
    counts: dict[str, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = scratch / path.stem
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        answered = sum(
            sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if sample.name == "prepaid_http_requests_total" and sample.labels.get("route") == route
        )
        if answered:
            counts[path.stem.removeprefix("counter_")] = answered
    return counts


def _get_on_a_new_connection(url: str) -> int:
    return httpx.get(url, timeout=10.0).status_code


def test_several_workers_on_postgresql_serve_and_metrics_add_up(
    servers: ServerFactory, empty_postgres_url: str, tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    # `serve --workers 2` makes its own metrics folder; TMPDIR puts it where this test can look.
    server = servers.serve(database_url=empty_postgres_url, workers=2, migrate=False, TMPDIR=str(temp))
    metrics_dirs = list(temp.glob("prepaid-metrics-*"))
    assert len(metrics_dirs) == 1, "serve --workers 2 did not set up a Prometheus multiprocess folder"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    route = "/readyz"
    sent = 0

    with ThreadPoolExecutor(max_workers=16) as pool:

        def both_workers_answered() -> dict[str, float] | None:
            nonlocal sent
            statuses = list(pool.map(_get_on_a_new_connection, [f"{server.base_url}{route}"] * 32))
            sent += len(statuses)
            assert statuses == [200] * len(statuses)
            counts = _answers_per_worker(metrics_dirs[0], route, scratch)
            return counts if len(counts) >= 2 else None

        per_worker = poll(both_workers_answered, timeout=30, what="both workers to answer", interval=0)

    with server.client() as http:
        metrics = http.get("/metrics")
    assert metrics.status_code == 200
    assert len(per_worker) == 2
    assert sum(per_worker.values()) == sent
    assert _requests_to(metrics.text, route) == sent
