"""Stripe Elements on the buy flow, on both engines, through the ASGI app with the fake Stripe API over real HTTP
(the official SDK): a signed-in browser's Stripe order is a PaymentIntent whose checkout page mounts the Payment
Element (Stripe.js from https://js.stripe.com/v3/, the publishable key and the client secret in data attributes,
Stripe's documented CSP); Stripe's return to the attempt's return page with ``payment_intent`` and
``payment_intent_client_secret`` is verified by asking Stripe, and the order is fulfilled once, whether the
webhook comes before or after. Bots keep their Checkout Session (tests/payments/test_checkout_pages_bots.py)."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from prepaid.payments import service as payments_service
from tests.factories import make_customer, make_user
from tests.fakes import stripe as fake_stripe
from tests.fakes.stripe import FakeStripe
from tests.helpers import browser_signed_in
from tests.payments.test_checkout_pages_support import PRICES, local, settings_overrides
from tests.payments.test_orders_support import (
    make_plan,
    order_grants,
    send_webhook,
    stored_order,
    wallet_of,
)

__all__ = ["settings_overrides"]  # fixtures

# What docs.stripe.com/security/guide ("Content Security Policy") lists for Stripe.js, directive by directive.
STRIPE_DOCUMENTED = {
    "script-src": {"https://js.stripe.com", "https://*.js.stripe.com", "https://maps.googleapis.com"},
    "frame-src": {"https://js.stripe.com", "https://*.js.stripe.com", "https://hooks.stripe.com"},
    "connect-src": {"https://api.stripe.com", "https://maps.googleapis.com"},
}


def _csp(header: str) -> dict[str, set[str]]:
    directives: dict[str, set[str]] = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            assert words[0] not in directives, f"{words[0]} twice"
            directives[words[0]] = set(words[1:])
    return directives


def _data(page: str, name: str) -> str:
    match = re.search(rf'<form id="stripe-form"[^>]*\sdata-{name}="([^"]*)"', page)
    assert match is not None, name
    return html.unescape(match.group(1))


async def _browser_order(browser: httpx.AsyncClient, csrf: str, plan: str, **extra: Any) -> dict[str, Any]:
    body = {"plan": plan, "currency": "USD", "gateway": "stripe", **extra}
    answer = await browser.post("/v1/orders", json=body, headers={"X-CSRF-Token": csrf})
    assert answer.status_code == 201, answer.text
    order: dict[str, Any] = answer.json()
    return order


def _return_path(attempt: str, intent: dict[str, Any], **extra: str) -> str:
    """Where Stripe.js sends the browser after confirmPayment: the return_url with Stripe's documented fields."""
    query = {
        "payment_intent": intent["id"],
        "payment_intent_client_secret": intent["client_secret"],
        "redirect_status": "succeeded",
        **extra,
    }
    return f"/orders/{attempt}/return?{urlencode(query)}"


async def _elements_page(browser: httpx.AsyncClient, order: dict[str, Any]) -> httpx.Response:
    page = await browser.get(local(order["checkout_url"]))
    assert page.status_code == 200, page.text
    return page


async def test_a_browsers_stripe_order_opens_stripe_elements_with_stripes_script_and_csp(
    app: Any, stripe_api: tuple[FakeStripe, str]
) -> None:
    fake, _url = stripe_api
    user = await make_user(app)
    plan = await make_plan(app, credits=100, bonus_credits=5, prices=PRICES)
    async with browser_signed_in(app, user) as (browser, csrf):
        order = await _browser_order(browser, csrf, plan)
        intent_id = order["checkout"]["gateway_order_id"]
        assert intent_id.startswith("pi_") and order["checkout"]["redirect_url"] is None
        # a PaymentIntent, no Checkout Session
        assert fake.sessions == {} and set(fake.intents) == {intent_id}
        assert order["checkout_url"], order
        page = await _elements_page(browser, order)
        read = await browser.get(f"/v1/orders/{order['id']}", headers={"X-CSRF-Token": csrf})
        assert read.status_code == 200, read.text
        assert read.json()["checkout_url"] == order["checkout_url"]
        # The Elements page is for this signed link only: another order's id with this signature is refused.
        parts = urlsplit(order["checkout_url"])
        forged = await browser.get(f"/checkout/ord_{'0' * 26}?{parts.query}")
        assert forged.status_code == 403 and "client-secret" not in forged.text

    text = page.text
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", text, flags=re.S)
    sources = [re.search(r'src="([^"]+)"', attributes) for attributes, _body in scripts]
    assert all(source is not None for source in sources)  # no inline script
    assert [s.group(1) for s in sources if s is not None] == [
        "/static/app.js",
        "https://js.stripe.com/v3/",
        "/static/checkout/stripe.js",
    ]
    assert all(body.strip() == "" for _attributes, body in scripts)

    policy = _csp(page.headers["content-security-policy"])
    for directive, documented in STRIPE_DOCUMENTED.items():
        third_party = {source for source in policy[directive] if source != "'self'"}
        assert third_party == documented, directive
    assert policy["script-src"] == {"'self'"} | STRIPE_DOCUMENTED["script-src"]  # no unsafe-inline, no eval
    assert policy["frame-ancestors"] == {"'none'"} and policy["object-src"] == {"'none'"}
    assert policy["default-src"] == {"'self'"}
    assert page.headers["cross-origin-opener-policy"] == "same-origin-allow-popups"
    assert page.headers["cache-control"] == "no-store"

    intent = fake.intents[intent_id]
    assert _data(text, "publishable-key") == fake_stripe.PUBLISHABLE_KEY
    assert _data(text, "client-secret") == intent["client_secret"]
    attempt = order["checkout"]["attempt"]
    assert _data(text, "return-url") == f"http://testserver/orders/{attempt}/return"
    assert fake_stripe.SECRET_KEY not in text and fake_stripe.WEBHOOK_SECRET not in text
    assert "USD 10.00" in text and "100 + 5 bonus" in text
    assert 'id="payment-element"' in text and 'id="stripe-pay"' in text


