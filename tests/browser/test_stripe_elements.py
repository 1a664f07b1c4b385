"""Paying with Stripe Elements in a real browser: ``prepaid serve`` with Stripe enabled against the fake Stripe API
(tests/fakes/stripe.py on a real port, as the SDK's API base). Only Stripe's side is stood in for: Playwright
answers https://js.stripe.com/v3/ with a small stand-in for Stripe.js (``Stripe(key).elements({clientSecret})``,
``elements.create("payment").on().mount()``, ``stripe.confirmPayment({elements, confirmParams})``) and the
confirm call it makes to https://api.stripe.com, which confirms the intent on the fake (a declined test card is
declined) and, on success, sends the browser to ``return_url`` with the fields Stripe documents. Everything of
ours is real: /buy, the order, the Elements page under its CSP, the return page asking Stripe, the status page.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ADMIN_EMAIL, Shop, _seed, register, unique_email
from tests.e2e.conftest import ServerFactory
from tests.fakes import stripe as fake_stripe
from tests.fakes.server import RunningServer
from tests.fakes.stripe import FakeStripe

STRIPE_JS = "https://js.stripe.com/v3/"
DECLINED_CARD = "4000000000000002"

# The stand-in for Stripe.js: the calls static/checkout/stripe.js makes, and nothing else. The "Payment Element"
# is one labelled card field; confirmPayment posts it to Stripe's API (answered by the test) like Stripe.js does.
STAND_IN = r"""
(function () {
  "use strict";
  window.Stripe = function (publishableKey) {
    var secret = null;
    var card = null;
    return {
      elements: function (options) {
        secret = options.clientSecret;
        return {
          create: function (type) {
            var handlers = {};
            return {
              on: function (name, handler) { handlers[name] = handler; },
              mount: function (selector) {
                var label = document.createElement("label");
                label.textContent = "Card number";
                card = document.createElement("input");
                card.autocomplete = "cc-number";
                label.appendChild(card);
                document.querySelector(selector).appendChild(label);
                window.setTimeout(function () { if (handlers.ready) { handlers.ready({ elementType: type }); } }, 0);
              }
            };
          }
        };
      },
      confirmPayment: function (params) {
        var intent = secret.split("_secret_")[0];
        var body = new URLSearchParams({ key: publishableKey, client_secret: secret, card: card.value });
        return fetch("https://api.stripe.com/v1/payment_intents/" + intent + "/confirm", { method: "POST", body: body })
          .then(function (answer) { return answer.json(); })
          .then(function (answer) {
            if (answer.error) { return { error: answer.error }; }
            var url = new URL(params.confirmParams.return_url);
            url.searchParams.set("payment_intent", answer.id);
            url.searchParams.set("payment_intent_client_secret", answer.client_secret);
            url.searchParams.set("redirect_status", answer.status);
            window.location.assign(url.toString());
            return new Promise(function () {});
          });
      }
    };
  };
})();
"""


@pytest.fixture(scope="module")
def stripe_api() -> Iterator[tuple[FakeStripe, str]]:
    """The fake Stripe API on a real port: the fake and its URL."""
    fake = FakeStripe()
    server = RunningServer(fake.app()).start()
    try:
        yield fake, server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stripe_fake(stripe_api: tuple[FakeStripe, str]) -> FakeStripe:
    return stripe_api[0]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, stripe_api: tuple[FakeStripe, str]) -> Iterator[Shop]:
    """The browser tests' shop (the demo catalog), with Stripe as its only gateway, pointed at the fake API."""
    factory = ServerFactory(tmp_path_factory.mktemp("stripe-shop"))
    database_url = factory.sqlite_url()
    admin_password = secrets.token_urlsafe(16)
    try:
        factory.migrate(factory.env(database_url, 0))
        _seed(database_url, admin_password)
        server = factory.serve(
            database_url=database_url,
            migrate=False,
            PREPAID_GATEWAYS="stripe",
            PREPAID_STRIPE_SECRET_KEY=fake_stripe.SECRET_KEY,
            PREPAID_STRIPE_PUBLISHABLE_KEY=fake_stripe.PUBLISHABLE_KEY,
            PREPAID_STRIPE_WEBHOOK_SECRET=fake_stripe.WEBHOOK_SECRET,
            PREPAID_STRIPE_API_BASE=stripe_api[1],
        )
        yield Shop(server=server, admin_email=ADMIN_EMAIL, admin_password=admin_password)
    finally:
        factory.stop_all()


