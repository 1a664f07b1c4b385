"""Fake Razorpay and Stripe servers, started per test on 127.0.0.1, and the adapters pointed at them through
the API base settings, as an operator would configure them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from prepaid.payments.gateways import build_gateways
from prepaid.payments.gateways.razorpay import RazorpayGateway
from prepaid.payments.gateways.stripe import StripeGateway
from prepaid.settings import Settings
from tests.fakes import razorpay as fake_razorpay
from tests.fakes import stripe as fake_stripe
from tests.fakes.razorpay import FakeRazorpay
from tests.fakes.server import RunningServer
from tests.fakes.stripe import FakeStripe


@pytest.fixture
def razorpay_api() -> Iterator[tuple[FakeRazorpay, str]]:
    fake = FakeRazorpay()
    server = RunningServer(fake.app()).start()
    yield fake, server.url
    server.stop()


@pytest.fixture
def stripe_api() -> Iterator[tuple[FakeStripe, str]]:
    fake = FakeStripe()
    server = RunningServer(fake.app()).start()
    yield fake, server.url
    server.stop()


def gateway_settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
async def razorpay(razorpay_api: tuple[FakeRazorpay, str]) -> AsyncIterator[RazorpayGateway]:
    _, url = razorpay_api
    settings = gateway_settings(
        gateways="razorpay",
        razorpay_key_id=fake_razorpay.KEY_ID,
        razorpay_key_secret=fake_razorpay.KEY_SECRET,
        razorpay_webhook_secret=fake_razorpay.WEBHOOK_SECRET,
        razorpay_api_base=url,
        gateway_timeout=5,
    )
    gateway = build_gateways(settings)["razorpay"]
    assert isinstance(gateway, RazorpayGateway)
    yield gateway
    await gateway.aclose()


@pytest.fixture
async def stripe_gateway(stripe_api: tuple[FakeStripe, str]) -> AsyncIterator[StripeGateway]:
    _, url = stripe_api
    settings = gateway_settings(
        gateways="stripe",
        stripe_secret_key=fake_stripe.SECRET_KEY,
        stripe_publishable_key=fake_stripe.PUBLISHABLE_KEY,
        stripe_webhook_secret=fake_stripe.WEBHOOK_SECRET,
        stripe_api_base=url,
        gateway_timeout=5,
    )
    gateway = build_gateways(settings)["stripe"]
    assert isinstance(gateway, StripeGateway)
    yield gateway
    await gateway.aclose()
