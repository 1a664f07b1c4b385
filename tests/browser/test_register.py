"""The account pages in a real browser: register with field errors, sign out, sign in."""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import register, sign_in, unique_email


def test_register_shows_errors_next_to_fields_then_signs_the_new_user_in(page: Any) -> None:
    page.goto("/register")
    page.get_by_label("Email").fill("not-an-email")
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Create account").click()
    assert page.locator('[data-error-for="email"]').inner_text().strip() != ""
    assert page.locator('[data-error-for="password"]').inner_text().strip() != ""
    assert page.get_by_label("Email").get_attribute("aria-invalid") == "true"

    email = unique_email("reg")
    register(page, email=email, name="Asha <script>window.pwned=1</script>")
    assert page.evaluate("window.pwned") is None
    assert "Asha <script>" in page.locator("header.top .who").inner_text()

    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(r"/login"))
    sign_in(page, email=email, password="correct horse battery")
    assert page.url.endswith("/account")


def test_register_refuses_a_taken_email_and_a_post_without_the_csrf_token(page: Any, shop: Any) -> None:
    email = unique_email("taken")
    register(page, email=email)
    page.context.clear_cookies()
    page.goto("/register")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Create account").click()
    shown = " ".join(page.locator('[data-error-for="email"], [data-error-for="form"]').all_inner_texts())
    assert "already" in shown.lower()

    answer = page.request.post(
        "/register", form={"email": unique_email("nocsrf"), "password": "correct horse battery"}
    )
    assert answer.status == 403
