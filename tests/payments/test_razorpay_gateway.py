"""The Razorpay adapter drives the official ``razorpay`` SDK, which sends real HTTP requests to a fake Razorpay
server on 127.0.0.1. Signatures are made as Razorpay documents and cross-checked with the SDK's own Utility."""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import razorpay as razorpay_sdk

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
from prepaid.payments.gateways.razorpay import RazorpayGateway
from tests.fakes import razorpay as fake
from tests.fakes.razorpay import FakeRazorpay

Api = tuple[FakeRazorpay, str]


async def new_order(gateway: RazorpayGateway, amount: int = 49900, reference: str = "ord_TEST0001") -> str:
    checkout = await gateway.create_payment(
        reference=reference, amount=amount, currency="INR", description="500 credits"
    )
    return checkout.gateway_order_id


def sdk_utility(secret: str = fake.KEY_SECRET) -> Any:
    return razorpay_sdk.Client(auth=(fake.KEY_ID, secret)).utility


# --- orders ----------------------------------------------------------------------------------------------------


async def test_create_payment_opens_a_razorpay_order_with_our_id_as_receipt(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    checkout = await razorpay.create_payment(
        reference="ord_01JD3RECEIPT", amount=49900, currency="inr", description="standard pack"
    )

    [call] = api.calls("POST", "/v1/orders")
    assert call.basic_auth == (fake.KEY_ID, fake.KEY_SECRET)
    assert call.header("content-type") == "application/json"
    assert (call.header("user-agent") or "").startswith("Razorpay-Python/")
    assert call.json["amount"] == 49900 and call.json["currency"] == "INR"
    assert call.json["receipt"] == "ord_01JD3RECEIPT"
    assert call.json["notes"]["order_id"] == "ord_01JD3RECEIPT"
    assert checkout.gateway == "razorpay"
    assert checkout.gateway_order_id.startswith("order_") and checkout.gateway_order_id in api.orders
    assert checkout.amount == 49900 and checkout.currency == "INR"
    assert dict(checkout.client) == {
        "key_id": fake.KEY_ID,
        "order_id": checkout.gateway_order_id,
        "amount": 49900,
        "currency": "INR",
    }
    assert checkout.redirect_url is None


async def test_an_amount_below_the_minimum_is_refused_before_and_by_the_gateway(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    assert razorpay.minimum_charge["INR"] == 100
    check_amount(razorpay, 100, "INR")
    with pytest.raises(InvalidRequest) as below:
        check_amount(razorpay, 99, "inr")
    assert below.value.code == "amount_below_minimum" and below.value.extra["minimum"] == 100
    with pytest.raises(InvalidRequest) as currency:
        check_amount(razorpay, 10_000, "EUR")
    assert currency.value.code == "currency_not_supported"

    with pytest.raises(GatewayRefused) as refused:  # the gateway itself refuses it too
        await razorpay.create_payment(reference="ord_X", amount=99, currency="INR", description="x")
    assert "at least INR 1.00" in refused.value.message
    assert refused.value.retryable is False and refused.value.status == 502
    assert refused.value.body()["error"]["type"] == "gateway_error"
    assert api.orders == {}


async def test_a_receipt_longer_than_razorpay_takes_is_refused_without_a_call(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    with pytest.raises(InvalidRequest):
        await razorpay.create_payment(reference="o" * 41, amount=1000, currency="INR", description="x")
    assert api.requests == []


# --- payment status --------------------------------------------------------------------------------------------


async def test_a_captured_payment_is_paid_with_method_brand_and_last4(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    order_id = await new_order(razorpay)
    payment = api.pay(order_id, status="captured", network="Visa", last4="1111")

    status = await razorpay.fetch_payment(order_id)

    assert status.paid and status.status is PaymentStatus.CAPTURED
    assert (status.amount, status.currency, status.amount_paid) == (49900, "INR", 49900)
    assert status.reference == "ord_TEST0001"
    chosen = status.payment
    assert chosen is not None
    assert chosen.payment_id == payment["id"]
    assert (chosen.method, chosen.card_brand, chosen.card_last4) == ("card", "Visa", "1111")
    assert (chosen.amount, chosen.currency) == (49900, "INR")
    # the card came from the payment fetched with its card expanded, as Razorpay documents
    [expanded] = api.calls("GET", f"/v1/payments/{payment['id']}")
    assert ("expand[]", "card") in expanded.query


async def test_an_authorized_payment_is_not_paid_until_captured(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    order_id = await new_order(razorpay)
    payment = api.pay(order_id, status="authorized")

    authorized = await razorpay.fetch_payment(order_id)
    assert authorized.status is PaymentStatus.AUTHORIZED
    assert not authorized.paid and authorized.amount_paid == 0 and authorized.captured_payments == ()

    api.capture(payment["id"])
    captured = await razorpay.fetch_payment(order_id)
    assert captured.paid and captured.amount_paid == 49900


async def test_a_failed_try_then_a_captured_one_is_paid_and_both_are_reported(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    order_id = await new_order(razorpay)

    assert (await razorpay.fetch_payment(order_id)).status is PaymentStatus.CREATED
    failed = api.pay(order_id, status="failed", error_description="Your payment was declined by the bank.")
    only_failed = await razorpay.fetch_payment(order_id)
    assert only_failed.status is PaymentStatus.FAILED and not only_failed.paid
    assert only_failed.payment is not None
    assert only_failed.payment.failure_reason == "Your payment was declined by the bank. (BAD_REQUEST_ERROR)"

    captured = api.pay(order_id, status="captured", method="upi")
    status = await razorpay.fetch_payment(order_id)
    assert status.paid and status.payment is not None and status.payment.payment_id == captured["id"]
    assert status.payment.method == "upi" and status.payment.card_last4 is None
    assert {p.payment_id for p in status.payments} == {failed["id"], captured["id"]}


async def test_a_second_captured_payment_on_one_order_is_visible(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    order_id = await new_order(razorpay)
    api.pay(order_id, status="captured")
    api.pay(order_id, status="captured")
    status = await razorpay.fetch_payment(order_id)
    assert len(status.captured_payments) == 2 and status.amount_paid == 2 * 49900


async def test_a_captured_payment_with_another_amount_reports_what_was_captured(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    order_id = await new_order(razorpay)
    api.pay(order_id, status="captured", amount=100, currency="INR")
    status = await razorpay.fetch_payment(order_id)
    assert status.paid and status.amount == 49900 and status.amount_paid == 100


async def test_an_unknown_order_is_a_refused_gateway_call(razorpay: RazorpayGateway) -> None:
    with pytest.raises(GatewayRefused, match="does not exist"):
        await razorpay.fetch_payment("order_DoesNotExist00")


# --- the client callback -------------------------------------------------------------------------------------


async def test_the_payment_signature_is_checked_over_the_order_id_we_stored(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    ours = await new_order(razorpay, reference="ord_OURS")
    other = await new_order(razorpay, reference="ord_OTHER")
    payment_ours = api.pay(ours)["id"]
    payment_other = api.pay(other)["id"]
    good = fake.payment_signature(ours, payment_ours)
    # the signature made as Razorpay documents is the one the SDK's own Utility accepts
    assert sdk_utility().verify_payment_signature(
        {"razorpay_order_id": ours, "razorpay_payment_id": payment_ours, "razorpay_signature": good}
    )

    verified = razorpay.verify_callback(
        gateway_order_id=ours,
        fields={"razorpay_order_id": ours, "razorpay_payment_id": payment_ours, "razorpay_signature": good},
    )
    assert (verified.gateway_order_id, verified.payment_id) == (ours, payment_ours)
    # the client's razorpay_order_id is optional: the stored one is what counts
    assert razorpay.verify_callback(
        gateway_order_id=ours, fields={"razorpay_payment_id": payment_ours, "razorpay_signature": good}
    )

    other_signature = fake.payment_signature(other, payment_other)  # genuine, for another order
    attempts = [
        # a client naming another order with that order's genuine signature
        {
            "razorpay_order_id": other,
            "razorpay_payment_id": payment_other,
            "razorpay_signature": other_signature,
        },
        # the same, without naming the order: checked over ours, it fails
        {"razorpay_payment_id": payment_other, "razorpay_signature": other_signature},
        # our order, a tampered payment id
        {"razorpay_order_id": ours, "razorpay_payment_id": payment_other, "razorpay_signature": good},
        # signed with the wrong secret
        {
            "razorpay_order_id": ours,
            "razorpay_payment_id": payment_ours,
            "razorpay_signature": fake.payment_signature(ours, payment_ours, "not-the-secret"),
        },
        {"razorpay_order_id": ours, "razorpay_payment_id": payment_ours, "razorpay_signature": "0" * 64},
        {"razorpay_order_id": ours, "razorpay_payment_id": payment_ours, "razorpay_signature": "é" * 64},
        {"razorpay_order_id": ours, "razorpay_payment_id": payment_ours},
        {"razorpay_order_id": ours, "razorpay_signature": good},
        {},
    ]
    for fields in attempts:
        with pytest.raises(InvalidSignature) as refused:
            razorpay.verify_callback(gateway_order_id=ours, fields=fields)
        assert refused.value.status == 400 and refused.value.code == "invalid_signature"


# --- webhooks --------------------------------------------------------------------------------------------------


def captured_payment(order_id: str = "order_Ab12Cd34Ef56Gh", amount: int = 49900) -> dict[str, Any]:
    return {
        "id": "pay_DESlfW9H8K9uqM",
        "entity": "payment",
        "amount": amount,
        "currency": "INR",
        "status": "captured",
        "order_id": order_id,
        "method": "card",
        "amount_refunded": 0,
        "captured": True,
        "card_id": "card_DESlfW9JD6ZZqt",
        "card": {
            "id": "card_DESlfW9JD6ZZqt",
            "entity": "card",
            "last4": "1111",
            "network": "Visa",
            "type": "credit",
        },
        "notes": [],
        "error_code": None,
        "error_description": None,
        "created_at": 1567674599,
    }


async def test_a_signed_payment_captured_webhook_is_normalised(razorpay: RazorpayGateway) -> None:
    body = fake.webhook("payment.captured", payment=captured_payment())
    headers, raw = fake.signed(body, event_id="KfaVkcJBz2EfBD")
    # what the fake signs is what the SDK's own webhook check accepts
    assert sdk_utility().verify_webhook_signature(
        raw.decode(), headers["X-Razorpay-Signature"], fake.WEBHOOK_SECRET
    )

    event = razorpay.parse_webhook(headers, raw)

    assert event.gateway == "razorpay" and event.event_id == "KfaVkcJBz2EfBD"
    assert event.type is EventType.PAYMENT_CAPTURED and event.raw_type == "payment.captured"
    assert (event.gateway_order_id, event.payment_id) == ("order_Ab12Cd34Ef56Gh", "pay_DESlfW9H8K9uqM")
    assert (event.amount, event.currency, event.status) == (49900, "INR", "captured")
    assert (event.method, event.card_brand, event.card_last4) == ("card", "Visa", "1111")
    assert event.payload == body
    # header names are case-insensitive, as HTTP says
    lower = {key.lower(): value for key, value in headers.items()}
    assert razorpay.parse_webhook(lower, raw).event_id == "KfaVkcJBz2EfBD"


async def test_forged_tampered_and_wrongly_signed_webhooks_are_refused(razorpay: RazorpayGateway) -> None:
    body = fake.webhook("payment.captured", payment=captured_payment())
    headers, raw = fake.signed(body)
    tampered = raw.replace(b"49900", b"99900")
    assert tampered != raw
    wrong_secret, _ = fake.signed(body, secret="whsec_someone_else")
    unsigned = {k: v for k, v in headers.items() if k != "X-Razorpay-Signature"}
    cases = [
        (headers, tampered),
        (wrong_secret, raw),
        (unsigned, raw),
        ({**headers, "X-Razorpay-Signature": ""}, raw),
        ({**headers, "X-Razorpay-Signature": "ü" * 64}, raw),
        (
            {**headers, "X-Razorpay-Signature": fake.hmac_hex(fake.KEY_SECRET, raw)},
            raw,
        ),  # key secret, not webhook
        (headers, b"\xff\xfe" + raw),
    ]
    for case_headers, case_body in cases:
        with pytest.raises(InvalidSignature):
            razorpay.parse_webhook(case_headers, case_body)


async def test_a_signed_body_that_is_not_an_event_is_a_clear_error(razorpay: RazorpayGateway) -> None:
    for raw in (b"not json", b"[1, 2]", b'{"no": "event"}'):
        headers, _ = fake.signed(raw)
        with pytest.raises(InvalidRequest) as refused:
            razorpay.parse_webhook(headers, raw)
        assert refused.value.code == "invalid_webhook"


async def test_without_an_event_id_header_the_same_body_is_the_same_event(razorpay: RazorpayGateway) -> None:
    headers, raw = fake.signed(fake.webhook("payment.captured", payment=captured_payment()))
    del headers["x-razorpay-event-id"]
    first, again = razorpay.parse_webhook(headers, raw), razorpay.parse_webhook(headers, raw)
    assert first.event_id == again.event_id and first.event_id.startswith("sha256:")


@pytest.mark.parametrize(
    ("name", "entities", "expected"),
    [
        (
            "payment.authorized",
            {"payment": {**captured_payment(), "status": "authorized", "captured": False}},
            EventType.PAYMENT_AUTHORIZED,
        ),
        (
            "payment.captured",
            {"payment": {**captured_payment(), "status": "authorized", "captured": False}},
            EventType.OTHER,
        ),
        (
            "order.paid",
            {
                "payment": captured_payment(),
                "order": {
                    "id": "order_Ab12Cd34Ef56Gh",
                    "entity": "order",
                    "amount": 49900,
                    "amount_paid": 49900,
                    "currency": "INR",
                    "receipt": "ord_RECEIPT",
                    "status": "paid",
                },
            },
            EventType.PAYMENT_CAPTURED,
        ),
        (
            "payment.dispute.created",
            {
                "payment": captured_payment(),
                "dispute": {
                    "id": "disp_AHfqOvkldwsbqt",
                    "entity": "dispute",
                    "payment_id": "pay_DESlfW9H8K9uqM",
                    "amount": 49900,
                    "currency": "INR",
                    "amount_deducted": 0,
                    "status": "open",
                    "phase": "chargeback",
                },
            },
            EventType.DISPUTE_OPENED,
        ),
        (
            "payment.dispute.lost",
            {
                "payment": captured_payment(),
                "dispute": {
                    "id": "disp_AHfqOvkldwsbqt",
                    "entity": "dispute",
                    "payment_id": "pay_DESlfW9H8K9uqM",
                    "amount": 49900,
                    "currency": "INR",
                    "amount_deducted": 49900,
                    "status": "lost",
                    "phase": "chargeback",
                },
            },
            EventType.DISPUTE_LOST,
        ),
        (
            "payment.dispute.won",
            {
                "payment": captured_payment(),
                "dispute": {
                    "id": "disp_AHfqOvkldwsbqt",
                    "entity": "dispute",
                    "payment_id": "pay_DESlfW9H8K9uqM",
                    "amount": 49900,
                    "currency": "INR",
                    "amount_deducted": 0,
                    "status": "won",
                    "phase": "chargeback",
                },
            },
            EventType.DISPUTE_WON,
        ),
        (
            "payment.dispute.closed",
            {
                "payment": captured_payment(),
                "dispute": {
                    "id": "disp_AHfqOvkldwsbqt",
                    "entity": "dispute",
                    "payment_id": "pay_DESlfW9H8K9uqM",
                    "amount": 49900,
                    "currency": "INR",
                    "amount_deducted": 0,
                    "status": "closed",
                    "phase": "fraud",
                },
            },
            EventType.DISPUTE_WON,
        ),
        (
            "payment.dispute.closed",
            {
                "payment": captured_payment(),
                "dispute": {
                    "id": "disp_AHfqOvkldwsbqt",
                    "entity": "dispute",
                    "payment_id": "pay_DESlfW9H8K9uqM",
                    "amount": 49900,
                    "currency": "INR",
                    "amount_deducted": 49900,
                    "status": "closed",
                    "phase": "chargeback",
                },
            },
            EventType.DISPUTE_LOST,
        ),
        ("invoice.paid", {"invoice": {"id": "inv_1"}}, EventType.OTHER),
    ],
)
async def test_event_types_are_normalised(
    razorpay: RazorpayGateway, name: str, entities: dict[str, dict[str, Any]], expected: EventType
) -> None:
    headers, raw = fake.signed(fake.webhook(name, **entities))
    event = razorpay.parse_webhook(headers, raw)
    assert event.type is expected and event.raw_type == name
    if "order" in entities:
        assert event.reference == "ord_RECEIPT" and event.amount == 49900
    if "dispute" in entities:
        assert event.dispute_id == "disp_AHfqOvkldwsbqt" and event.payment_id == "pay_DESlfW9H8K9uqM"
        assert event.gateway_order_id == "order_Ab12Cd34Ef56Gh"


async def test_failed_payment_and_refund_events_carry_the_reason_and_our_refund_id(
    razorpay: RazorpayGateway,
) -> None:
    failed = {
        **captured_payment(),
        "status": "failed",
        "captured": False,
        "error_code": "BAD_REQUEST_ERROR",
        "error_description": "Payment failed due to incorrect OTP",
        "error_reason": "incorrect_otp",
    }
    headers, raw = fake.signed(fake.webhook("payment.failed", payment=failed))
    event = razorpay.parse_webhook(headers, raw)
    assert (
        event.type is EventType.PAYMENT_FAILED
        and event.failure_reason == "Payment failed due to incorrect OTP"
    )

    refund = {
        "id": "rfnd_FP8QHiV938haTz",
        "entity": "refund",
        "amount": 20000,
        "currency": "INR",
        "payment_id": "pay_DESlfW9H8K9uqM",
        "notes": {"refund_id": "rfd_01JD3REFUND"},
        "status": "processed",
        "speed_processed": "normal",
    }
    for name, expected in [
        ("refund.processed", EventType.REFUND_PROCESSED),
        ("refund.failed", EventType.REFUND_FAILED),
        ("refund.created", EventType.REFUND_CREATED),
    ]:
        headers, raw = fake.signed(fake.webhook(name, refund=refund, payment=captured_payment()))
        event = razorpay.parse_webhook(headers, raw)
        assert event.type is expected
        assert (event.refund_id, event.refund_reference, event.payment_id) == (
            "rfnd_FP8QHiV938haTz",
            "rfd_01JD3REFUND",
            "pay_DESlfW9H8K9uqM",
        )
        assert (event.amount, event.currency) == (20000, "INR")


# --- refunds ---------------------------------------------------------------------------------------------------


async def captured(gateway: RazorpayGateway, api: FakeRazorpay, amount: int = 49900) -> str:
    order_id = await new_order(gateway, amount=amount)
    return str(api.pay(order_id)["id"])


async def test_a_refund_sends_the_idempotency_header_and_a_retry_does_not_refund_twice(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    payment_id = await captured(razorpay, api)

    refund = await razorpay.refund(
        payment_id=payment_id,
        amount=20000,
        currency="INR",
        idempotency_key="rfd_01JD3REFUND0001",
        reason="asked",
    )
    again = await razorpay.refund(
        payment_id=payment_id,
        amount=20000,
        currency="INR",
        idempotency_key="rfd_01JD3REFUND0001",
        reason="asked",
    )

    calls = api.calls("POST", f"/v1/payments/{payment_id}/refund")
    assert len(calls) == 2
    for call in calls:
        assert call.header("x-refund-idempotency") == "rfd_01JD3REFUND0001"
        assert call.basic_auth == (fake.KEY_ID, fake.KEY_SECRET)
        assert call.json == {
            "amount": 20000,
            "notes": {"refund_id": "rfd_01JD3REFUND0001", "reason": "asked"},
        }
    assert refund == again
    assert refund.refund_id.startswith("rfnd_") and refund.status is RefundStatus.PROCESSED
    assert (refund.payment_id, refund.amount, refund.currency) == (payment_id, 20000, "INR")
    assert refund.reference == "rfd_01JD3REFUND0001"
    assert len(api.refunds) == 1 and api.payments[payment_id]["amount_refunded"] == 20000

    # the same key for another refund is refused, and refunds nothing
    with pytest.raises(GatewayRefused, match="same idempotency key"):
        await razorpay.refund(
            payment_id=payment_id, amount=5000, currency="INR", idempotency_key="rfd_01JD3REFUND0001"
        )
    assert len(api.refunds) == 1


async def test_partial_refunds_add_up_and_more_than_is_left_is_refused(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    payment_id = await captured(razorpay, api, amount=10000)
    await razorpay.refund(
        payment_id=payment_id, amount=4000, currency="INR", idempotency_key="rfd_PARTIAL_0001"
    )
    await razorpay.refund(
        payment_id=payment_id, amount=4000, currency="INR", idempotency_key="rfd_PARTIAL_0002"
    )
    with pytest.raises(GatewayRefused, match="greater than amount captured"):
        await razorpay.refund(
            payment_id=payment_id, amount=4000, currency="INR", idempotency_key="rfd_PARTIAL_0003"
        )
    assert api.payments[payment_id]["amount_refunded"] == 8000 and len(api.refunds) == 2


async def test_an_idempotency_key_razorpay_would_refuse_is_refused_without_a_call(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    for key in ("short", "has space 12345", "semi;colon12345"):
        with pytest.raises(InvalidRequest):
            await razorpay.refund(payment_id="pay_X", amount=100, currency="INR", idempotency_key=key)
    assert api.requests == []


async def test_a_gateway_error_during_a_refund_retried_with_the_same_key_refunds_once(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    payment_id = await captured(razorpay, api)
    # the refund is made, but its answer is lost on the way back
    api.lose_next_answer(502)
    with pytest.raises(GatewayUnavailable) as lost:
        await razorpay.refund(
            payment_id=payment_id, amount=49900, currency="INR", idempotency_key="rfd_LOST_ANSWER1"
        )
    assert lost.value.retryable
    assert len(api.refunds) == 1
    # the gateway fails outright once
    api.fail_next(500, {"error": {"code": "SERVER_ERROR", "description": "The server encountered an error."}})
    with pytest.raises(GatewayUnavailable):
        await razorpay.refund(
            payment_id=payment_id, amount=49900, currency="INR", idempotency_key="rfd_LOST_ANSWER1"
        )

    refund = await razorpay.refund(
        payment_id=payment_id, amount=49900, currency="INR", idempotency_key="rfd_LOST_ANSWER1"
    )
    assert refund.status is RefundStatus.PROCESSED
    assert len(api.refunds) == 1 and api.payments[payment_id]["amount_refunded"] == 49900


# --- SDK errors and threads ------------------------------------------------------------------------------------


async def test_sdk_and_transport_errors_become_gateway_errors(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    api.fail_next(500, {"error": {"code": "SERVER_ERROR", "description": "The server encountered an error."}})
    with pytest.raises(GatewayUnavailable, match="server encountered"):
        await new_order(razorpay)
    api.fail_next(502, raw=b"<html>502 Bad Gateway</html>")
    with pytest.raises(GatewayUnavailable, match="unreadable"):
        await new_order(razorpay)
    api.fail_next(200, {"unexpected": "shape"})
    with pytest.raises(GatewayUnavailable):
        await new_order(razorpay)
    api.fail_next(409, {"error": {"code": "BAD_REQUEST_ERROR", "description": "Request is being processed"}})
    with pytest.raises(GatewayUnavailable, match="HTTP 409") as conflict:  # Razorpay: retry it
        await new_order(razorpay)
    assert conflict.value.retryable
    api.fail_next(503, {"error": {"code": "BAD_REQUEST_ERROR", "description": "Service unavailable"}})
    with pytest.raises(GatewayUnavailable, match="HTTP 503"):
        await new_order(razorpay)
    api.fail_next(400, {"error": {"code": "GATEWAY_ERROR", "description": "Issuer bank down"}})
    with pytest.raises(GatewayUnavailable, match="Issuer bank down"):
        await razorpay.fetch_payment("order_Whatever000000")


async def test_wrong_keys_are_a_refused_call(razorpay_api: Api) -> None:
    _, url = razorpay_api
    gateway = RazorpayGateway(key_id=fake.KEY_ID, key_secret="wrong", webhook_secret="w", api_base=url)
    try:
        with pytest.raises(GatewayRefused, match="Authentication failed"):
            await new_order(gateway)
    finally:
        await gateway.aclose()


async def test_an_unreachable_or_slow_gateway_is_unavailable(razorpay_api: Api) -> None:
    api, url = razorpay_api
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    unreachable = RazorpayGateway(
        key_id=fake.KEY_ID, key_secret=fake.KEY_SECRET, webhook_secret="w", api_base=closed
    )
    slow = RazorpayGateway(
        key_id=fake.KEY_ID, key_secret=fake.KEY_SECRET, webhook_secret="w", api_base=url, timeout=0.2
    )
    try:
        with pytest.raises(GatewayUnavailable, match="could not be reached"):
            await new_order(unreachable)
        api.delay = 1.0
        with pytest.raises(GatewayUnavailable, match="Timeout"):
            await new_order(slow)
    finally:
        await unreachable.aclose()
        await slow.aclose()


async def test_the_synchronous_sdk_never_blocks_the_event_loop(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    order_id = await new_order(razorpay)
    api.delay = 0.4
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    # two calls at once, each answered after 0.4 s, while the loop keeps ticking
    first, second = await asyncio.gather(razorpay.fetch_payment(order_id), razorpay.fetch_payment(order_id))
    done.set()
    await ticker
    assert first.gateway_order_id == second.gateway_order_id == order_id
    assert ticks >= 10  # a blocked loop would not have ticked while the SDK waited


# --- reconciliation listing ------------------------------------------------------------------------------------


async def test_orders_over_a_period_are_listed_newest_first_across_pages(
    razorpay: RazorpayGateway, razorpay_api: Api
) -> None:
    api, _ = razorpay_api
    now = datetime.now(UTC)
    base = int(now.timestamp()) - 3600
    with api.lock:
        for index in range(130):
            order_id = f"order_{index:014d}"
            api.orders[order_id] = {
                "id": order_id,
                "entity": "order",
                "amount": 1000 + index,
                "amount_paid": 1000 + index if index % 2 else 0,
                "amount_due": 0 if index % 2 else 1000 + index,
                "currency": "INR",
                "receipt": f"ord_{index}",
                "status": "paid" if index % 2 else "created",
                "attempts": index % 2,
                "notes": [],
                "created_at": base + index,
            }
        api.orders["order_OUTSIDE0000000"] = {
            **api.orders["order_00000000000000"],
            "id": "order_OUTSIDE0000000",
            "created_at": base - 7200,
        }

    listed = await razorpay.list_orders(since=now - timedelta(hours=2), until=now)

    assert len(listed) == 130
    assert [o.gateway_order_id for o in listed[:2]] == ["order_00000000000129", "order_00000000000128"]
    assert "order_OUTSIDE0000000" not in {o.gateway_order_id for o in listed}
    paid = listed[0]
    assert paid.status is PaymentStatus.CAPTURED and paid.amount_paid == 1129 and paid.reference == "ord_129"
    assert listed[1].status is PaymentStatus.CREATED and not listed[1].paid
    pages = api.calls("GET", "/v1/orders")
    assert [dict(p.query)["skip"] for p in pages] == ["0", "100"]
    assert all(dict(p.query)["count"] == "100" for p in pages)

    assert len(await razorpay.list_orders(since=now - timedelta(hours=2), until=now, limit=5)) == 5


async def test_the_adapter_never_shows_its_secrets(razorpay: RazorpayGateway) -> None:
    assert fake.KEY_SECRET not in repr(razorpay) and fake.WEBHOOK_SECRET not in repr(razorpay)
    assert json.dumps(repr(razorpay))