def _stand_in_stripe(page: Any, fake: FakeStripe) -> dict[str, list[Any]]:
    """Answer Stripe.js and its confirm call; what was asked of them."""
    seen: dict[str, list[Any]] = {"script": [], "confirm": []}

    def script(route: Any) -> None:
        seen["script"].append(route.request.url)
        route.fulfill(status=200, content_type="application/javascript", body=STAND_IN)

    def confirm(route: Any) -> None:
        request = route.request
        intent_id = request.url.split("/payment_intents/")[1].split("/")[0]
        form = {key: values[0] for key, values in parse_qs(request.post_data or "").items()}
        seen["confirm"].append({"intent": intent_id, **form})
        intent = fake.intents.get(intent_id)
        headers = {"Access-Control-Allow-Origin": "*"}
        if (
            intent is None
            or form.get("key") != fake_stripe.PUBLISHABLE_KEY
            or form.get("client_secret") != intent["client_secret"]
        ):
            error = {"error": {"type": "invalid_request_error", "message": "No such payment_intent."}}
            route.fulfill(
                status=404, headers=headers, content_type="application/json", body=json.dumps(error)
            )
            return
        if form.get("card", "").replace(" ", "") == DECLINED_CARD:
            fake.decline(intent_id, decline_code="generic_decline")
            error = {
                "error": {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": "Your card was declined.",
                }
            }
            route.fulfill(
                status=402, headers=headers, content_type="application/json", body=json.dumps(error)
            )
            return
        paid = fake.succeed(intent_id)
        route.fulfill(status=200, headers=headers, content_type="application/json", body=json.dumps(paid))

    page.route(STRIPE_JS, script)
    page.route(re.compile(r"^https://api\.stripe\.com/v1/payment_intents/[^/]+/confirm$"), confirm)
    return seen


def test_a_buyer_pays_with_stripe_elements_after_a_declined_card(page: Any, stripe_fake: FakeStripe) -> None:
    seen = _stand_in_stripe(page, stripe_fake)
    blocked: list[str] = []
    page.on(
        "console",
        lambda message: blocked.append(message.text) if "Content Security Policy" in message.text else None,
    )
    register(page, email=unique_email("stripe-buyer"))
    page.goto("/buy?plan=standard")
    expect(page.get_by_label("Currency")).to_have_value("USD")  # Stripe's home currency
    pay = page.get_by_role("button", name=re.compile(r"^Pay"))
    expect(pay).to_have_text(re.compile(r"^Pay \$"))
    pay.click()

    page.wait_for_url(re.compile(r"/checkout/ord_"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Pay for your order")
    assert seen["script"] == [STRIPE_JS]  # Stripe.js from js.stripe.com, as Stripe requires
    form = page.locator("#stripe-form")
    assert form.get_attribute("data-publishable-key") == fake_stripe.PUBLISHABLE_KEY
    assert fake_stripe.SECRET_KEY not in page.content()
    card = page.get_by_label("Card number")
    stripe_pay = page.get_by_role("button", name="Pay USD 52.99")
    expect(stripe_pay).to_be_enabled()  # the Payment Element said it is ready

    card.fill("4000 0000 0000 0002")
    stripe_pay.click()
    expect(page.get_by_role("alert")).to_have_text("Your card was declined.")
    expect(stripe_pay).to_be_enabled()  # the buyer may try another card on the same page
    assert "/checkout/" in page.url

    card.fill("4242 4242 4242 4242")
    stripe_pay.click()
    page.wait_for_url(re.compile(r"/orders/[^/]+/status"))  # the return page asked Stripe, then the status
    expect(page.locator("#order-message")).to_contain_text("500 credits have been added")
    expect(page.get_by_role("heading", level=1)).to_have_text("Payment received")

    confirms = seen["confirm"]
    assert len(confirms) == 2 and confirms[0]["intent"] == confirms[1]["intent"]
    intent = stripe_fake.intents[confirms[1]["intent"]]
    assert intent["status"] == "succeeded"
    assert blocked == []  # the page's CSP let Stripe.js and its API call through

    page.get_by_role("link", name="Your account").click()
    page.wait_for_url(re.compile(r"/account"))
    expect(page.locator("#balance")).to_have_text("500")
