"""The admin's catalog pages in a real browser: a coupon created and allotted on /admin/coupons reaches the user
it is allotted to on /buy; a form with bad values shows each error next to its field and creates nothing."""

from __future__ import annotations

import re
import secrets
from typing import Any

from tests.browser.conftest import api, register, sign_in, unique_email


def my_coupons(page: Any) -> list[str]:
    """``GET /v1/me/coupons`` as the page's signed-in user (cookie and the page's CSRF token)."""
    return [coupon["code"] for coupon in api(page, "GET", "/v1/me/coupons")["data"]]


def test_an_admin_creates_a_coupon_allots_it_and_the_user_sees_it_offered_on_buy(
    page: Any, admin_page: Any
) -> None:
    email = unique_email("allotted")
    register(page, email=email, name="Meera")
    assert my_coupons(page) == []

    code = f"VIP{secrets.token_hex(3).upper()}"
    admin_page.goto("/admin/coupons")
    form = admin_page.locator('form[action="/admin/coupons"]')
    form.get_by_label("Code", exact=True).fill(code)
    form.get_by_label("Kind").select_option("percent_off")
    form.get_by_label("Who can use it").select_option("assigned")
    form.get_by_label("Description").fill("For our best customers")
    form.get_by_label("Percent off").fill("15")
    form.get_by_label("Uses per user").fill("1")
    form.get_by_role("button", name="Create coupon").click()
    admin_page.wait_for_url(re.compile(rf"/admin/coupons/{code}\?done=created$"))
    assert "Only the users it is allotted to" in admin_page.locator("main").inner_text()

    admin_page.get_by_label("Allot to users (emails, one per line)").fill(email)
    admin_page.get_by_role("button", name="Allot coupon").click()
    admin_page.wait_for_url(re.compile(r"done=allotted"))
    assert email in admin_page.get_by_role("table").inner_text()

    assert my_coupons(page) == [code]
    page.goto("/buy")
    offered = page.get_by_label("Your coupons")
    assert code in offered.inner_text()

    admin_page.goto("/admin/coupons")
    row = admin_page.get_by_role("row").filter(has_text=code)
    assert "Allotted users" in row.inner_text()


def test_a_coupon_form_with_bad_values_shows_errors_next_to_fields_and_creates_nothing(
    page: Any, shop: Any
) -> None:
    sign_in(page, email=shop.admin_email, password=shop.admin_password)
    code = f"BAD{secrets.token_hex(3).upper()}"
    page.goto("/admin/coupons")
    form = page.locator('form[action="/admin/coupons"]')
    form.get_by_label("Code", exact=True).fill(code)
    form.get_by_label("Kind").select_option("percent_off")
    form.get_by_label("Percent off").fill("-10")
    form.get_by_role("button", name="Create coupon").click()
    percent = page.locator('[data-error-for="percent"]')
    assert "above 0" in percent.inner_text()
    assert page.get_by_label("Percent off").get_attribute("aria-invalid") == "true"
    assert page.get_by_label("Code", exact=True).input_value() == code  # what was typed is kept

    page.get_by_label("Percent off").fill("10")
    page.get_by_label("Starts (UTC)").fill("2030-02-01T00:00")
    page.get_by_label("Ends (UTC)").fill("2030-01-01T00:00")
    page.get_by_role("button", name="Create coupon").click()
    assert "after" in page.locator('[data-error-for="ends_at"]').inner_text()
    assert page.locator('[data-error-for="percent"]').inner_text().strip() == ""

    assert code not in page.get_by_role("table").inner_text()
    missing = page.request.get(f"/admin/coupons/{code}")
    assert missing.status == 404
    page.goto("/admin/offers")
    offer = page.locator('form[action="/admin/offers"]')
    offer.get_by_label("Name").fill("Negative")
    offer.get_by_label("Percent off").fill("-5")
    offer.get_by_role("button", name="Create offer").click()
    assert page.locator('[data-error-for="percent"]').inner_text().strip() != ""
    assert "Negative" not in page.get_by_role("table").inner_text()
