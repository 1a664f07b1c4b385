"""Stripe, through the official ``stripe`` SDK (``stripe.StripeClient`` and its ``*_async`` methods over httpx).

What Stripe documents, and this adapter follows:
- PaymentIntents for an embedded checkout (the client confirms with the ``client_secret`` and the publishable
  key); Checkout Sessions (``mode=payment``) for a redirect to Stripe's hosted page. Our order id travels as
  ``metadata[order_id]`` (and the session's ``client_reference_id``).
- Only a PaymentIntent that ``succeeded`` (or a session whose ``payment_status`` is ``paid``) is paid;
  ``requires_capture``, ``processing`` and an unpaid session are not.
- ``Stripe-Signature`` is verified by the SDK's own ``Webhook.construct_event`` with the 300 s tolerance.
- Refunds (and payment creation) carry an ``Idempotency-Key``: Stripe replays the first answer for the same key
  and refuses the same key with other parameters.
- Amounts are minor units; Stripe's currency codes are lower case on the wire, upper case here.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import stripe

from prepaid.errors import InvalidRequest
from prepaid.payments.gateways.base import (
    EventType,
    GatewayCheckout,
    GatewayError,
    GatewayEvent,
    GatewayOrder,
    GatewayPayment,
    GatewayRefund,
    GatewayRefused,
    GatewayUnavailable,
    InvalidSignature,
    PaymentStatus,
    RefundStatus,
    VerifiedCallback,
    as_dict,
    as_int,
    as_str,
    from_timestamp,
    lower_headers,
    unreadable_answer,
)

T = TypeVar("T")

NAME = "stripe"
DEFAULT_API_BASE = "https://api.stripe.com"
WEBHOOK_TOLERANCE = 300  # seconds, Stripe's default
# Stripe's documented minimum charge amounts (minor units) for the currencies prepaid knows.
MINIMUM_CHARGE: Mapping[str, int] = {
    "USD": 50,
    "EUR": 50,
    "GBP": 30,
    "INR": 50,
    "AUD": 50,
    "CAD": 50,
    "SGD": 50,
    "JPY": 50,
}
_PAGE_SIZE = 100

_INTENT_STATUS = {
    "requires_payment_method": PaymentStatus.CREATED,
    "requires_confirmation": PaymentStatus.PENDING,
    "requires_action": PaymentStatus.PENDING,
    "processing": PaymentStatus.PENDING,
    "requires_capture": PaymentStatus.AUTHORIZED,
    "canceled": PaymentStatus.CANCELLED,
    "succeeded": PaymentStatus.CAPTURED,
}
_REFUND_STATUS = {
    "pending": RefundStatus.PENDING,
    "requires_action": RefundStatus.PENDING,
    "succeeded": RefundStatus.PROCESSED,
    "failed": RefundStatus.FAILED,
    "canceled": RefundStatus.FAILED,
}
_INTENT_EVENTS = {
    "payment_intent.succeeded": EventType.PAYMENT_CAPTURED,
    "payment_intent.amount_capturable_updated": EventType.PAYMENT_AUTHORIZED,
    "payment_intent.payment_failed": EventType.PAYMENT_FAILED,
    "payment_intent.canceled": EventType.PAYMENT_CANCELLED,
}
_SESSION_EVENTS = {
    "checkout.session.completed": EventType.PAYMENT_CAPTURED,  # only when payment_status is "paid"
    "checkout.session.async_payment_succeeded": EventType.PAYMENT_CAPTURED,
    "checkout.session.async_payment_failed": EventType.PAYMENT_FAILED,
    "checkout.session.expired": EventType.PAYMENT_CANCELLED,
}
_REFUND_EVENTS = ("refund.created", "refund.updated", "refund.failed", "charge.refund.updated")
_DISPUTE_EVENTS = {
    "charge.dispute.created": EventType.DISPUTE_OPENED,
    "charge.dispute.updated": EventType.DISPUTE_UPDATED,
    "charge.dispute.funds_withdrawn": EventType.DISPUTE_UPDATED,
    "charge.dispute.funds_reinstated": EventType.DISPUTE_UPDATED,
    "charge.dispute.closed": EventType.DISPUTE_UPDATED,  # decided by the dispute's status below
}


class StripeGateway:
    name = NAME
    minimum_charge: Mapping[str, int] = MINIMUM_CHARGE

    def __init__(
        self,
        *,
        secret_key: str,
        publishable_key: str,
        webhook_secret: str,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 30.0,
        max_network_retries: int = 2,
    ) -> None:
        if not (secret_key and publishable_key and webhook_secret):
            raise ValueError("Stripe needs a secret key, a publishable key and a webhook secret")
        self.publishable_key = publishable_key
        self._webhook_secret = webhook_secret
        self.api_base = api_base.rstrip("/")
        self._http = stripe.HTTPXClient(timeout=timeout)
        # Retries (connection errors, 409, 5xx) resend the same Idempotency-Key, so they never act twice.
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses={"api": self.api_base},
            http_client=self._http,
            max_network_retries=max_network_retries,
        )

    def __repr__(self) -> str:  # never the secrets
        return f"StripeGateway(publishable_key={self.publishable_key!r}, api_base={self.api_base!r})"

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except GatewayError:
            raise
        except (stripe.APIConnectionError, stripe.RateLimitError) as error:
            raise GatewayUnavailable(
                f"Stripe could not be reached to {what}: {_message(error)}", gateway=NAME
            ) from None
        except stripe.StripeError as error:
            status = error.http_status or 0
            if status >= 500 or status == 409 or isinstance(error, stripe.APIError):
                raise GatewayUnavailable(
                    f"Stripe failed to {what}: {_message(error)}", gateway=NAME
                ) from None
            raise GatewayRefused(
                f"Stripe refused to {what}: {_message(error)}", gateway=NAME, gateway_code=error.code
            ) from None
        except Exception as error:  # an answer the SDK could not read
            raise unreadable_answer(NAME, "Stripe", what, error) from None

    # --- payments --------------------------------------------------------------------------------------------

    async def create_payment(
        self,
        *,
        reference: str,
        amount: int,
        currency: str,
        description: str,
        idempotency_key: str | None = None,
        customer_email: str | None = None,
        success_url: str | None = None,
        cancel_url: str | None = None,
    ) -> GatewayCheckout:
        currency = currency.upper()
        options: dict[str, Any] = {"idempotency_key": idempotency_key} if idempotency_key else {}
        metadata = {"order_id": reference}
        if success_url:  # a redirect flow: Stripe's hosted Checkout page
            params: dict[str, Any] = {
                "mode": "payment",
                "line_items": [
                    {
                        "price_data": {
                            "currency": currency.lower(),
                            "unit_amount": amount,
                            "product_data": {"name": description[:250] or reference},
                        },
                        "quantity": 1,
                    }
                ],
                "success_url": success_url,
                "cancel_url": cancel_url or success_url,
                "client_reference_id": reference,
                "metadata": metadata,
                "payment_intent_data": {"metadata": metadata, "description": description[:1000]},
            }
            if customer_email:
                params["customer_email"] = customer_email
            session = await self._call(
                "create a Checkout Session",
                lambda: self._client.v1.checkout.sessions.create_async(params, options),  # type: ignore[arg-type]
            )
            data = session.to_dict()
            session_id = _required_id(data, "create a Checkout Session")
            url = as_str(data.get("url"))
            client: dict[str, str | int] = {"session_id": session_id, "publishable_key": self.publishable_key}
            if url:
                client["url"] = url
            return GatewayCheckout(
                gateway=NAME,
                gateway_order_id=session_id,
                reference=reference,
                amount=as_int(data.get("amount_total")) or amount,
                currency=(as_str(data.get("currency")) or currency).upper(),
                client=client,
                redirect_url=url,
            )
        intent_params: dict[str, Any] = {
            "amount": amount,
            "currency": currency.lower(),
            "description": description[:1000],
            "metadata": metadata,
            "automatic_payment_methods": {"enabled": True},
        }
        if customer_email:
            intent_params["receipt_email"] = customer_email
        intent = await self._call(
            "create a PaymentIntent",
            lambda: self._client.v1.payment_intents.create_async(intent_params, options),  # type: ignore[arg-type]
        )
        data = intent.to_dict()
        intent_id = _required_id(data, "create a PaymentIntent")
        secret = as_str(data.get("client_secret"))
        if not secret:
            raise GatewayUnavailable("Stripe answered without a client_secret.", gateway=NAME)
        return GatewayCheckout(
            gateway=NAME,
            gateway_order_id=intent_id,
            reference=reference,
            amount=as_int(data.get("amount")) or amount,
            currency=(as_str(data.get("currency")) or currency).upper(),
            client={
                "client_secret": secret,
                "publishable_key": self.publishable_key,
                "payment_intent_id": intent_id,
            },
        )

    async def fetch_payment(self, gateway_order_id: str) -> GatewayOrder:
        if gateway_order_id.startswith("cs_"):
            session = await self._call(
                "fetch a Checkout Session",
                lambda: self._client.v1.checkout.sessions.retrieve_async(
                    gateway_order_id, {"expand": ["payment_intent.latest_charge"]}
                ),
            )
            data = session.to_dict()
            _required_id(data, "fetch a Checkout Session")
            return _session_order(data)
        intent = await self._call(
            "fetch a PaymentIntent",
            lambda: self._client.v1.payment_intents.retrieve_async(
                gateway_order_id, {"expand": ["latest_charge"]}
            ),
        )
        data = intent.to_dict()
        _required_id(data, "fetch a PaymentIntent")
        return _intent_order(data)

    def verify_callback(self, *, gateway_order_id: str, fields: Mapping[str, str]) -> VerifiedCallback:
        """Stripe's return carries no signature: it names the PaymentIntent (``payment_intent`` and its
        ``payment_intent_client_secret``) or the session (``session_id``). Those must be the attempt's own;
        whether it is paid is then asked of Stripe (``fetch_payment``), never taken from the client."""
        sent_intent = fields.get("payment_intent")
        sent_session = fields.get("session_id")
        sent_secret = fields.get("payment_intent_client_secret")
        if gateway_order_id.startswith("cs_"):
            if sent_session is not None and sent_session != gateway_order_id:
                raise InvalidSignature("The callback is for another Checkout Session.", param="session_id")
            return VerifiedCallback(gateway=NAME, gateway_order_id=gateway_order_id, payment_id=None)
        if sent_intent is not None and sent_intent != gateway_order_id:
            raise InvalidSignature("The callback is for another PaymentIntent.", param="payment_intent")
        if sent_secret is not None and not sent_secret.startswith(gateway_order_id + "_secret_"):
            raise InvalidSignature(
                "The client secret is not this PaymentIntent's.", param="payment_intent_client_secret"
            )
        return VerifiedCallback(gateway=NAME, gateway_order_id=gateway_order_id, payment_id=gateway_order_id)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> GatewayEvent:
        signature = lower_headers(headers).get("stripe-signature")
        if not signature:
            raise InvalidSignature("The Stripe-Signature header is missing.")
        try:  # the SDK's own check: v1 HMAC over "t.body", and t no older than the tolerance
            stripe.WebhookSignature.verify_header(body, signature, self._webhook_secret, WEBHOOK_TOLERANCE)
        except stripe.SignatureVerificationError as error:
            raise InvalidSignature(f"The webhook signature does not verify: {_message(error)}") from None
        except UnicodeDecodeError:
            raise InvalidSignature("The webhook body is not UTF-8.") from None
        except TypeError:  # hmac.compare_digest refuses a non-ASCII signature: it cannot be Stripe's
            raise InvalidSignature("The webhook signature does not verify.") from None
        not_an_event = InvalidRequest("The webhook body is not a Stripe event.", code="invalid_webhook")
        try:
            parsed = json.loads(body)
        except ValueError:
            raise not_an_event from None
        if not isinstance(parsed, dict) or parsed.get("object") != "event":
            raise not_an_event
        try:  # verified above; construct_event checks it once more and builds the SDK's Event
            event = self._client.construct_event(body, signature, self._webhook_secret, WEBHOOK_TOLERANCE)
            payload = event.to_dict()
        except stripe.SignatureVerificationError:
            raise InvalidSignature("The webhook signature does not verify.") from None
        except Exception:
            raise not_an_event from None
        if not as_str(payload.get("id")) or not as_str(payload.get("type")):
            raise not_an_event
        return _event(payload)

    async def refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str, reason: str | None = None
    ) -> GatewayRefund:
        params: dict[str, Any] = {"amount": amount, "metadata": {"refund_id": idempotency_key}}
        if reason:
            params["metadata"]["reason"] = reason[:500]
        params["charge" if payment_id.startswith("ch_") else "payment_intent"] = payment_id
        refund = await self._call(
            "refund a payment",
            lambda: self._client.v1.refunds.create_async(params, {"idempotency_key": idempotency_key}),  # type: ignore[arg-type]
        )
        data = refund.to_dict()
        return _refund(data, payment_id=payment_id, currency=currency)

    async def list_orders(self, *, since: datetime, until: datetime, limit: int = 1000) -> list[GatewayOrder]:
        created = {"gte": int(since.timestamp()), "lte": int(until.timestamp())}
        orders: list[GatewayOrder] = []
        starting_after: str | None = None
        while len(orders) < limit:
            params: dict[str, Any] = {"created": created, "limit": min(_PAGE_SIZE, limit - len(orders))}
            if starting_after:
                params["starting_after"] = starting_after
            page = await self._call(
                "list PaymentIntents",
                lambda params=params: self._client.v1.payment_intents.list_async(params),  # type: ignore[misc]
            )
            data = page.to_dict()
            items = [
                item for item in data.get("data", []) if isinstance(item, dict) and as_str(item.get("id"))
            ]
            orders.extend(_intent_order(item) for item in items)
            if not data.get("has_more") or not items:
                break
            starting_after = items[-1]["id"]
        return orders

    async def aclose(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]


# --- translation ---------------------------------------------------------------------------------------------


def _message(error: stripe.StripeError) -> str:
    return error.user_message or str(error._message or type(error).__name__)


def _required_id(data: dict[str, Any], what: str) -> str:
    value = as_str(data.get("id"))
    if not value:
        raise GatewayUnavailable(f"Stripe answered without an id to {what}.", gateway=NAME)
    return value


def _failure(intent: dict[str, Any]) -> str | None:
    error = as_dict(intent.get("last_payment_error"))
    message = as_str(error.get("message"))
    code = as_str(error.get("decline_code")) or as_str(error.get("code"))
    if message and code:
        return f"{message} ({code})"
    return message or code


def _intent_payment(intent: dict[str, Any]) -> GatewayPayment | None:
    raw_status = str(intent.get("status") or "")
    status = _INTENT_STATUS.get(raw_status, PaymentStatus.PENDING)
    failure = _failure(intent)
    if status is PaymentStatus.CREATED:
        if not failure:
            return None  # nobody tried to pay yet
        status = PaymentStatus.FAILED  # a declined try puts the intent back to requires_payment_method
    charge = as_dict(intent.get("latest_charge"))
    details = as_dict(charge.get("payment_method_details"))
    card = as_dict(details.get("card"))
    captured = status is PaymentStatus.CAPTURED
    return GatewayPayment(
        payment_id=str(intent["id"]),
        status=status,
        amount=(as_int(intent.get("amount_received")) if captured else as_int(intent.get("amount"))) or 0,
        currency=(as_str(intent.get("currency")) or "").upper(),
        raw_status=raw_status,
        method=as_str(details.get("type")) or _first(intent.get("payment_method_types")),
        card_brand=as_str(card.get("brand")),
        card_last4=as_str(card.get("last4")),
        failure_reason=failure if status is PaymentStatus.FAILED else None,
        amount_refunded=as_int(charge.get("amount_refunded")) or 0,
        created_at=from_timestamp(intent.get("created")),
    )


def _first(value: Any) -> str | None:
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


def _intent_order(intent: dict[str, Any]) -> GatewayOrder:
    payment = _intent_payment(intent)
    return GatewayOrder(
        gateway=NAME,
        gateway_order_id=str(intent["id"]),
        reference=as_str(as_dict(intent.get("metadata")).get("order_id")),
        amount=as_int(intent.get("amount")) or 0,
        currency=(as_str(intent.get("currency")) or "").upper(),
        status=payment.status if payment else PaymentStatus.CREATED,
        raw_status=str(intent.get("status") or ""),
        amount_paid=as_int(intent.get("amount_received")) or 0,
        payments=(payment,) if payment else (),
        created_at=from_timestamp(intent.get("created")),
    )


def _session_order(session: dict[str, Any]) -> GatewayOrder:
    intent = as_dict(session.get("payment_intent"))
    payment = _intent_payment(intent) if as_str(intent.get("id")) else None
    payment_status = str(session.get("payment_status") or "")
    if payment_status == "paid":
        status = PaymentStatus.CAPTURED
        if payment is None or not payment.captured:  # paid, with the intent not expanded: the session says so
            payment = GatewayPayment(
                payment_id=as_str(intent.get("id"))
                or as_str(session.get("payment_intent"))
                or str(session["id"]),
                status=PaymentStatus.CAPTURED,
                amount=as_int(session.get("amount_total")) or 0,
                currency=(as_str(session.get("currency")) or "").upper(),
                raw_status=payment_status,
            )
    elif session.get("status") == "expired":
        status = PaymentStatus.CANCELLED
    elif payment is not None and payment.status is not PaymentStatus.CAPTURED:
        status = payment.status
    else:  # "unpaid" (an async payment method still settling) or nothing tried: not paid
        status = PaymentStatus.PENDING if session.get("status") == "complete" else PaymentStatus.CREATED
    metadata = as_dict(session.get("metadata"))
    return GatewayOrder(
        gateway=NAME,
        gateway_order_id=str(session["id"]),
        reference=as_str(session.get("client_reference_id")) or as_str(metadata.get("order_id")),
        amount=as_int(session.get("amount_total")) or 0,
        currency=(as_str(session.get("currency")) or "").upper(),
        status=status,
        raw_status=f"{session.get('status')}/{payment_status}",
        amount_paid=(payment.amount if payment is not None and status is PaymentStatus.CAPTURED else 0),
        payments=(payment,) if payment else (),
        created_at=from_timestamp(session.get("created")),
    )


def _refund(refund: dict[str, Any], *, payment_id: str, currency: str) -> GatewayRefund:
    raw_status = str(refund.get("status") or "")
    refund_id = as_str(refund.get("id"))
    if not refund_id:
        raise GatewayUnavailable("Stripe answered without a refund id.", gateway=NAME)
    return GatewayRefund(
        gateway=NAME,
        refund_id=refund_id,
        payment_id=as_str(refund.get("payment_intent")) or as_str(refund.get("charge")) or payment_id,
        amount=as_int(refund.get("amount")) or 0,
        currency=(as_str(refund.get("currency")) or currency).upper(),
        status=_REFUND_STATUS.get(raw_status, RefundStatus.PENDING),
        raw_status=raw_status,
        reference=as_str(as_dict(refund.get("metadata")).get("refund_id")),
    )


def _event(payload: dict[str, Any]) -> GatewayEvent:
    raw_type: str = payload["type"]
    obj = as_dict(as_dict(payload.get("data")).get("object"))
    metadata = as_dict(obj.get("metadata"))
    common: dict[str, Any] = {
        "gateway": NAME,
        "event_id": payload["id"],
        "type": EventType.OTHER,
        "raw_type": raw_type,
        "created_at": from_timestamp(payload.get("created")) or datetime.now(UTC),
        "currency": (as_str(obj.get("currency")) or "").upper() or None,
        "status": as_str(obj.get("status")),
        "reference": as_str(metadata.get("order_id")),
        "payload": payload,
    }
    if raw_type in _INTENT_EVENTS:
        payment = _intent_payment(obj) if as_str(obj.get("id")) else None
        event_type = _INTENT_EVENTS[raw_type]
        if event_type is EventType.PAYMENT_CAPTURED and obj.get("status") != "succeeded":
            event_type = EventType.OTHER
        captured = event_type is EventType.PAYMENT_CAPTURED
        return GatewayEvent(
            **common
            | {
                "type": event_type,
                "gateway_order_id": as_str(obj.get("id")),
                "payment_id": as_str(obj.get("id")),
                "amount": as_int(obj.get("amount_received")) if captured else as_int(obj.get("amount")),
                "method": payment.method if payment else None,
                "card_brand": payment.card_brand if payment else None,
                "card_last4": payment.card_last4 if payment else None,
                "failure_reason": _failure(obj) if event_type is EventType.PAYMENT_FAILED else None,
            }
        )
    if raw_type in _SESSION_EVENTS:
        event_type = _SESSION_EVENTS[raw_type]
        if raw_type == "checkout.session.completed" and obj.get("payment_status") != "paid":
            event_type = (
                EventType.OTHER
            )  # an unpaid session (async payment method still settling) is not paid
        intent = obj.get("payment_intent")
        intent_id = as_str(intent) or as_str(as_dict(intent).get("id"))
        return GatewayEvent(
            **common
            | {
                "type": event_type,
                "gateway_order_id": as_str(obj.get("id")),
                "payment_id": intent_id,
                "reference": as_str(obj.get("client_reference_id")) or common["reference"],
                "amount": as_int(obj.get("amount_total")),
                "status": as_str(obj.get("payment_status")),
            }
        )
    if raw_type in _REFUND_EVENTS and obj.get("object") == "refund":
        status = _REFUND_STATUS.get(str(obj.get("status") or ""), RefundStatus.PENDING)
        event_type = {
            RefundStatus.PENDING: EventType.REFUND_CREATED,
            RefundStatus.PROCESSED: EventType.REFUND_PROCESSED,
            RefundStatus.FAILED: EventType.REFUND_FAILED,
        }[status]
        intent_id = as_str(obj.get("payment_intent"))
        return GatewayEvent(
            **common
            | {
                "type": event_type,
                "reference": None,
                "gateway_order_id": intent_id,
                "payment_id": intent_id or as_str(obj.get("charge")),
                "amount": as_int(obj.get("amount")),
                "refund_id": as_str(obj.get("id")),
                "refund_reference": as_str(metadata.get("refund_id")),
                "failure_reason": as_str(obj.get("failure_reason")),
            }
        )
    if raw_type in _DISPUTE_EVENTS and obj.get("object") == "dispute":
        event_type = _DISPUTE_EVENTS[raw_type]
        if raw_type == "charge.dispute.closed":
            # won, or an inquiry closed without a chargeback: the money stays; lost: it is gone
            event_type = {
                "won": EventType.DISPUTE_WON,
                "warning_closed": EventType.DISPUTE_WON,
                "lost": EventType.DISPUTE_LOST,
            }.get(str(obj.get("status")), EventType.DISPUTE_UPDATED)
        intent_id = as_str(obj.get("payment_intent"))
        return GatewayEvent(
            **common
            | {
                "type": event_type,
                "reference": None,
                "gateway_order_id": intent_id,
                "payment_id": intent_id or as_str(obj.get("charge")),
                "amount": as_int(obj.get("amount")),
                "dispute_id": as_str(obj.get("id")),
                "failure_reason": as_str(obj.get("reason")),
            }
        )
    return GatewayEvent(**common)
