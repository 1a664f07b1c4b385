"""Buying credits in a real browser: the live quote on /buy (coupon, volume discount slab, errors next to their
fields), paying on the sandbox's hosted checkout, the result page, and the credits on /account."""

from __future__ import annotations

import re
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import DECLINED, PAYS, api, pay_by_card, register, unique_email

WEBHOOK_WAIT_MS = 30_000  # the sandbox's webhooks are sent by the server's job runner


def _orders(page: Any) -> list[dict[str, Any]]:
    """The signed-in user's orders, asked from a page of the session (it carries the CSRF token)."""
    data: list[dict[str, Any]] = api(page, "GET", "/v1/orders")["data"]
    return data


def _pick(page: Any, *, plan: str, currency: str) -> None:
    page.goto(f"/buy?plan={plan}")
    expect(page.get_by_role("radio", name=re.compile(plan, re.IGNORECASE))).to_be_checked()
    page.get_by_label("Currency").select_option(currency)


def test_a_new_user_pays_standard_with_a_coupon_and_sees_the_credits_on_account(page: Any) -> None:
    register(page, email=unique_email("buyer"))
    _pick(page, plan="standard", currency="INR")
    total = page.locator('[data-line="total"]')
    expect(total).to_contain_text("₹4,500.00")
    expect(page.locator('[data-line="coupon"]')).to_have_count(0)

    page.get_by_label("Coupon code").fill("WELCOME10")
    coupon = page.locator('[data-line="coupon"]')
    expect(coupon).to_contain_text("Coupon WELCOME10")
    expect(coupon).to_contain_text("₹450.00")
    expect(total).to_contain_text("₹4,050.00")
    expect(page.locator('[data-line="credits"]')).to_contain_text("500 credits")
    pay = page.get_by_role("button", name=re.compile(r"^Pay"))
    expect(pay).to_have_text("Pay ₹4,050.00")
    pay.dblclick()  # one order all the same (the button locks, and the Idempotency-Key)

    pay_by_card(page, PAYS)
    page.wait_for_url(re.compile(r"/orders/[^/]+/status"))
    expect(page.locator("#order-message")).to_contain_text(
        "500 credits have been added", timeout=WEBHOOK_WAIT_MS
    )
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment received")
    expect(page.locator("#order-status")).to_contain_text("4,050.00")

    page.get_by_role("link", name="Your account").click()
    page.wait_for_url(re.compile(r"/account"))
    expect(page.locator("#balance")).to_have_text("500")  # Standard has no bonus credits in the demo catalog
    orders = _orders(page)
    assert [(o["status"], o["amount"], o["coupon"]) for o in orders] == [("fulfilled", 4_050_00, "WELCOME10")]


def test_a_declined_card_says_so_on_the_result_page_and_trying_again_pays(page: Any) -> None:
    register(page, email=unique_email("declined"))
    _pick(page, plan="basic", currency="INR")
    expect(page.locator('[data-line="total"]')).to_contain_text("₹1,000.00")
    page.get_by_role("button", name=re.compile(r"^Pay")).click()

    pay_by_card(page, DECLINED)
    page.wait_for_url(re.compile(r"/orders/[^/]+/return"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment declined")
    expect(page.get_by_role("status")).to_contain_text("declined by the bank")
    expect(page.get_by_role("link", name="Your account")).to_have_attribute("href", "/account")

    page.get_by_role("link", name="Try again").click()
    # the order is failed (its webhook came) and offers a new attempt, or still open and reopens its checkout
    page.wait_for_url(re.compile(r"/checkout/|/sandbox/checkout/"))
    if "/sandbox/checkout/" not in page.url:
        page.get_by_role("button", name="Try again").click()
    pay_by_card(page, PAYS)
    page.wait_for_url(re.compile(r"/orders/[^/]+/status"))
    expect(page.locator("#order-message")).to_contain_text(
        "100 credits have been added", timeout=WEBHOOK_WAIT_MS
    )
    page.goto("/account")
    expect(page.locator("#balance")).to_have_text("100")
    orders = _orders(page)
    assert [(o["status"], o["amount"]) for o in orders] == [("fulfilled", 1_000_00)]  # the same order, paid


def test_the_quote_follows_a_typed_quantity_across_a_discount_slab_and_shows_errors_by_their_fields(
    page: Any,
) -> None:
    register(page, email=unique_email("slab"))
    page.goto("/buy?quantity=100")
    expect(page.get_by_role("radio", name="Custom quantity")).to_be_checked()
    page.get_by_label("Currency").select_option("INR")
    total = page.locator('[data-line="total"]')
    expect(total).to_contain_text("₹1,000.00")
    slab = page.locator('[data-line="slab"]')
    expect(slab).to_have_count(0)

    quantity = page.get_by_label("Credits", exact=True)
    quantity.fill("")
    quantity.press_sequentially("2500", delay=60)  # typed: 2, 25, 250, 2500
    expect(slab).to_contain_text("5 % from 2,000 credits")
    expect(slab).to_contain_text("₹1,250.00")
    expect(total).to_contain_text("₹23,750.00")
    expect(page.locator('[data-line="credits"]')).to_contain_text("2,500 credits")
    expect(quantity).to_be_focused()

    quantity.fill("1999")
    expect(total).to_contain_text("₹19,990.00")
    expect(slab).to_have_count(0)

    quantity.fill("5")  # below the least a custom quantity may be
    expect(page.locator('[data-error-for="quantity"]')).not_to_be_empty()
    expect(page.get_by_role("button", name=re.compile(r"^Pay"))).to_be_disabled()
    quantity.fill("20")
    expect(total).to_contain_text("₹200.00")
    expect(page.locator('[data-error-for="quantity"]')).to_be_empty()

    page.get_by_label("Coupon code").fill("NO-SUCH-COUPON")
    coupon_error = page.locator('[data-error-for="coupon"]')
    expect(coupon_error).not_to_be_empty()
    expect(page.get_by_label("Coupon code")).to_have_attribute("aria-invalid", "true")
    expect(page.locator('[data-line="total"]')).to_have_count(0)
    page.get_by_label("Coupon code").fill("")
    expect(total).to_contain_text("₹200.00")
    expect(coupon_error).to_be_empty()
