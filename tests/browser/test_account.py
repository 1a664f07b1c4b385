"""The account pages in a real browser against a real server: a declined payment retried from /account, a
dispute raised and followed, the balance changing live over the WebSocket, CSRF refusals, and an API key shown
once, used, then revoked."""

from __future__ import annotations

import re
import secrets
import time
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import DECLINED, PAYS, Shop, csrf_of, pay_by_card, register, sign_in, unique_email


def balance_of(page: Any) -> int:
    return int(page.locator("#balance").inner_text().replace(",", ""))


def place_order(page: Any, plan: str = "standard") -> dict[str, Any]:
    """An order for ``plan`` made as the signed-in user, the way the buy page's script makes it (a cookie call to
    /v1 with the page's CSRF token)."""
    answer = page.request.post(
        "/v1/orders",
        data={"plan": plan, "currency": "INR", "gateway": "sandbox"},
        headers={"X-CSRF-Token": csrf_of(page)},
    )
    assert answer.status == 201, answer.text()
    order: dict[str, Any] = answer.json()
    return order


def order_row(page: Any, order_id: str) -> Any:
    return page.locator(f"#order-{order_id}")


def test_a_declined_payment_is_retried_from_the_account_and_the_credits_land(page: Any) -> None:
    register(page, email=unique_email("declined"))
    start = balance_of(page)
    order = place_order(page)
    page.goto(order["checkout"]["redirect_url"])
    pay_by_card(page, DECLINED)
    expect(page.locator("body")).to_contain_text("declined")

    # The gateway's payment.failed webhook marks the order failed (the server's job delivers it).
    deadline = time.monotonic() + 30
    while True:
        page.goto("/account/orders")
        if order_row(page, order["id"]).locator('[data-status="failed"]').count():
            break
        assert time.monotonic() < deadline, "the order never showed as failed"
        page.wait_for_timeout(500)
    row = order_row(page, order["id"])
    retry = row.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()

    retry.click()
    page.wait_for_url(re.compile(r"/sandbox/checkout/"))
    pay_by_card(page, PAYS)
    page.goto("/account")
    credited = order["credits"] + order["bonus_credits"]
    assert credited >= 500
    expect(page.locator("#balance")).to_have_text(f"{start + credited:,}")
    page.goto("/account/orders")
    expect(order_row(page, order["id"]).locator('[data-status="fulfilled"]')).to_be_visible()
    expect(order_row(page, order["id"]).get_by_role("button", name="Retry")).to_have_count(0)


def test_a_user_raises_a_dispute_on_a_paid_order_and_follows_its_thread(page: Any) -> None:
    register(page, email=unique_email("dispute"))
    order = place_order(page, "basic")
    page.goto(order["checkout"]["redirect_url"])
    pay_by_card(page, PAYS)

    page.goto("/account/orders")
    order_row(page, order["id"]).get_by_role("link", name="Report a problem").click()
    page.get_by_label("What went wrong").select_option("wrong_amount")
    page.get_by_label("Message").fill("I was charged <script>window.pwned=1</script> twice")
    page.get_by_role("button", name="Raise dispute").click()
    page.wait_for_url(re.compile(r"/account/disputes/dsp_"))
    thread = page.locator("#thread")
    expect(thread).to_contain_text("I was charged <script>window.pwned=1</script> twice")
    expect(page.locator("#dispute-status")).to_contain_text("open")
    assert page.evaluate("window.pwned") is None

    page.get_by_label("Add a message").fill("Any news on this?")
    page.get_by_role("button", name="Send").click()
    expect(thread.locator("li")).to_have_count(2)
    expect(thread).to_contain_text("Any news on this?")

    page.get_by_role("link", name="Disputes", exact=True).click()
    expect(page.locator("#disputes")).to_contain_text(order["id"])

    page.set_viewport_size({"width": 375, "height": 800})  # a phone: the page itself never scrolls sideways
    for path in ("/account", "/account/orders", page.url):
        page.goto(path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, path
    page.goto("/account/disputes")


def test_the_balance_changes_live_when_credits_are_granted_elsewhere(page: Any, shop: Shop) -> None:
    register(page, email=unique_email("live"))
    expect(page.locator("#wallets[data-live='connected']")).to_be_attached()
    before = balance_of(page)
    wallet_id = page.locator("#wallets [data-wallet]").first.get_attribute("data-wallet")
    card = page.locator(f'[data-wallet="{wallet_id}"]')
    promotional = int(card.locator('[data-figure="promotional"]').inner_text().replace(",", ""))

    admin = page.context.browser.new_context(base_url=shop.base_url)
    try:
        admin_page = admin.new_page()
        sign_in(admin_page, email=shop.admin_email, password=shop.admin_password)
        granted = admin_page.request.post(
            f"/v1/wallets/{wallet_id}/grants",
            data={"amount": 77, "idempotency_key": secrets.token_hex(8), "reason": "goodwill"},
            headers={"X-CSRF-Token": csrf_of(admin_page)},
        )
        assert granted.status == 201, granted.text()
    finally:
        admin.close()

    expect(page.locator("#balance")).to_have_text(f"{before + 77:,}")  # no reload
    expect(card.locator('[data-figure="promotional"]')).to_have_text(f"{promotional + 77:,}")


def test_cookie_calls_and_forms_without_the_csrf_token_are_refused(page: Any) -> None:
    register(page, email=unique_email("csrf"))
    page.goto("/account/keys")
    bare = page.request.post("/v1/api_keys", data={"name": "x", "scopes": ["balance:read"]})
    assert bare.status == 403
    assert bare.json()["error"]["code"] == "csrf_failed"
    with_header = page.request.post(
        "/v1/api_keys",
        data={"name": "with header", "scopes": ["balance:read"]},
        headers={"X-CSRF-Token": csrf_of(page)},
    )
    assert with_header.status == 201

    form = page.request.post("/account/keys", form={"name": "no token", "scopes": "balance:read"})
    assert form.status == 403
    page.reload()
    expect(page.locator("#keys")).not_to_contain_text("no token")
    expect(page.locator("#keys")).to_contain_text("with header")


def test_an_api_key_is_shown_once_works_for_the_api_and_stops_when_revoked(page: Any, shop: Shop) -> None:
    email = unique_email("keys")
    register(page, email=email)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Key name").fill("my <b>bot</b>")
    page.get_by_label("usage:write").uncheck()
    page.get_by_label("balance:read").check()
    page.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret").inner_text().strip()
    assert secret.startswith("sk_")
    expect(page.locator("#new-key")).to_contain_text("my <b>bot</b>")

    page.goto("/account/keys")
    expect(page.locator("#new-key-secret")).to_have_count(0)
    assert secret not in page.content()

    api = page.context.browser.new_context(base_url=shop.base_url)  # no cookies: the key alone
    try:
        me = api.request.get("/v1/me", headers={"X-API-Key": secret})
        assert me.status == 200 and me.json()["email"] == email
        page.get_by_role("button", name=re.compile(r"^Revoke")).click()
        expect(page.locator("#keys")).to_contain_text("No keys.")
        assert api.request.get("/v1/me", headers={"X-API-Key": secret}).status == 401
    finally:
        api.close()