async def test_the_return_from_stripe_fulfils_the_order_once_and_the_webhook_after_changes_nothing(
    app: Any, stripe_api: tuple[FakeStripe, str]
) -> None:
    fake, _url = stripe_api
    user = await make_user(app)
    plan = await make_plan(app, credits=100, bonus_credits=5, prices=PRICES)
    async with browser_signed_in(app, user) as (browser, csrf):
        order = await _browser_order(browser, csrf, plan)
        attempt = order["checkout"]["attempt"]
        intent_id = order["checkout"]["gateway_order_id"]
        await _elements_page(browser, order)

        # Before Stripe says it succeeded, a return with the right fields fulfils nothing.
        early = await browser.get(_return_path(attempt, fake.intents[intent_id]))
        assert early.status_code == 303
        assert (await stored_order(app, order["id"])).status == "pending"
        assert await order_grants(app, order["id"]) == 0

        intent = fake.succeed(intent_id)  # what confirmPayment does at Stripe
        back = await browser.get(_return_path(attempt, intent))
        assert back.status_code == 303, back.text
        status_url = back.headers["location"]
        assert urlsplit(status_url).path == f"/orders/{order['id']}/status"
        stored = await stored_order(app, order["id"])
        assert stored.status == "fulfilled" and stored.payment_id == intent_id
        grants = await order_grants(app, order["id"])
        assert grants == 2  # the credits and the bonus
        assert (await wallet_of(app, user))["balance"] == 105

        status_page = await browser.get(local(status_url))
        assert "Paid." in status_page.text and "100 + 5 bonus" in status_page.text

        webhook = await send_webhook(
            browser,
            fake_stripe.signed(fake_stripe.event("payment_intent.succeeded", intent)),
            gateway="stripe",
        )
        assert webhook.status_code == 200, webhook.text
        again = await browser.get(_return_path(attempt, intent))  # a reload of the return page
        assert again.status_code == 303
        assert await order_grants(app, order["id"]) == grants
        assert (await wallet_of(app, user))["balance"] == 105
        # the pay link of a paid order shows its status
        paid = await browser.get(local(order["checkout_url"]))
        assert paid.status_code == 303 and urlsplit(paid.headers["location"]).path.endswith("/status")


async def test_the_webhook_first_then_the_return_fulfils_once(
    app: Any, stripe_api: tuple[FakeStripe, str]
) -> None:
    fake, _url = stripe_api
    user = await make_user(app)
    plan = await make_plan(app, credits=100, prices=PRICES)
    async with browser_signed_in(app, user) as (browser, csrf):
        order = await _browser_order(browser, csrf, plan)
        attempt = order["checkout"]["attempt"]
        intent = fake.succeed(order["checkout"]["gateway_order_id"])
        event = fake_stripe.signed(fake_stripe.event("payment_intent.succeeded", intent))
        assert (await send_webhook(browser, event, gateway="stripe")).status_code == 200
        assert (await stored_order(app, order["id"])).status == "fulfilled"
        grants = await order_grants(app, order["id"])
        assert grants == 1
        back = await browser.get(_return_path(attempt, intent))
        assert back.status_code == 303, back.text
        assert urlsplit(back.headers["location"]).path == f"/orders/{order['id']}/status"
        assert await order_grants(app, order["id"]) == grants
        assert (await wallet_of(app, user))["balance"] == 100


