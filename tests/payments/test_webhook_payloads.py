"""Any correctly signed body, whatever its shape, is either a normalised event or a clear 400 error: never a
crash (a webhook route must answer 400 and store nothing, not 500)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prepaid.errors import InvalidRequest
from prepaid.payments.gateways import GatewayEvent
from prepaid.payments.gateways.razorpay import _EVENT_TYPES as RAZORPAY_EVENTS
from prepaid.payments.gateways.razorpay import RazorpayGateway
from prepaid.payments.gateways.stripe import (
    _DISPUTE_EVENTS,
    _INTENT_EVENTS,
    _REFUND_EVENTS,
    _SESSION_EVENTS,
    StripeGateway,
)
from tests.fakes import razorpay as fake_razorpay
from tests.fakes import stripe as fake_stripe

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "id",
        "amount",
        "currency",
        "status",
        "order_id",
        "payment_id",
        "notes",
        "metadata",
        "card",
        "receipt",
        "payment_intent",
        "payment_status",
        "amount_received",
        "amount_deducted",
        "last_payment_error",
        "object",
        "latest_charge",
        "client_reference_id",
        "amount_total",
        "created",
        "created_at",
        "refund_id",
    ]
)
entities = st.dictionaries(field_names, json_values, max_size=10)

razorpay_bodies = json_values | st.fixed_dictionaries(
    {
        "event": st.sampled_from([*RAZORPAY_EVENTS, "unknown.event"]) | json_values,
        "payload": st.dictionaries(
            st.sampled_from(["payment", "order", "refund", "dispute"]),
            st.fixed_dictionaries({"entity": entities}) | json_values,
        )
        | json_values,
        "created_at": json_values,
    }
)
stripe_types = [*_INTENT_EVENTS, *_SESSION_EVENTS, *_REFUND_EVENTS, *_DISPUTE_EVENTS, "unknown.event"]
stripe_bodies = json_values | st.fixed_dictionaries(
    {
        "id": st.just("evt_1") | json_values,
        "object": st.just("event"),
        "type": st.sampled_from(stripe_types) | json_values,
        "created": json_values,
        "data": st.fixed_dictionaries({"object": entities}) | json_values,
    }
)


def outcome(parse: Any, headers: dict[str, str], raw: bytes) -> None:
    try:
        event = parse(headers, raw)
    except InvalidRequest as refused:  # InvalidSignature is one
        assert refused.status == 400
    else:
        assert isinstance(event, GatewayEvent) and event.event_id
        assert event.amount is None or isinstance(event.amount, int)
        assert event.currency is None or (
            isinstance(event.currency, str) and event.currency == event.currency.upper()
        )


def test_any_signed_razorpay_body_is_an_event_or_a_clear_error() -> None:
    gateway = RazorpayGateway(
        key_id=fake_razorpay.KEY_ID,
        key_secret=fake_razorpay.KEY_SECRET,
        webhook_secret=fake_razorpay.WEBHOOK_SECRET,
    )

    @given(body=razorpay_bodies)
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(body: Any) -> None:
        headers, raw = fake_razorpay.signed(json.dumps(body).encode())
        outcome(gateway.parse_webhook, headers, raw)

    try:
        check()
    finally:
        asyncio.run(gateway.aclose())


def test_any_signed_stripe_body_is_an_event_or_a_clear_error() -> None:
    gateway = StripeGateway(
        secret_key=fake_stripe.SECRET_KEY,
        publishable_key=fake_stripe.PUBLISHABLE_KEY,
        webhook_secret=fake_stripe.WEBHOOK_SECRET,
    )

    @given(body=stripe_bodies)
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def check(body: Any) -> None:
        raw = json.dumps(body).encode()
        outcome(gateway.parse_webhook, {"Stripe-Signature": fake_stripe.signature_header(raw)}, raw)

    try:
        check()
    finally:
        asyncio.run(gateway.aclose())
