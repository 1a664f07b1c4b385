"""The sandbox gateway on both engines: orders made by ``create_payment``, paid on the hosted checkout page over
HTTP (the ASGI app), callbacks signed like Razorpay's and checked with the razorpay SDK's own utility, webhooks
queued and signed, refunds idempotent on their key, and the sandbox's own view of it all."""

from __future__ import annotations

import asyncio
import html
import json
import re
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import razorpay
import requests
from sqlalchemy import select

from prepaid.db import Database, utcnow
from prepaid.errors import InvalidRequest
from prepaid.payments.gateways import (
    EventType,
    GatewayRefused,
    GatewayUnavailable,
    InvalidSignature,
    PaymentStatus,
    RefundStatus,
    build_gateways,
)
from prepaid.payments.gateways.sandbox import SandboxConfig, SandboxGateway
from prepaid.payments.gateways.sandbox_models import (
    SandboxOrder,
    SandboxPayment,
    SandboxRefund,
    SandboxWebhook,
)
from prepaid.settings import Settings

PAYS, DECLINED, THREE_DS = "4111 1111 1111 1111", "4000 0000 0000 0002", "4000 0025 0000 3155"


@pytest.fixture
def gateway(app: Any) -> SandboxGateway:
    built = build_gateways(app.state.settings, database=app.state.db)["sandbox"]
    assert isinstance(built, SandboxGateway)
    return built


@pytest.fixture
def config(settings: Settings) -> SandboxConfig:
    return SandboxConfig.from_settings(settings)


def new_reference() -> str:
    return f"att_test{secrets.token_hex(8)}"


async def open_checkout(client: httpx.AsyncClient, reference: str) -> str:
    page = await client.get(f"/sandbox/checkout/{reference}")
    assert page.status_code == 200, page.text
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match is not None
    return html.unescape(match.group(1))


async def pay_card(
    client: httpx.AsyncClient,
    reference: str,
    number: str,
    *,
    expiry: str = "12/39",
    cvc: str = "123",
    name: str = "Asha Rao",
    token: str | None = None,
) -> httpx.Response:
    token = token if token is not None else await open_checkout(client, reference)
    data = {
        "csrf_token": token,
        "method": "card",
        "card_number": number,
        "card_expiry": expiry,
        "card_cvc": cvc,
        "card_name": name,
    }
    return await client.post(f"/sandbox/checkout/{reference}", data=data)


async def pay_upi(client: httpx.AsyncClient, reference: str, vpa: str) -> httpx.Response:
    token = await open_checkout(client, reference)
    data = {"csrf_token": token, "method": "upi", "vpa": vpa}
    return await client.post(f"/sandbox/checkout/{reference}", data=data)


def callback_fields(response: httpx.Response, settings: Settings, reference: str) -> dict[str, str]:
    assert response.status_code == 303, response.text
    location = urlsplit(response.headers["location"])
    assert (
        f"{location.scheme}://{location.netloc}{location.path}"
        == f"{settings.base_url}/orders/{reference}/return"
    )
    return dict(parse_qsl(location.query))


async def rows(db: Database, model: Any, **where: Any) -> list[Any]:
    async with db.transaction(write=False) as session:
        query = select(model).where(*(getattr(model, key) == value for key, value in where.items()))
        return list(await session.scalars(query))


def sdk_utility(secret: str) -> Any:
    return razorpay.Client(session=requests.Session(), auth=("rzp_test_sandbox", secret)).utility


# --- creating -------------------------------------------------------------------------------------------------


