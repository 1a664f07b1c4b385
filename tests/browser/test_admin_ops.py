"""The admin panel's operations pages in a real browser against a real server: an admin refunds a user's order
and resolves their dispute while the user, in another browser context, sees the balance, the order status and
the resolution change; hostile text (a name, a dispute message, a user agent) shows as text and never runs.

The user buys through the API with their session cookie and the page's CSRF token (as the buy page's script
does), then pays on the sandbox's hosted checkout page with the test card 4111 1111 1111 1111.
"""

from __future__ import annotations

import re
from typing import Any

from tests.browser.conftest import PAYS, Shop, api, pay_by_card, register, unique_email, wait_for

XSS_SCRIPT = "<script>window.pwned=1</script>"
XSS_SVG = '<svg onload="window.pwned=2">'
XSS = f"{XSS_SCRIPT}{XSS_SVG}"


def balance(page: Any) -> int:
    wallets = api(page, "GET", "/v1/wallets")["data"]
    return int(sum(wallet["balance"] for wallet in wallets))


def buy_standard_plan(page: Any) -> dict[str, Any]:
    """Order the Standard plan through the API, pay it on the sandbox checkout page, wait until fulfilled."""
    page.goto("/account")
    order = api(page, "POST", "/v1/orders", {"plan": "standard", "currency": "INR", "gateway": "sandbox"})
    checkout = order["checkout"]
    assert checkout["gateway"] == "sandbox" and checkout["redirect_url"], order
    page.goto(checkout["redirect_url"])
    pay_by_card(page, PAYS)
    page.goto("/account")

    def fulfilled() -> dict[str, Any] | None:
        current = api(page, "GET", f"/v1/orders/{order['id']}")
        return current if current["status"] == "fulfilled" else None

    return dict(wait_for(fulfilled, "the order to be fulfilled"))


def test_admin_refunds_an_order_and_the_user_sees_balance_and_status_change(
    page: Any, admin_page: Any
) -> None:
    register(page, email=unique_email("refundee"), name="Refundee")
    order = buy_standard_plan(page)
    granted = order["credits"] + order["bonus_credits"]
    assert order["credits"] == 500
    assert balance(page) == granted

    admin_page.goto(f"/admin/orders/{order['id']}")
    assert admin_page.locator("#order-status").inner_text() == "fulfilled"
    admin_page.get_by_label("Amount in INR (blank: all that is left)").fill("not money")
    admin_page.get_by_role("button", name="Refund").click()
    assert admin_page.locator('[data-error-for="amount"]').inner_text().strip() != ""
    assert (
        admin_page.get_by_label("Amount in INR (blank: all that is left)").get_attribute("aria-invalid")
        == "true"
    )
    assert balance(page) == granted  # the refused form changed nothing

    admin_page.get_by_label("Amount in INR (blank: all that is left)").fill("")
    admin_page.get_by_label("Reason").fill("Customer asked")
    admin_page.get_by_label("Credits already granted").select_option("available")
    admin_page.get_by_role("button", name="Refund").click()
    admin_page.wait_for_url(re.compile(r"notice=refunded"))
    assert admin_page.get_by_role("status").inner_text() == "Refund made."
    assert admin_page.locator("#order-status").inner_text() == "refunded"
    assert "processed" in admin_page.locator("#refunds").inner_text()
    assert admin_page.locator("#refund-form").count() == 0  # nothing is left to refund

    # the user, in their own browser
    assert wait_for(lambda: api(page, "GET", f"/v1/orders/{order['id']}")["status"] == "refunded", "refunded")
    assert balance(page) == 0
    page.goto("/account")
    shown = page.locator("#balance")
    if shown.count():  # the account page's live balance
        assert re.sub(r"\D", "", shown.first.inner_text()) == "0"


