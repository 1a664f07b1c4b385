"""The Stripe adapter drives the official ``stripe`` SDK (``StripeClient``, async over httpx), which sends real
HTTP requests to a fake Stripe server on 127.0.0.1. Webhooks are signed as Stripe's docs describe and
checked by the SDK's own ``Webhook.construct_event``."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe as stripe_sdk

from prepaid.errors import InvalidRequest
from prepaid.payments.gateways import (
    EventType,
    GatewayRefused,
    GatewayUnavailable,
    InvalidSignature,
    PaymentStatus,
    RefundStatus,
    check_amount,
)
from prepaid.payments.gateways.stripe import StripeGateway
from tests.fakes import stripe as fake
from tests.fakes.stripe import FakeStripe

Api = tuple[FakeStripe, str]
# the SDK's httpx client posts its form as bytes through ``data=``, which httpx deprecates: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


async def new_intent(gateway: StripeGateway, amount: int = 1199, key: str | None = None) -> str:
    checkout = await gateway.create_payment(
        reference="ord_01JD3STRIPE",
        amount=amount,
        currency="USD",
        description="basic pack",
        idempotency_key=key,
    )
    return checkout.gateway_order_id


# --- creating payments -----------------------------------------------------------------------------------------


async def test_create_payment_makes_a_payment_intent_with_our_order_id(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    checkout = await stripe_gateway.create_payment(
        reference="ord_01JD3STRIPE",
        amount=1199,
        currency="usd",
        description="basic pack",
        idempotency_key="att_01JD3ATTEMPT",
        customer_email="buyer@example.com",
    )

    [call] = api.calls("POST", "/v1/payment_intents")
    assert call.bearer == fake.SECRET_KEY
    assert call.header("idempotency-key") == "att_01JD3ATTEMPT"
    assert call.header("stripe-version")  # the SDK pins its API version
    assert call.form["amount"] == "1199" and call.form["currency"] == "usd"
    assert call.form["metadata"] == {"order_id": "ord_01JD3STRIPE"}
    assert call.form["automatic_payment_methods"] == {"enabled": "true"}
    assert call.form["receipt_email"] == "buyer@example.com"
    intent = api.intents[checkout.gateway_order_id]
    assert checkout.gateway_order_id.startswith("pi_")
    assert (checkout.amount, checkout.currency, checkout.reference) == (1199, "USD", "ord_01JD3STRIPE")
    assert dict(checkout.client) == {
        "client_secret": intent["client_secret"],
        "publishable_key": fake.PUBLISHABLE_KEY,
        "payment_intent_id": checkout.gateway_order_id,
    }
    assert checkout.redirect_url is None


async def test_creating_twice_with_one_idempotency_key_makes_one_intent(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    first = await new_intent(stripe_gateway, key="att_SAME_KEY")
    again = await new_intent(stripe_gateway, key="att_SAME_KEY")
    assert first == again and len(api.intents) == 1


async def test_a_redirect_flow_makes_a_checkout_session(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    checkout = await stripe_gateway.create_payment(
        reference="ord_01JD3SESSION",
        amount=1099,
        currency="EUR",
        description="basic pack",
        success_url="https://prepaid.example/orders/ord_01JD3SESSION?session_id={CHECKOUT_SESSION_ID}",
        cancel_url="https://prepaid.example/orders/ord_01JD3SESSION",
    )
    [call] = api.calls("POST", "/v1/checkout/sessions")
    assert call.form["mode"] == "payment" and call.form["client_reference_id"] == "ord_01JD3SESSION"
    assert call.form["line_items"] == [
        {
            "price_data": {"currency": "eur", "unit_amount": "1099", "product_data": {"name": "basic pack"}},
            "quantity": "1",
        }
    ]
    assert call.form["payment_intent_data"]["metadata"] == {"order_id": "ord_01JD3SESSION"}
    assert checkout.gateway_order_id.startswith("cs_") and checkout.gateway_order_id in api.sessions
    assert checkout.redirect_url == f"https://checkout.stripe.com/c/pay/{checkout.gateway_order_id}"
    assert checkout.client["session_id"] == checkout.gateway_order_id
    assert (checkout.amount, checkout.currency) == (1099, "EUR")


async def test_stripe_minimums_are_data_and_the_gateway_refuses_less(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    assert stripe_gateway.minimum_charge["USD"] == 50 and stripe_gateway.minimum_charge["EUR"] == 50
    check_amount(stripe_gateway, 50, "usd")
    with pytest.raises(InvalidRequest) as below:
        check_amount(stripe_gateway, 49, "EUR")
    assert below.value.code == "amount_below_minimum"
    with pytest.raises(GatewayRefused, match="at least"):
        await new_intent(stripe_gateway, amount=49)
    assert api.intents == {}


# --- payment status --------------------------------------------------------------------------------------------


async def test_only_a_succeeded_intent_is_paid(stripe_gateway: StripeGateway, stripe_api: Api) -> None:
    api, _ = stripe_api
    intent_id = await new_intent(stripe_gateway)

    fresh = await stripe_gateway.fetch_payment(intent_id)
    assert fresh.status is PaymentStatus.CREATED and not fresh.paid and fresh.payments == ()

    api.decline(intent_id, decline_code="insufficient_funds")
    declined = await stripe_gateway.fetch_payment(intent_id)
    assert declined.status is PaymentStatus.FAILED and not declined.paid
    assert declined.payment is not None
    assert declined.payment.failure_reason == "Your card was declined. (insufficient_funds)"

    api.authorize(intent_id)
    authorized = await stripe_gateway.fetch_payment(intent_id)
    assert (
        authorized.status is PaymentStatus.AUTHORIZED and not authorized.paid and authorized.amount_paid == 0
    )

    api.succeed(intent_id, brand="mastercard", last4="4444")
    paid = await stripe_gateway.fetch_payment(intent_id)
    assert paid.paid and paid.amount_paid == 1199 and paid.currency == "USD"
    assert paid.reference == "ord_01JD3STRIPE"
    payment = paid.payment
    assert payment is not None and payment.payment_id == intent_id
    assert (payment.method, payment.card_brand, payment.card_last4) == ("card", "mastercard", "4444")
    # the charge came expanded, as Stripe documents
    last = api.calls("GET", f"/v1/payment_intents/{intent_id}")[-1]
    assert ("expand[0]", "latest_charge") in last.query


async def test_a_checkout_session_is_paid_only_when_its_payment_status_is_paid(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api

    async def session() -> str:
        checkout = await stripe_gateway.create_payment(
            reference="ord_S",
            amount=2000,
            currency="USD",
            description="x",
            success_url="https://x.example/ok",
        )
        return checkout.gateway_order_id

    open_id, unpaid_id, paid_id = await session(), await session(), await session()
    assert (await stripe_gateway.fetch_payment(open_id)).status is PaymentStatus.CREATED

    api.complete_session(unpaid_id, paid=False)
    unpaid = await stripe_gateway.fetch_payment(unpaid_id)
    assert not unpaid.paid and unpaid.status is PaymentStatus.PENDING and unpaid.amount_paid == 0

    completed = api.complete_session(paid_id, paid=True)
    paid = await stripe_gateway.fetch_payment(paid_id)
    assert paid.paid and paid.amount_paid == 2000 and paid.reference == "ord_S"
    assert paid.payment is not None and paid.payment.payment_id == completed["payment_intent"]
    assert paid.payment.card_brand == "visa" and paid.payment.card_last4 == "4242"
    last = api.calls("GET", f"/v1/checkout/sessions/{paid_id}")[-1]
    assert ("expand[0]", "payment_intent.latest_charge") in last.query


async def test_the_callback_must_name_the_stored_intent_or_session(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    ours = await new_intent(stripe_gateway)
    other = await new_intent(stripe_gateway)
    secret = api.intents[ours]["client_secret"]

    verified = stripe_gateway.verify_callback(
        gateway_order_id=ours,
        fields={
            "payment_intent": ours,
            "payment_intent_client_secret": secret,
            "redirect_status": "succeeded",
        },
    )
    assert verified.payment_id == ours
    for fields in (
        {"payment_intent": other},
        {"payment_intent": ours, "payment_intent_client_secret": api.intents[other]["client_secret"]},
    ):
        with pytest.raises(InvalidSignature):
            stripe_gateway.verify_callback(gateway_order_id=ours, fields=fields)
    with pytest.raises(InvalidSignature):
        stripe_gateway.verify_callback(
            gateway_order_id="cs_test_ours", fields={"session_id": "cs_test_other"}
        )
    assert stripe_gateway.verify_callback(
        gateway_order_id="cs_test_ours", fields={"session_id": "cs_test_ours"}
    )


# --- webhooks --------------------------------------------------------------------------------------------------


def succeeded_intent(amount: int = 1199) -> dict[str, Any]:
    return {
        "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "object": "payment_intent",
        "amount": amount,
        "amount_received": amount,
        "currency": "usd",
        "status": "succeeded",
        "latest_charge": "ch_3MtwBwLkdIwHu7ix2nUhTeR1",
        "last_payment_error": None,
        "metadata": {"order_id": "ord_01JD3STRIPE"},
        "payment_method_types": ["card"],
        "created": 1680800504,
    }


async def test_a_signed_payment_intent_succeeded_event_is_normalised(stripe_gateway: StripeGateway) -> None:
    body = fake.event("payment_intent.succeeded", succeeded_intent())
    headers, raw = fake.signed(body)
    # the header made as Stripe's docs describe equals the SDK's own test header
    timestamp = int(headers["Stripe-Signature"].split(",")[0][2:])
    assert headers["Stripe-Signature"] == stripe_sdk.WebhookSignature.generate_signature_header(
        raw.decode(), fake.WEBHOOK_SECRET, timestamp
    )

    event = stripe_gateway.parse_webhook(headers, raw)

    assert event.gateway == "stripe" and event.event_id == body["id"]
    assert event.type is EventType.PAYMENT_CAPTURED and event.raw_type == "payment_intent.succeeded"
    assert event.gateway_order_id == event.payment_id == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert (event.amount, event.currency, event.reference) == (1199, "USD", "ord_01JD3STRIPE")
    assert event.payload["data"]["object"]["id"] == "pi_3MtwBwLkdIwHu7ix28a3tqPa"


async def test_forged_tampered_wrong_secret_and_stale_signatures_are_refused(
    stripe_gateway: StripeGateway,
) -> None:
    body = fake.event("payment_intent.succeeded", succeeded_intent())
    headers, raw = fake.signed(body)
    now = int(time.time())
    cases = [
        (headers, raw.replace(b"1199", b"9999")),  # tampered body
        (fake.signed(body, secret="whsec_someone_else")[0], raw),  # wrong secret
        (fake.signed(body, timestamp=now - 301)[0], raw),  # older than the 300 s tolerance
        ({"Content-Type": "application/json"}, raw),  # no signature
        ({"Stripe-Signature": "garbage"}, raw),
        ({"Stripe-Signature": f"t={now},v0=abc"}, raw),
        ({"Stripe-Signature": f"t={now},v1=" + "é" * 64}, raw),
        (headers, b"\xff" + raw),
    ]
    for case_headers, case_body in cases:
        with pytest.raises(InvalidSignature):
            stripe_gateway.parse_webhook(case_headers, case_body)
    # inside the tolerance, and with the header name in any case, it verifies
    fresh, _ = fake.signed(body, timestamp=now - 290)
    assert (
        stripe_gateway.parse_webhook({"stripe-signature": fresh["Stripe-Signature"]}, raw).event_id
        == body["id"]
    )


async def test_a_signed_body_that_is_not_a_stripe_event_is_a_clear_error(
    stripe_gateway: StripeGateway,
) -> None:
    for raw in (
        b"not json",
        b"[1, 2]",
        b'"text"',
        b'{"object": "v2.core.event", "id": "evt_1", "type": "x"}',
        b'{"object": "event"}',
        b'{"object": "event", "id": 5, "type": []}',
    ):
        headers = {"Stripe-Signature": fake.signature_header(raw)}
        with pytest.raises(InvalidRequest) as refused:
            stripe_gateway.parse_webhook(headers, raw)
        assert refused.value.code == "invalid_webhook"


def session_object(payment_status: str) -> dict[str, Any]:
    return {
        "id": "cs_test_a1b2c3",
        "object": "checkout.session",
        "amount_total": 2000,
        "currency": "usd",
        "client_reference_id": "ord_SESSION",
        "metadata": {"order_id": "ord_SESSION"},
        "mode": "payment",
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "payment_status": payment_status,
        "status": "complete",
    }


def refund_object(status: str) -> dict[str, Any]:
    return {
        "id": "re_3MtwBwLkdIwHu7ix0JbLZt3C",
        "object": "refund",
        "amount": 500,
        "charge": "ch_3MtwBwLkdIwHu7ix2nUhTeR1",
        "currency": "usd",
        "metadata": {"refund_id": "rfd_01JD3REFUND"},
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "status": status,
        "failure_reason": "expired_or_canceled_card" if status == "failed" else None,
    }


def dispute_object(status: str) -> dict[str, Any]:
    return {
        "id": "du_1MtJUT2eZvKYlo2CNaw2HvEv",
        "object": "dispute",
        "amount": 1199,
        "charge": "ch_3MtwBwLkdIwHu7ix2nUhTeR1",
        "currency": "usd",
        "payment_intent": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
        "reason": "fraudulent",
        "status": status,
    }


@pytest.mark.parametrize(
    ("name", "obj", "expected"),
    [
        ("checkout.session.completed", session_object("paid"), EventType.PAYMENT_CAPTURED),
        ("checkout.session.completed", session_object("unpaid"), EventType.OTHER),
        ("checkout.session.async_payment_succeeded", session_object("paid"), EventType.PAYMENT_CAPTURED),
        ("checkout.session.async_payment_failed", session_object("unpaid"), EventType.PAYMENT_FAILED),
        (
            "checkout.session.expired",
            {**session_object("unpaid"), "status": "expired"},
            EventType.PAYMENT_CANCELLED,
        ),
        (
            "payment_intent.amount_capturable_updated",
            {**succeeded_intent(), "status": "requires_capture", "amount_received": 0},
            EventType.PAYMENT_AUTHORIZED,
        ),
        (
            "payment_intent.canceled",
            {**succeeded_intent(), "status": "canceled", "amount_received": 0},
            EventType.PAYMENT_CANCELLED,
        ),
        (
            "payment_intent.processing",
            {**succeeded_intent(), "status": "processing", "amount_received": 0},
            EventType.OTHER,
        ),
        ("refund.created", refund_object("pending"), EventType.REFUND_CREATED),
        ("refund.updated", refund_object("succeeded"), EventType.REFUND_PROCESSED),
        ("refund.failed", refund_object("failed"), EventType.REFUND_FAILED),
        ("charge.dispute.created", dispute_object("needs_response"), EventType.DISPUTE_OPENED),
        ("charge.dispute.updated", dispute_object("under_review"), EventType.DISPUTE_UPDATED),
        ("charge.dispute.closed", dispute_object("won"), EventType.DISPUTE_WON),
        ("charge.dispute.closed", dispute_object("lost"), EventType.DISPUTE_LOST),
        ("charge.dispute.closed", dispute_object("warning_closed"), EventType.DISPUTE_WON),
        ("customer.created", {"id": "cus_1", "object": "customer"}, EventType.OTHER),
    ],
)
async def test_event_types_are_normalised(
    stripe_gateway: StripeGateway, name: str, obj: dict[str, Any], expected: EventType
) -> None:
    headers, raw = fake.signed(fake.event(name, obj))
    event = stripe_gateway.parse_webhook(headers, raw)
    assert event.type is expected and event.raw_type == name
    if name.startswith("checkout.session"):
        assert (event.gateway_order_id, event.payment_id) == ("cs_test_a1b2c3", "pi_3MtwBwLkdIwHu7ix28a3tqPa")
        assert (event.reference, event.amount, event.currency) == ("ord_SESSION", 2000, "USD")
    if name.startswith("refund."):
        assert (event.refund_id, event.refund_reference) == ("re_3MtwBwLkdIwHu7ix0JbLZt3C", "rfd_01JD3REFUND")
        assert (event.payment_id, event.amount, event.currency) == ("pi_3MtwBwLkdIwHu7ix28a3tqPa", 500, "USD")
    if name.startswith("charge.dispute"):
        assert event.dispute_id == "du_1MtJUT2eZvKYlo2CNaw2HvEv"
        assert (event.gateway_order_id, event.amount) == ("pi_3MtwBwLkdIwHu7ix28a3tqPa", 1199)


async def test_a_payment_failed_event_carries_the_decline(stripe_gateway: StripeGateway) -> None:
    failed = {
        **succeeded_intent(),
        "status": "requires_payment_method",
        "amount_received": 0,
        "last_payment_error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "generic_decline",
            "message": "Your card was declined.",
        },
    }
    headers, raw = fake.signed(fake.event("payment_intent.payment_failed", failed))
    event = stripe_gateway.parse_webhook(headers, raw)
    assert event.type is EventType.PAYMENT_FAILED
    assert event.failure_reason == "Your card was declined. (generic_decline)"
    assert event.amount == 1199


# --- refunds ---------------------------------------------------------------------------------------------------


async def paid_intent(gateway: StripeGateway, api: FakeStripe, amount: int = 1199) -> str:
    intent_id = await new_intent(gateway, amount=amount)
    api.succeed(intent_id)
    return intent_id


async def test_a_refund_carries_the_idempotency_key_and_a_retry_does_not_refund_twice(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    intent_id = await paid_intent(stripe_gateway, api)

    refund = await stripe_gateway.refund(
        payment_id=intent_id, amount=500, currency="USD", idempotency_key="rfd_01JD3REFUND", reason="asked"
    )
    again = await stripe_gateway.refund(
        payment_id=intent_id, amount=500, currency="USD", idempotency_key="rfd_01JD3REFUND", reason="asked"
    )

    calls = api.calls("POST", "/v1/refunds")
    assert len(calls) == 2
    for call in calls:
        assert call.header("idempotency-key") == "rfd_01JD3REFUND"
        assert call.bearer == fake.SECRET_KEY
        assert call.form == {
            "amount": "500",
            "payment_intent": intent_id,
            "metadata": {"refund_id": "rfd_01JD3REFUND", "reason": "asked"},
        }
    assert refund == again and len(api.refunds) == 1
    assert refund.refund_id.startswith("re_") and refund.status is RefundStatus.PROCESSED
    assert (refund.payment_id, refund.amount, refund.currency, refund.reference) == (
        intent_id,
        500,
        "USD",
        "rfd_01JD3REFUND",
    )
    charge = api.charges[api.intents[intent_id]["latest_charge"]]
    assert charge["amount_refunded"] == 500

    with pytest.raises(GatewayRefused, match="same parameters"):  # the key of another refund
        await stripe_gateway.refund(
            payment_id=intent_id, amount=100, currency="USD", idempotency_key="rfd_01JD3REFUND"
        )
    assert len(api.refunds) == 1


async def test_more_than_is_left_cannot_be_refunded(stripe_gateway: StripeGateway, stripe_api: Api) -> None:
    api, _ = stripe_api
    intent_id = await paid_intent(stripe_gateway, api, amount=1000)
    await stripe_gateway.refund(payment_id=intent_id, amount=600, currency="USD", idempotency_key="rfd_A")
    with pytest.raises(GatewayRefused, match="greater than unrefunded amount"):
        await stripe_gateway.refund(payment_id=intent_id, amount=600, currency="USD", idempotency_key="rfd_B")
    unpaid = await new_intent(stripe_gateway)
    with pytest.raises(GatewayRefused):
        await stripe_gateway.refund(payment_id=unpaid, amount=100, currency="USD", idempotency_key="rfd_C")
    assert len(api.refunds) == 1


async def test_a_lost_refund_answer_is_retried_by_the_sdk_with_the_same_key_and_refunds_once(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    intent_id = await paid_intent(stripe_gateway, api)
    api.lose_next_answer(502)

    refund = await stripe_gateway.refund(
        payment_id=intent_id, amount=1199, currency="USD", idempotency_key="rfd_LOST"
    )

    calls = api.calls("POST", "/v1/refunds")
    assert len(calls) == 2 and {c.header("idempotency-key") for c in calls} == {"rfd_LOST"}
    assert len(api.refunds) == 1 and refund.refund_id in api.refunds


async def test_a_gateway_error_during_a_refund_then_a_retry_refunds_once(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    intent_id = await paid_intent(stripe_gateway, api)
    api.fail_next(500, {"error": {"type": "api_error", "message": "An unknown error occurred"}}, times=3)
    with pytest.raises(GatewayUnavailable) as failed:  # three tries (the SDK's two retries), all failed
        await stripe_gateway.refund(
            payment_id=intent_id, amount=1199, currency="USD", idempotency_key="rfd_RETRY"
        )
    assert failed.value.retryable and api.refunds == {}

    refund = await stripe_gateway.refund(
        payment_id=intent_id, amount=1199, currency="USD", idempotency_key="rfd_RETRY"
    )
    again = await stripe_gateway.refund(
        payment_id=intent_id, amount=1199, currency="USD", idempotency_key="rfd_RETRY"
    )
    assert refund == again and refund.status is RefundStatus.PROCESSED and len(api.refunds) == 1


# --- SDK errors ------------------------------------------------------------------------------------------------


async def test_sdk_errors_become_gateway_errors(stripe_gateway: StripeGateway, stripe_api: Api) -> None:
    api, url = stripe_api
    with pytest.raises(GatewayRefused, match="No such payment_intent"):
        await stripe_gateway.fetch_payment("pi_DoesNotExist")
    api.fail_next(502, raw=b"<html>502 Bad Gateway</html>", times=3)
    with pytest.raises(GatewayUnavailable):
        await new_intent(stripe_gateway)
    api.fail_next(200, {"object": "payment_intent", "status": "succeeded"})  # no id
    with pytest.raises(GatewayUnavailable, match="without an id"):
        await stripe_gateway.fetch_payment("pi_Whatever")
    api.fail_next(200, raw=b"<html>not json</html>")
    with pytest.raises(GatewayUnavailable):
        await stripe_gateway.fetch_payment("pi_Whatever")
    api.fail_next(
        429,
        {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}},
    )
    with pytest.raises(GatewayUnavailable, match="Too many requests"):
        await stripe_gateway.fetch_payment("pi_Whatever")

    wrong = StripeGateway(
        secret_key="sk_test_wrong", publishable_key="pk", webhook_secret="whsec", api_base=url
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    unreachable = StripeGateway(
        secret_key=fake.SECRET_KEY,
        publishable_key="pk",
        webhook_secret="whsec",
        api_base=closed,
        max_network_retries=0,
    )
    try:
        with pytest.raises(GatewayRefused, match="Invalid API Key"):
            await new_intent(wrong)
        with pytest.raises(GatewayUnavailable, match="could not be reached"):
            await new_intent(unreachable)
    finally:
        await wrong.aclose()
        await unreachable.aclose()


# --- reconciliation listing ------------------------------------------------------------------------------------


async def test_intents_over_a_period_are_listed_across_pages(
    stripe_gateway: StripeGateway, stripe_api: Api
) -> None:
    api, _ = stripe_api
    now = datetime.now(UTC)
    base = int(now.timestamp()) - 3600
    with api.lock:
        for index in range(130):
            intent = api._new_intent(
                amount=1000 + index, currency="usd", metadata={"order_id": f"ord_{index}"}, description=None
            )
            intent["created"] = base + index
            if index % 2:
                intent.update(status="succeeded", amount_received=1000 + index)
        old = api._new_intent(amount=5000, currency="usd", metadata={}, description=None)
        old["created"] = base - 7200

    listed = await stripe_gateway.list_orders(since=now - timedelta(hours=2), until=now)

    assert len(listed) == 130 and old["id"] not in {o.gateway_order_id for o in listed}
    assert listed[0].reference == "ord_129" and listed[0].paid and listed[0].amount_paid == 1129
    assert listed[1].reference == "ord_128" and listed[1].status is PaymentStatus.CREATED
    pages = api.calls("GET", "/v1/payment_intents")
    assert len(pages) == 2 and "starting_after" not in dict(pages[0].query)
    assert dict(pages[1].query)["starting_after"] == listed[99].gateway_order_id
    assert dict(pages[0].query)["created[gte]"] == str(int((now - timedelta(hours=2)).timestamp()))


async def test_the_adapter_never_shows_its_secrets(stripe_gateway: StripeGateway) -> None:
    assert fake.SECRET_KEY not in repr(stripe_gateway) and fake.WEBHOOK_SECRET not in repr(stripe_gateway)