async def test_create_payment_opens_an_order_at_the_sandbox(
    gateway: SandboxGateway, settings: Settings
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(
        reference=reference, amount=49_900, currency="inr", description="Starter: 500 credits"
    )
    assert checkout.gateway == "sandbox"
    assert checkout.gateway_order_id.startswith("order_sbx_")
    assert (checkout.reference, checkout.amount, checkout.currency) == (reference, 49_900, "INR")
    assert checkout.redirect_url == f"{settings.base_url}/sandbox/checkout/{reference}"
    assert checkout.client["order_id"] == checkout.gateway_order_id
    assert checkout.client["key_id"] == "rzp_test_sandbox"

    order = await gateway.fetch_payment(checkout.gateway_order_id)
    assert (order.gateway, order.reference, order.amount, order.currency) == (
        "sandbox",
        reference,
        49_900,
        "INR",
    )
    assert order.status is PaymentStatus.CREATED and not order.paid and order.payments == ()

    again = await gateway.create_payment(reference=reference, amount=49_900, currency="INR", description="x")
    assert again.gateway_order_id == checkout.gateway_order_id  # the same receipt is the same order
    with pytest.raises(GatewayRefused):
        await gateway.create_payment(reference=reference, amount=50_000, currency="INR", description="x")


@pytest.mark.parametrize(
    ("amount", "currency", "error"),
    [(99, "INR", GatewayRefused), (100, "XXX", GatewayRefused), (0, "USD", GatewayRefused)],
)
async def test_create_payment_refuses_what_razorpay_refuses(
    gateway: SandboxGateway, db: Database, amount: int, currency: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await gateway.create_payment(
            reference=new_reference(), amount=amount, currency=currency, description="x"
        )
    with pytest.raises(InvalidRequest):
        await gateway.create_payment(reference="../../etc", amount=100, currency="INR", description="x")
    assert await rows(db, SandboxOrder) == []
    assert gateway.minimum_charge["INR"] == 100 and gateway.minimum_charge["JPY"] == 1


async def test_fetching_an_unknown_order_is_refused(gateway: SandboxGateway) -> None:
    with pytest.raises(GatewayRefused):
        await gateway.fetch_payment("order_sbx_nothing")


# --- paying on the hosted page ----------------------------------------------------------------------------------


async def test_the_checkout_page_is_a_labelled_form_that_works_offline(
    gateway: SandboxGateway, client: httpx.AsyncClient
) -> None:
    reference = new_reference()
    await gateway.create_payment(reference=reference, amount=12_345, currency="INR", description="Pro pack")
    page = await client.get(f"/sandbox/checkout/{reference}")
    assert page.status_code == 200
    assert "INR 123.45" in page.text and "Pro pack" in page.text
    for field in ("card_number", "card_expiry", "card_cvc", "card_name", "vpa"):
        assert f'<label for="{field}">' in page.text and f'id="{field}"' in page.text
    assert "http://" not in page.text.replace("http://testserver", "") and "https://" not in page.text
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert "prepaid_sandbox=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    css = await client.get("/static/sandbox/checkout.css")
    assert css.status_code == 200 and "sbx-card" in css.text

    missing = await client.get("/sandbox/checkout/att_unknown")
    assert missing.status_code == 404 and "not found" in missing.text.lower()


async def test_a_good_card_pays_and_redirects_with_a_signed_callback(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    settings: Settings,
    config: SandboxConfig,
    db: Database,
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(
        reference=reference, amount=49_900, currency="INR", description="x"
    )
    fields = callback_fields(await pay_card(client, reference, PAYS), settings, reference)
    assert fields["razorpay_order_id"] == checkout.gateway_order_id
    assert fields["razorpay_payment_id"].startswith("pay_sbx_")

    verified = gateway.verify_callback(gateway_order_id=checkout.gateway_order_id, fields=fields)
    assert (verified.gateway, verified.payment_id) == ("sandbox", fields["razorpay_payment_id"])
    # the signature is Razorpay's: the SDK's own check accepts it with the sandbox key secret
    assert sdk_utility(config.key_secret).verify_payment_signature(dict(fields)) is True

    order = await gateway.fetch_payment(checkout.gateway_order_id)
    assert order.paid and order.amount_paid == 49_900 and order.raw_status == "paid"
    payment = order.payment
    assert payment is not None and payment.captured
    assert (payment.method, payment.card_brand, payment.card_last4) == ("card", "Visa", "1111")

    webhooks = await rows(db, SandboxWebhook, order_id=checkout.gateway_order_id)
    assert [row.event for row in sorted(webhooks, key=lambda row: row.seq)] == [
        "payment.captured",
        "order.paid",
    ]
    assert all(
        row.status == "pending" and row.url == f"{settings.base_url}/v1/webhooks/sandbox" for row in webhooks
    )

    # a paid order takes no second payment through the page
    again = await client.get(f"/sandbox/checkout/{reference}")
    assert again.status_code == 200 and "Already paid" in again.text


async def test_forged_callbacks_do_not_verify(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    other = await gateway.create_payment(
        reference=new_reference(), amount=100, currency="INR", description="x"
    )
    fields = callback_fields(await pay_card(client, reference, PAYS), settings, reference)
    forged = [
        fields | {"razorpay_signature": "0" * 64},
        fields | {"razorpay_payment_id": "pay_sbx_someoneelse"},
        {k: v for k, v in fields.items() if k != "razorpay_signature"},
        fields | {"razorpay_signature": "é" * 64},  # not even ASCII
    ]
    for bad in forged:
        with pytest.raises(InvalidSignature):
            gateway.verify_callback(gateway_order_id=checkout.gateway_order_id, fields=bad)
    # checked over the order id WE stored: the same fields for another attempt fail
    with pytest.raises(InvalidSignature):
        gateway.verify_callback(gateway_order_id=other.gateway_order_id, fields=fields)
    # a signature made with another server's secret fails
    stranger = SandboxConfig.from_settings(
        settings.model_copy(update={"secret_key": secrets.token_urlsafe(48)})
    )
    signature = stranger.payment_signature(checkout.gateway_order_id, fields["razorpay_payment_id"])
    with pytest.raises(InvalidSignature):
        gateway.verify_callback(
            gateway_order_id=checkout.gateway_order_id, fields=fields | {"razorpay_signature": signature}
        )


async def test_a_declined_card_fails_with_a_reason_and_the_order_can_still_be_paid(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings, db: Database
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(
        reference=reference, amount=2_500, currency="USD", description="x"
    )
    fields = callback_fields(await pay_card(client, reference, DECLINED), settings, reference)
    assert fields["error[reason]"] == "payment_declined" and fields["error[code]"] == "BAD_REQUEST_ERROR"
    metadata = json.loads(fields["error[metadata]"])
    assert metadata["order_id"] == checkout.gateway_order_id

    order = await gateway.fetch_payment(checkout.gateway_order_id)
    assert order.status is PaymentStatus.FAILED and not order.paid and order.raw_status == "attempted"
    assert order.payment is not None and "declined" in (order.payment.failure_reason or "")
    assert [row.event for row in await rows(db, SandboxWebhook, order_id=checkout.gateway_order_id)] == [
        "payment.failed"
    ]

    # Razorpay lets the buyer try again on the same order
    callback_fields(await pay_card(client, reference, PAYS), settings, reference)
    order = await gateway.fetch_payment(checkout.gateway_order_id)
    assert order.paid and len(order.payments) == 2 and len(order.captured_payments) == 1


@pytest.mark.parametrize("decision", ["approve", "deny"])
async def test_the_authentication_card_settles_only_after_the_extra_step(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings, db: Database, decision: str
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(
        reference=reference, amount=9_900, currency="INR", description="x"
    )
    response = await pay_card(client, reference, THREE_DS)
    assert response.status_code == 303
    step = response.headers["location"]
    assert step.startswith(f"{settings.base_url}/sandbox/checkout/{reference}/authenticate/pay_sbx_")

    pending = await gateway.fetch_payment(checkout.gateway_order_id)
    assert pending.status is PaymentStatus.PENDING and not pending.paid
    assert await rows(db, SandboxWebhook, order_id=checkout.gateway_order_id) == []  # nothing settled yet

    path = urlsplit(step).path
    page = await client.get(path)
    assert page.status_code == 200 and "3155" in page.text and "Approve" in page.text
    token = html.unescape(re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1))  # type: ignore[union-attr]
    refused = await client.post(path, data={"csrf_token": "forged", "decision": "approve"})
    assert refused.status_code == 403
    answered = await client.post(path, data={"csrf_token": token, "decision": decision})
    fields = callback_fields(answered, settings, reference)
    order = await gateway.fetch_payment(checkout.gateway_order_id)
    events = [row.event for row in await rows(db, SandboxWebhook, order_id=checkout.gateway_order_id)]
    if decision == "approve":
        gateway.verify_callback(gateway_order_id=checkout.gateway_order_id, fields=fields)
        assert order.paid and sorted(events) == ["order.paid", "payment.captured"]
    else:
        assert fields["error[reason]"] == "authentication_failed"
        assert order.status is PaymentStatus.FAILED and events == ["payment.failed"]
    # the step is answered once
    late = await client.post(path, data={"csrf_token": token, "decision": "approve"})
    assert late.status_code == 409


@pytest.mark.parametrize(("vpa", "paid"), [("success@razorpay", True), ("failure@razorpay", False)])
async def test_upi_ids(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings, vpa: str, paid: bool
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    fields = callback_fields(await pay_upi(client, reference, vpa), settings, reference)
    order = await gateway.fetch_payment(checkout.gateway_order_id)
    assert order.paid is paid
    assert order.payment is not None and order.payment.method == "upi"
    assert ("razorpay_signature" in fields) is paid


async def test_the_form_is_csrf_protected_per_checkout(
    gateway: SandboxGateway, client: httpx.AsyncClient, app: Any, db: Database
) -> None:
    reference, other = new_reference(), new_reference()
    await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    await gateway.create_payment(reference=other, amount=100, currency="INR", description="x")
    other_token = await open_checkout(client, other)
    token = await open_checkout(client, reference)

    assert (await pay_card(client, reference, PAYS, token="")).status_code == 403
    assert (
        await pay_card(client, reference, PAYS, token=other_token)
    ).status_code == 403  # another checkout's
    # the right token from another browser (no nonce cookie) is refused too
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as stranger:
        assert (await pay_card(stranger, reference, PAYS, token=token)).status_code == 403
    assert await rows(db, SandboxPayment) == []
    assert (await pay_card(client, reference, PAYS, token=token)).status_code == 303


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"card_number": "4111 1111 1111 1112"}, "not valid"),
        ({"card_number": "5555 5555 5555 4444"}, "only its test cards"),
        ({"card_number": ""}, "Enter the card number"),
        ({"card_expiry": "01/20"}, "expired"),
        ({"card_expiry": "13/39"}, "month"),
        ({"card_expiry": "soon"}, "MM/YY"),
        ({"card_cvc": "12"}, "CVC"),
        ({"card_name": " "}, "name on the card"),
        ({"method": "upi", "vpa": "not-an-upi-id"}, "name@bank"),
        ({"method": "bitcoin"}, "card or by UPI"),
    ],
)
async def test_bad_input_is_a_clear_error_and_changes_nothing(
    gateway: SandboxGateway, client: httpx.AsyncClient, db: Database, form: dict[str, str], message: str
) -> None:
    reference = new_reference()
    await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    token = await open_checkout(client, reference)
    data = {
        "csrf_token": token,
        "method": "card",
        "card_number": PAYS,
        "card_expiry": "12/39",
        "card_cvc": "123",
        "card_name": "Asha Rao",
    } | form
    response = await client.post(f"/sandbox/checkout/{reference}", data=data)
    assert response.status_code == 400
    assert message in html.unescape(response.text)
    assert 'role="alert"' in response.text
    if form.get("method") != "bitcoin":
        assert 'aria-invalid="true"' in response.text
    # the card number and CVC are never sent back into the form
    assert not re.search(r'name="card_(number|cvc)"[^>]*value=', response.text)
    assert await rows(db, SandboxPayment) == []
    assert await rows(db, SandboxWebhook) == []


async def test_the_card_number_is_never_stored_nor_logged(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    db: Database,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    callback_fields(await pay_card(client, reference, PAYS, cvc="987"), settings, reference)
    stored = ""
    for model in (SandboxOrder, SandboxPayment, SandboxWebhook):
        for row in await rows(db, model):
            stored += json.dumps(
                {column.name: str(getattr(row, column.name)) for column in model.__table__.columns}
            )
    assert checkout.gateway_order_id in stored and "1111" in stored
    assert "4111111111111111" not in stored
    # the CVC as a value of its own: timestamps and generated ids may hold the same three digits inside them
    assert not re.search(r"(?<![0-9A-Za-z])987(?![0-9A-Za-z])", stored)
    output = capsys.readouterr()
    assert "4111111111111111" not in output.out + output.err
    assert "4111 1111 1111 1111" not in output.out + output.err


# --- webhooks ---------------------------------------------------------------------------------------------------


async def test_queued_webhooks_are_razorpay_events_that_parse_webhook_verifies(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    settings: Settings,
    config: SandboxConfig,
    db: Database,
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(
        reference=reference, amount=49_900, currency="INR", description="x"
    )
    fields = callback_fields(await pay_card(client, reference, PAYS), settings, reference)
    queued = sorted(
        await rows(db, SandboxWebhook, order_id=checkout.gateway_order_id), key=lambda row: row.seq
    )
    for row in queued:
        body = row.body.encode()
        signature = config.webhook_signature(body)
        assert sdk_utility(config.key_secret).verify_webhook_signature(
            row.body, signature, config.webhook_secret
        )
        event = gateway.parse_webhook(
            {"X-Razorpay-Signature": signature, "x-razorpay-event-id": row.event_id}, body
        )
        assert event.gateway == "sandbox" and event.event_id == row.event_id
        assert event.type is EventType.PAYMENT_CAPTURED
        assert (event.gateway_order_id, event.payment_id) == (
            checkout.gateway_order_id,
            fields["razorpay_payment_id"],
        )
        assert (event.reference, event.amount, event.currency) == (reference, 49_900, "INR")
        assert (event.card_brand, event.card_last4) == ("Visa", "1111")
        payload = json.loads(row.body)
        assert payload["entity"] == "event" and payload["event"] == row.event
        with pytest.raises(InvalidSignature):
            gateway.parse_webhook({"X-Razorpay-Signature": signature}, body.replace(b"49900", b"49901"))
        with pytest.raises(InvalidSignature):
            gateway.parse_webhook({"X-Razorpay-Signature": "0" * 64}, body)
        with pytest.raises(InvalidSignature):
            gateway.parse_webhook({}, body)
    assert len({row.event_id for row in queued}) == 2


@pytest.mark.parametrize("settings_overrides", [{"sandbox_chaos": True}])
async def test_chaos_queues_each_settlement_out_of_order_and_once_twice(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings, db: Database
) -> None:
    reference = new_reference()
    checkout = await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    callback_fields(await pay_card(client, reference, PAYS), settings, reference)
    queued = sorted(
        await rows(db, SandboxWebhook, order_id=checkout.gateway_order_id), key=lambda row: row.seq
    )
    assert [row.event for row in queued] == ["order.paid", "payment.captured", "payment.captured"]
    assert queued[1].event_id == queued[2].event_id and queued[1].body == queued[2].body
    assert queued[0].event_id != queued[1].event_id


# --- refunds and listing --------------------------------------------------------------------------------------------


async def _paid(gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings, amount: int) -> str:
    reference = new_reference()
    await gateway.create_payment(reference=reference, amount=amount, currency="INR", description="x")
    fields = callback_fields(await pay_card(client, reference, PAYS), settings, reference)
    return fields["razorpay_payment_id"]


async def test_refunds_are_idempotent_on_their_key_and_never_exceed_the_payment(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings, db: Database
) -> None:
    payment_id = await _paid(gateway, client, settings, 10_000)
    first = await gateway.refund(
        payment_id=payment_id, amount=4_000, currency="INR", idempotency_key="rfd_one", reason="asked"
    )
    assert first.gateway == "sandbox" and first.refund_id.startswith("rfnd_sbx_")
    assert (first.amount, first.currency, first.status, first.reference) == (
        4_000,
        "INR",
        RefundStatus.PROCESSED,
        "rfd_one",
    )
    again = await gateway.refund(
        payment_id=payment_id, amount=4_000, currency="INR", idempotency_key="rfd_one"
    )
    assert again.refund_id == first.refund_id
    with pytest.raises(GatewayRefused):  # the same key for another refund
        await gateway.refund(payment_id=payment_id, amount=1_000, currency="INR", idempotency_key="rfd_one")
    with pytest.raises(GatewayRefused):  # more than is left
        await gateway.refund(payment_id=payment_id, amount=6_001, currency="INR", idempotency_key="rfd_two")
    with pytest.raises(GatewayRefused):
        await gateway.refund(payment_id=payment_id, amount=100, currency="USD", idempotency_key="rfd_three")
    with pytest.raises(GatewayRefused):
        await gateway.refund(
            payment_id="pay_sbx_unknown", amount=100, currency="INR", idempotency_key="rfd_four"
        )

    # the same new refund sent three times at once (a retry racing the first try): one refund
    results = await asyncio.gather(
        *(
            gateway.refund(payment_id=payment_id, amount=6_000, currency="INR", idempotency_key="rfd_rest")
            for _ in range(3)
        ),
        return_exceptions=True,
    )
    ids = {result.refund_id for result in results if not isinstance(result, BaseException)}
    assert len(ids) == 1, results

    refunds = await rows(db, SandboxRefund, payment_id=payment_id)
    assert sorted(refund.amount for refund in refunds) == [4_000, 6_000]
    (payment,) = await rows(db, SandboxPayment, id=payment_id)
    assert payment.amount_refunded == 10_000 and payment.status == "refunded"
    view = await gateway.fetch_payment(payment.order_id)
    assert view.paid and view.payments[0].amount_refunded == 10_000  # refunded money was captured first
    events = [row.event for row in await rows(db, SandboxWebhook, order_id=payment.order_id)]
    assert events.count("refund.processed") == 2


async def test_a_payment_that_was_not_captured_cannot_be_refunded(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings
) -> None:
    reference = new_reference()
    await gateway.create_payment(reference=reference, amount=100, currency="INR", description="x")
    fields = callback_fields(await pay_card(client, reference, DECLINED), settings, reference)
    payment_id = json.loads(fields["error[metadata]"])["payment_id"]
    with pytest.raises(GatewayRefused):
        await gateway.refund(payment_id=payment_id, amount=100, currency="INR", idempotency_key="rfd_failed")


async def test_list_orders_over_a_period(
    gateway: SandboxGateway, client: httpx.AsyncClient, settings: Settings
) -> None:
    before = utcnow() - timedelta(seconds=1)
    payment_id = await _paid(gateway, client, settings, 500)
    unpaid = await gateway.create_payment(
        reference=new_reference(), amount=700, currency="INR", description="x"
    )
    after = utcnow() + timedelta(seconds=1)
    listed = await gateway.list_orders(since=before, until=after)
    assert listed[0].gateway_order_id == unpaid.gateway_order_id  # newest first
    by_amount = {order.amount: order for order in listed}
    assert by_amount[500].paid and by_amount[500].payments[0].payment_id == payment_id
    assert by_amount[700].status is PaymentStatus.CREATED
    assert await gateway.list_orders(since=after, until=after + timedelta(hours=1)) == []
    assert len(await gateway.list_orders(since=before, until=after, limit=1)) == 1


async def test_a_gateway_without_the_apps_database_opens_its_own(settings: Settings, db: Database) -> None:
    own = build_gateways(settings)["sandbox"]
    try:
        checkout = await own.create_payment(
            reference=new_reference(), amount=100, currency="INR", description="x"
        )
        assert (await own.fetch_payment(checkout.gateway_order_id)).amount == 100
        assert len(await rows(db, SandboxOrder, id=checkout.gateway_order_id)) == 1
        assert "secret" not in repr(own).lower()
    finally:
        await own.aclose()


async def test_a_refund_webhook_carries_our_refund_id(
    gateway: SandboxGateway,
    client: httpx.AsyncClient,
    settings: Settings,
    config: SandboxConfig,
    db: Database,
) -> None:
    payment_id = await _paid(gateway, client, settings, 2_000)
    refund = await gateway.refund(
        payment_id=payment_id, amount=500, currency="INR", idempotency_key="rfd_hook"
    )
    (row,) = [row for row in await rows(db, SandboxWebhook) if row.event == "refund.processed"]
    body = row.body.encode()
    event = gateway.parse_webhook({"X-Razorpay-Signature": config.webhook_signature(body)}, body)
    assert event.type is EventType.REFUND_PROCESSED and event.gateway == "sandbox"
    assert (event.refund_id, event.refund_reference, event.payment_id) == (
        refund.refund_id,
        "rfd_hook",
        payment_id,
    )
    assert (event.amount, event.currency) == (500, "INR")


@pytest.mark.slow
async def test_on_sqlite_a_caller_holding_the_write_lock_gets_a_retryable_error(
    gateway: SandboxGateway, db: Database, engine_name: str
) -> None:
    if engine_name != "sqlite":
        pytest.skip("SQLite's single write lock only")
    async with db.transaction() as session:
        session.add(
            SandboxOrder(
                id="order_sbx_lock", reference="att_lock", amount=100, currency="INR", checkout_secret="x"
            )
        )
        await session.flush()  # this transaction now holds SQLite's write lock
        with pytest.raises(GatewayUnavailable) as raised:
            await gateway.create_payment(
                reference=new_reference(), amount=100, currency="INR", description="x"
            )
        assert raised.value.retryable
    assert [order.reference for order in await rows(db, SandboxOrder)] == ["att_lock"]