def test_a_dispute_raised_by_the_user_is_resolved_by_the_admin(page: Any, admin_page: Any) -> None:
    register(page, email=unique_email("disputer"), name="Disputer")
    order = buy_standard_plan(page)
    before = balance(page)
    dispute = api(
        page,
        "POST",
        "/v1/disputes",
        {"order": order["id"], "category": "other", "message": "The credits arrived late; please make up."},
    )
    assert dispute["status"] == "open"

    admin_page.goto("/admin/disputes?status=open")
    admin_page.get_by_role("link", name=dispute["id"]).click()
    admin_page.wait_for_url(re.compile(dispute["id"]))
    assert "The credits arrived late" in admin_page.locator("#thread").inner_text()
    admin_page.get_by_label("Resolution").select_option("grant_credits")
    admin_page.get_by_label("Credits to grant (goodwill; not for a not-credited order)").fill("10")
    admin_page.get_by_role("button", name="Resolve dispute").click()
    assert admin_page.locator('[data-error-for="note"]').inner_text().strip() != ""  # the note is required
    assert api(page, "GET", f"/v1/disputes/{dispute['id']}")["status"] == "open"

    admin_page.get_by_label("Note to the customer").fill("Sorry for the wait: 10 credits on us.")
    admin_page.get_by_role("button", name="Resolve dispute").click()
    admin_page.wait_for_url(re.compile(r"notice=resolved"))
    assert admin_page.locator("#dispute-status").inner_text().startswith("resolved")

    seen = api(page, "GET", f"/v1/disputes/{dispute['id']}")
    assert (seen["status"], seen["resolution"], seen["granted_credits"]) == ("resolved", "grant_credits", 10)
    assert any("10 credits on us" in message["body"] for message in seen["messages"])
    assert balance(page) == before + 10


def test_hostile_text_shows_as_text_on_the_admin_pages_and_nothing_runs(
    browser: Any, shop: Shop, admin_page: Any
) -> None:
    context = browser.new_context(base_url=shop.base_url, user_agent=f"Mozilla/5.0 {XSS}")
    context.set_default_timeout(15_000)
    user_page = context.new_page()
    email = unique_email("mallory")
    try:
        register(user_page, email=email, name=f"Mallory {XSS}")
        order = buy_standard_plan(user_page)
        dispute = api(
            user_page,
            "POST",
            "/v1/disputes",
            {"order": order["id"], "category": "other", "message": f"Hi {XSS}"},
        )
    finally:
        context.close()

    admin_page.goto(f"/admin/users?q={email}")
    user_link = admin_page.get_by_role("link", name=re.compile("Mallory"))
    assert XSS_SCRIPT in user_link.inner_text() and XSS_SVG in user_link.inner_text()
    user_link.click()
    admin_page.wait_for_url(re.compile(r"/admin/users/usr_"))
    assert XSS_SCRIPT in admin_page.locator("h1").inner_text()

    admin_page.goto(f"/admin/orders?user={email}")
    assert XSS_SVG in admin_page.locator("#orders").inner_text()
    admin_page.goto(f"/admin/orders/{order['id']}")
    assert XSS in admin_page.locator("#order-user-agent").inner_text()

    admin_page.goto("/admin/disputes")
    assert XSS_SCRIPT in admin_page.locator("#disputes").inner_text()
    admin_page.goto(f"/admin/disputes/{dispute['id']}")
    assert f"Hi {XSS}" in admin_page.locator("#thread").inner_text()

    admin_page.goto("/admin")
    assert XSS_SCRIPT in admin_page.locator("#top-INR").inner_text()
    chart_titles = admin_page.locator("svg.chart title").all_text_contents()
    assert any(XSS_SVG in title for title in chart_titles)
    for path in (f"/admin/users?q={email}", "/admin/orders", f"/admin/disputes/{dispute['id']}", "/admin"):
        admin_page.goto(path)
        assert admin_page.evaluate("window.pwned") is None, path
        assert admin_page.locator("body svg[onload]").count() == 0, path