async def test_a_return_naming_another_intent_or_secret_is_refused_and_changes_nothing(
    app: Any, stripe_api: tuple[FakeStripe, str]
) -> None:
    fake, _url = stripe_api
    user = await make_user(app)
    plan = await make_plan(app, credits=100, prices=PRICES)
    async with browser_signed_in(app, user) as (browser, csrf):
        mine = await _browser_order(browser, csrf, plan)
        other = await _browser_order(browser, csrf, plan)
        attempt = mine["checkout"]["attempt"]
        paid_other = fake.succeed(other["checkout"]["gateway_order_id"])  # someone's paid intent
        mine_intent = fake.intents[mine["checkout"]["gateway_order_id"]]
        forged = {**mine_intent, "client_secret": paid_other["client_secret"]}
        for wrong in (paid_other, forged):
            refused = await browser.get(_return_path(attempt, wrong))
            assert refused.status_code == 400, refused.text
            assert "could not be verified" in refused.text
        assert (await stored_order(app, mine["id"])).status == "pending"
        assert await order_grants(app, mine["id"]) == 0
        assert (await wallet_of(app, user))["balance"] == 0


async def test_a_declined_card_fails_the_order_and_a_retry_pays_on_a_new_elements_page(
    app: Any, stripe_api: tuple[FakeStripe, str]
) -> None:
    fake, _url = stripe_api
    user = await make_user(app)
    plan = await make_plan(app, credits=100, prices=PRICES)
    async with browser_signed_in(app, user) as (browser, csrf):
        order = await _browser_order(browser, csrf, plan)
        attempt = order["checkout"]["attempt"]
        first_intent = order["checkout"]["gateway_order_id"]
        fake.decline(first_intent, decline_code="insufficient_funds")
        back = await browser.get(_return_path(attempt, fake.intents[first_intent], redirect_status="failed"))
        assert back.status_code == 303, back.text
        stored = await stored_order(app, order["id"])
        assert stored.status == "failed" and "declined" in (stored.failure_reason or "")
        status_page = await browser.get(local(back.headers["location"]))
        assert "did not go through" in status_page.text

        retry_page = await browser.get(local(order["checkout_url"]))
        assert retry_page.status_code == 200 and "Try again" in retry_page.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', retry_page.text)
        action = re.search(r'<form method="post" action="([^"]+)"', retry_page.text)
        assert token is not None and action is not None
        retried = await browser.post(html.unescape(action.group(1)), data={"csrf_token": token.group(1)})
        assert retried.status_code == 200, retried.text  # the new attempt's Elements page, in place
        attempts = await _attempts(app, order["id"])
        assert len(attempts) == 2 and attempts[1].gateway_order_id != first_intent
        second = attempts[1]
        assert second.gateway_order_id is not None and second.gateway_order_id.startswith("pi_")
        assert retried.headers["content-security-policy"].count("https://js.stripe.com") == 2
        new_intent = fake.intents[second.gateway_order_id]
        assert _data(retried.text, "client-secret") == new_intent["client_secret"]
        assert _data(retried.text, "return-url") == f"http://testserver/orders/{second.id}/return"

        paid = fake.succeed(second.gateway_order_id)
        done = await browser.get(_return_path(second.id, paid))
        assert done.status_code == 303, done.text
        assert (await stored_order(app, order["id"])).status == "fulfilled"
        assert await order_grants(app, order["id"]) == 1
        assert (await wallet_of(app, user))["balance"] == 100


async def test_an_app_with_a_token_still_confirms_its_payment_intent_itself(
    app: Any, client: httpx.AsyncClient, stripe_api: tuple[FakeStripe, str]
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, credits=100, prices=PRICES)
    body = {"plan": plan, "currency": "USD", "gateway": "stripe"}
    answer = await client.post("/v1/orders", json=body, headers=buyer.headers)
    assert answer.status_code == 201, answer.text
    order = answer.json()
    assert order["checkout"]["gateway_order_id"].startswith("pi_")
    assert order["checkout"]["client"]["client_secret"]
    assert order["checkout_url"] is None  # no page of ours: the app mounts Stripe.js with the client secret
    assert stripe_api[0].sessions == {}


async def _attempts(app: Any, order_id: str) -> list[Any]:
    async with app.state.db.transaction(write=False) as session:
        return list(await payments_service.attempts_of(session, order_id))
