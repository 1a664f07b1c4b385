"""Every page at a phone's width (the narrowest layout), for a customer and for an admin: nothing overflows the
screen sideways, every form field has a label and every button a name, the keyboard reaches the content first
through the skip link, and the browser reports no error (a Content-Security-Policy refusal, a failed script).
"""

from __future__ import annotations

from typing import Any

from tests.browser.conftest import Shop, register, sign_in, unique_email

CUSTOMER_PAGES = (
    "/",
    "/buy",
    "/buy?quantity=2500",
    "/account",
    "/account/transactions",
    "/account/orders",
    "/account/disputes",
    "/account/keys",
    "/account/notifications",
)
ADMIN_PAGES = (
    "/admin",
    "/admin/users",
    "/admin/orders",
    "/admin/gateway-orders",
    "/admin/disputes",
    "/admin/plans",
    "/admin/unit-prices",
    "/admin/meters",
    "/admin/slabs",
    "/admin/offers",
    "/admin/coupons",
    "/admin/webhooks",
    "/admin/audit",
)
PHONE = {"width": 375, "height": 740}

# Form controls without a label, and buttons or links without a name, as a screen reader would find them.
UNNAMED = """() => {
  const visible = (el) => el.offsetParent !== null || el.getClientRects().length > 0;
  const fields = [...document.querySelectorAll("input, select, textarea")].filter(
    (el) => el.type !== "hidden" && visible(el) &&
      el.labels.length === 0 && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby"));
  const controls = [...document.querySelectorAll("button, a[href]")].filter(
    (el) => visible(el) && !(el.textContent || "").trim() && !el.getAttribute("aria-label"));
  return [...fields, ...controls].map((el) => el.outerHTML.slice(0, 120));
}"""
OVERFLOW = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"


def _check(tab: Any, path: str, problems: list[str]) -> None:
    answer = tab.goto(path)
    tab.wait_for_load_state("networkidle")
    if answer is None or answer.status != 200:
        problems.append(f"{path}: HTTP {answer.status if answer else 'none'}")
        return
    overflow = tab.evaluate(OVERFLOW)
    if overflow > 1:
        problems.append(f"{path}: {overflow}px wider than the screen")
    problems.extend(f"{path}: no label or name: {html}" for html in tab.evaluate(UNNAMED))
    tab.keyboard.press("Tab")
    if tab.evaluate("() => document.activeElement && document.activeElement.className") != "skip":
        problems.append(f"{path}: the first Tab does not reach the skip link")


def test_every_page_fits_a_phone_names_its_controls_and_runs_without_errors(browser: Any, shop: Shop) -> None:
    problems: list[str] = []
    for role, pages in (("customer", CUSTOMER_PAGES), ("admin", ADMIN_PAGES)):
        context = browser.new_context(base_url=shop.base_url, viewport=PHONE)
        context.set_default_timeout(15_000)
        tab = context.new_page()
        tab.on(
            "console", lambda message: message.type == "error" and problems.append(f"console: {message.text}")
        )
        tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        try:
            if role == "customer":
                register(tab, email=unique_email("pages"))
            else:
                sign_in(tab, email=shop.admin_email, password=shop.admin_password)
            for path in pages:
                _check(tab, path, problems)
        finally:
            context.close()
    assert problems == []
