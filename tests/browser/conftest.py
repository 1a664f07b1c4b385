"""Pages tested the way people use them: Playwright driving Debian's Chromium (``/usr/bin/chromium``, headless,
never a downloaded browser) against a real ``prepaid serve`` process with the demo catalog.

Each test gets a fresh browser context (no cookies) and leaves a screenshot of its last page in
``$PREPAID_TEST_OUTPUT/browser/<test>.png``. Without Chromium or the playwright package the tests are skipped
(they fail under ``PREPAID_REQUIRE_ALL=1``, as in CI).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from prepaid.db import open_database
from prepaid.demo import ensure_admin, seed_catalog
from tests.conftest import OUTPUT_DIR, run_blocking, skip_or_fail
from tests.e2e.conftest import ServerFactory, ServerProcess

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ADMIN_EMAIL = "admin@shop.example"
SCREENSHOTS = OUTPUT_DIR / "browser"
PAYS, DECLINED = "4111 1111 1111 1111", "4000 0000 0000 0002"
T = TypeVar("T")


@dataclass(frozen=True)
class Shop:
    """A running server with the demo catalog and an admin whose password the tests know."""

    server: ServerProcess
    admin_email: str
    admin_password: str

    @property
    def base_url(self) -> str:
        return self.server.base_url


def _seed(database_url: str, admin_password: str) -> None:
    async def run() -> None:
        db = open_database(database_url)
        try:
            async with db.transaction() as session:
                await seed_catalog(session, credit_scale=0)
                await ensure_admin(session, email=ADMIN_EMAIL, password=admin_password)
        finally:
            await db.dispose()

    run_blocking(lambda: asyncio.run(run()))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """``prepaid serve`` on a migrated SQLite file holding the demo catalog, shared by a module's tests (each
    test registers users of its own)."""
    factory = ServerFactory(tmp_path_factory.mktemp("shop"))
    database_url = factory.sqlite_url()
    admin_password = secrets.token_urlsafe(16)
    try:
        factory.migrate(factory.env(database_url, 0))
        _seed(database_url, admin_password)
        server = factory.serve(database_url=database_url, migrate=False)
        yield Shop(server=server, admin_email=ADMIN_EMAIL, admin_password=admin_password)
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for one module's tests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("the browser tests need the playwright package (pip install -e '.[test]')")
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        skip_or_fail(
            "the browser tests need Debian's Chromium at /usr/bin/chromium (apt-get install chromium)"
        )
    executable = str(CHROMIUM) if CHROMIUM.exists() else str(shutil.which("chromium"))
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, shop: Shop, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh browser context on the shop (no cookies), its default timeout 15 s; a screenshot of the last
    page is saved whatever the outcome."""
    context = browser.new_context(base_url=shop.base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    try:
        yield tab
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        finally:
            context.close()


@pytest.fixture
def admin_page(browser: Any, shop: Shop, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A second browser context, signed in as the shop's admin; its last page is saved as a screenshot too."""
    context = browser.new_context(base_url=shop.base_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    tab = context.new_page()
    try:
        sign_in(tab, email=shop.admin_email, password=shop.admin_password)
        yield tab
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        try:
            tab.screenshot(path=str(SCREENSHOTS / f"{name}-admin.png"), full_page=True)
        finally:
            context.close()


def unique_email(label: str) -> str:
    return f"{label}-{secrets.token_hex(4)}@example.com"


def register(page: Any, *, email: str, password: str = "correct horse battery", name: str = "") -> None:
    """Create an account through /register (which signs the new user in)."""
    page.goto("/register")
    page.get_by_label("Name").fill(name or email.split("@")[0])
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Create account").click()
    page.wait_for_url(re.compile(r"/account"))


def sign_in(page: Any, *, email: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/account"))


def csrf_of(page: Any) -> str:
    """The signed-in session's CSRF token, from the page's ``<meta name="csrf-token">``."""
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert token
    return str(token)


def api(page: Any, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """A /v1 call with the page's session cookie and its CSRF token, as static/app.js makes it; must succeed."""
    answer = page.request.fetch(path, method=method, data=body, headers={"X-CSRF-Token": csrf_of(page)})
    assert answer.ok, f"{method} {path}: {answer.status} {answer.text()}"
    return answer.json()


def pay_by_card(page: Any, number: str) -> None:
    """On the sandbox's hosted checkout, pay by card (``PAYS`` pays, ``DECLINED`` is declined); the gateway
    sends the browser back."""
    page.wait_for_url(re.compile(r"/sandbox/checkout/"))
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiry (MM/YY)").fill("12/39")
    page.get_by_label("CVC").fill("123")
    page.get_by_label("Name on card").fill("Asha Rao")
    page.get_by_role("button", name=re.compile(r"by card")).click()
    page.wait_for_url(re.compile(r"/orders/"))  # the gateway sends the browser back to the return page


def wait_for(check: Callable[[], T | None], what: str, seconds: float = 30) -> T:
    """Poll ``check`` until it returns something truthy (the sandbox's webhooks come from the server's jobs)."""
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)
