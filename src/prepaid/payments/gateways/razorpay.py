"""Razorpay, through the official ``razorpay`` SDK.

The SDK is synchronous (``requests``): every call runs in a worker thread (``asyncio.to_thread``), never on
the event loop, each thread with its own SDK client and HTTP session (``requests.Session`` is not meant to be
shared between threads), with a timeout on every request (the SDK sets none).

What Razorpay documents, and this adapter follows:
- Orders API: ``POST /v1/orders`` with ``amount`` (minor units), ``currency``, ``receipt`` (our order id, at
  most 40 characters) and ``notes``; Checkout opens with ``key_id`` + ``order_id``.
- Payment signature (the client callback): HMAC-SHA256 hex of ``"{order_id}|{razorpay_payment_id}"`` with the
  key secret, where ``order_id`` is the one WE stored with the attempt.
- Webhooks: ``X-Razorpay-Signature`` is the HMAC-SHA256 hex of the raw body with the webhook secret; the
  ``x-razorpay-event-id`` header identifies the event for deduplication.
- Refunds: ``POST /v1/payments/:id/refund`` with the ``X-Refund-Idempotency`` header (10+ characters of letters,
  digits, ``-`` and ``_``): a retry with the same key and body does not refund twice.
- Only a ``captured`` payment is paid; ``authorized`` is not.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import razorpay
import razorpay.errors
import requests

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
    best_status,
    from_timestamp,
    lower_headers,
    unreadable_answer,
)

T = TypeVar("T")

NAME = "razorpay"
DEFAULT_API_BASE = "https://api.razorpay.com"
# Razorpay's documented minimum: "The amount must be at least INR 1.00" (and USD 1.00 for US accounts).
MINIMUM_CHARGE: Mapping[str, int] = {"INR": 100, "USD": 100}
RECEIPT_MAX_LENGTH = 40
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_-]{10,}$")
_PAGE_SIZE = 100  # Razorpay's largest ``count``
_RETRYABLE_STATUS = (409, 429)  # an identical request still running; too many requests

_PAYMENT_STATUS = {
    "created": PaymentStatus.PENDING,
    "authorized": PaymentStatus.AUTHORIZED,
    "captured": PaymentStatus.CAPTURED,
    # a refunded payment was captured: the money came in, and ``amount_refunded`` says how much went back
    "refunded": PaymentStatus.CAPTURED,
    "failed": PaymentStatus.FAILED,
}
_ORDER_STATUS = {
    "created": PaymentStatus.CREATED,
    "attempted": PaymentStatus.PENDING,
    "paid": PaymentStatus.CAPTURED,
}
_REFUND_STATUS = {
    "pending": RefundStatus.PENDING,
    "processed": RefundStatus.PROCESSED,
    "failed": RefundStatus.FAILED,
}
_EVENT_TYPES = {
    "payment.authorized": EventType.PAYMENT_AUTHORIZED,
    "payment.captured": EventType.PAYMENT_CAPTURED,
    "payment.failed": EventType.PAYMENT_FAILED,
    "order.paid": EventType.PAYMENT_CAPTURED,
    "refund.created": EventType.REFUND_CREATED,
    "refund.processed": EventType.REFUND_PROCESSED,
    "refund.failed": EventType.REFUND_FAILED,
    "payment.dispute.created": EventType.DISPUTE_OPENED,
    "payment.dispute.under_review": EventType.DISPUTE_UPDATED,
    "payment.dispute.action_required": EventType.DISPUTE_UPDATED,
    "payment.dispute.won": EventType.DISPUTE_WON,
    "payment.dispute.lost": EventType.DISPUTE_LOST,
    # "closed" is a dispute closed without a chargeback (proof accepted), unless money was deducted
    "payment.dispute.closed": EventType.DISPUTE_WON,
}


class _TimeoutSession(requests.Session):
    """A ``requests`` session that never waits forever (the SDK passes no timeout) and remembers the HTTP status
    of its last answer (the SDK raises by the error's code alone: a 409 "still processing" or a 5xx would look
    like a refusal)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout
        self.last_status = 0

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout)
        self.last_status = 0
        response = super().request(method, url, *args, **kwargs)
        self.last_status = response.status_code
        return response


class RazorpayGateway:
    name = NAME
    minimum_charge: Mapping[str, int] = MINIMUM_CHARGE

    def __init__(
        self,
        *,
        key_id: str,
        key_secret: str,
        webhook_secret: str,
        api_base: str = DEFAULT_API_BASE,
        timeout: float = 30.0,
    ) -> None:
        if not (key_id and key_secret and webhook_secret):
            raise ValueError("Razorpay needs a key id, a key secret and a webhook secret")
        self.key_id = key_id
        self._key_secret = key_secret
        self._webhook_secret = webhook_secret
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        # signature checks need no network: one SDK client holds the key secret for its Utility
        self._utility = razorpay.Client(session=requests.Session(), auth=(key_id, key_secret)).utility

    def __repr__(self) -> str:  # never the secrets
        return f"RazorpayGateway(key_id={self.key_id!r}, api_base={self.api_base!r})"

    # --- the SDK, in worker threads ------------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            session = _TimeoutSession(self.timeout)
            with self._sessions_lock:
                self._sessions.append(session)
            client = razorpay.Client(
                session=session, auth=(self.key_id, self._key_secret), base_url=self.api_base
            )
            client.set_app_details({"title": "prepaid"})
            self._local.client = client
        return client

    async def _call(self, what: str, call: Callable[[Any], T]) -> T:
        def run() -> T:
            client = self._client()
            try:
                return call(client)
            except razorpay.errors.BadRequestError as error:
                status = client.session.last_status
                if status in _RETRYABLE_STATUS or status >= 500:  # a request to send again, not a refusal
                    raise GatewayUnavailable(
                        f"Razorpay could not {what} now (HTTP {status}): {error}", gateway=NAME
                    ) from None
                raise

        try:
            return await asyncio.to_thread(run)
        except GatewayError:
            raise
        except razorpay.errors.BadRequestError as error:
            raise GatewayRefused(f"Razorpay refused to {what}: {error}", gateway=NAME) from None
        except (razorpay.errors.GatewayError, razorpay.errors.ServerError) as error:
            raise GatewayUnavailable(f"Razorpay failed to {what}: {error}", gateway=NAME) from None
        except requests.exceptions.RequestException as error:
            if isinstance(error, requests.exceptions.JSONDecodeError):
                raise unreadable_answer(NAME, "Razorpay", what, error) from None
            raise GatewayUnavailable(
                f"Razorpay could not be reached to {what} ({type(error).__name__}).", gateway=NAME
            ) from None
        except (
            Exception
        ) as error:  # a body that is not JSON (a proxy's error page), or not the shape expected
            raise unreadable_answer(NAME, "Razorpay", what, error) from None

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
        if len(reference) > RECEIPT_MAX_LENGTH:
            raise InvalidRequest(
                f"A Razorpay receipt is at most {RECEIPT_MAX_LENGTH} characters.", code="invalid_reference"
            )
        data: dict[str, Any] = {
            "amount": amount,
            "currency": currency,
            "receipt": reference,
            "notes": {"order_id": reference, "description": description[:256]},
        }
        order = await self._call("create an order", lambda client: client.order.create(data=data))
        order = self._expect(order, "order", "create an order")
        order_id = str(order["id"])
        client_fields: dict[str, str | int] = {
            "key_id": self.key_id,
            "order_id": order_id,
            "amount": as_int(order.get("amount")) or amount,
            "currency": as_str(order.get("currency")) or currency,
        }
        if success_url:
            client_fields["callback_url"] = success_url
        if customer_email:
            client_fields["prefill_email"] = customer_email
        return GatewayCheckout(
            gateway=NAME,
            gateway_order_id=order_id,
            reference=reference,
            amount=int(client_fields["amount"]),
            currency=str(client_fields["currency"]),
            client=client_fields,
        )

    async def fetch_payment(self, gateway_order_id: str) -> GatewayOrder:
        def fetch(client: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            order = client.order.fetch(gateway_order_id)
            collection = client.order.payments(gateway_order_id)
            payments = [item for item in as_dict(collection).get("items", []) if isinstance(item, dict)]
            # Card brand and last 4 come with the payment expanded with its card.
            expanded = []
            for payment in payments:
                if payment.get("method") == "card" and not isinstance(payment.get("card"), dict):
                    payment = client.payment.fetch(payment["id"], {"expand[]": "card"})
                expanded.append(payment)
            return order, expanded

        order, payments = await self._call("fetch an order", fetch)
        order = self._expect(order, "order", "fetch an order")
        return self._order(order, [self._payment(payment) for payment in payments])

    def verify_callback(self, *, gateway_order_id: str, fields: Mapping[str, str]) -> VerifiedCallback:
        payment_id = fields.get("razorpay_payment_id")
        signature = fields.get("razorpay_signature")
        if (
            not isinstance(payment_id, str)
            or not payment_id
            or not isinstance(signature, str)
            or not signature
        ):
            raise InvalidSignature(
                "The callback needs razorpay_payment_id and razorpay_signature.", param="razorpay_signature"
            )
        sent_order_id = fields.get("razorpay_order_id")
        if sent_order_id is not None and sent_order_id != gateway_order_id:
            raise InvalidSignature(
                "The callback is for another Razorpay order than this attempt's.", param="razorpay_order_id"
            )
        # The SDK's own check, over the order id stored with the attempt, compared in constant time.
        self._verify(
            lambda utility: utility.verify_payment_signature(
                {
                    "razorpay_order_id": gateway_order_id,
                    "razorpay_payment_id": payment_id,
                    "razorpay_signature": signature,
                }
            ),
            "The payment signature does not match.",
        )
        return VerifiedCallback(gateway=NAME, gateway_order_id=gateway_order_id, payment_id=payment_id)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> GatewayEvent:
        header = lower_headers(headers)
        signature = header.get("x-razorpay-signature")
        if not signature:
            raise InvalidSignature("The X-Razorpay-Signature header is missing.")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSignature("The webhook body is not UTF-8.") from None
        self._verify(
            lambda utility: utility.verify_webhook_signature(text, signature, self._webhook_secret),
            "The webhook signature does not match.",
        )
        try:
            payload = json.loads(text)
        except ValueError:
            raise InvalidRequest("The webhook body is not JSON.", code="invalid_webhook") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
            raise InvalidRequest("The webhook body is not a Razorpay event.", code="invalid_webhook")
        # Razorpay names each event in the x-razorpay-event-id header; without it (never seen from Razorpay) the
        # body's hash stands in, so a redelivery of the same body is still the same event.
        event_id = header.get("x-razorpay-event-id") or "sha256:" + hashlib.sha256(body).hexdigest()
        return self._event(event_id, payload)

    async def refund(
        self, *, payment_id: str, amount: int, currency: str, idempotency_key: str, reason: str | None = None
    ) -> GatewayRefund:
        if not _IDEMPOTENCY_KEY.match(idempotency_key):
            raise InvalidRequest(
                "A Razorpay refund idempotency key is 10 or more letters, digits, '-' or '_'.",
                code="invalid_idempotency_key",
            )
        notes = {"refund_id": idempotency_key}
        if reason:
            notes["reason"] = reason[:256]
        data = {"amount": amount, "notes": notes}
        headers = {"X-Refund-Idempotency": idempotency_key}
        refund = await self._call(
            "refund a payment", lambda client: client.payment.refund(payment_id, data, headers=headers)
        )
        refund = self._expect(refund, "refund", "refund a payment")
        return self._refund(refund, payment_id=payment_id, currency=currency)

    async def list_orders(self, *, since: datetime, until: datetime, limit: int = 1000) -> list[GatewayOrder]:
        start, end = int(since.timestamp()), int(until.timestamp())

        def pages(client: Any) -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = []
            while len(items) < limit:
                count = min(_PAGE_SIZE, limit - len(items))
                page = client.order.all({"from": start, "to": end, "count": count, "skip": len(items)})
                batch = [item for item in as_dict(page).get("items", []) if isinstance(item, dict)]
                items.extend(batch)
                if len(batch) < count:
                    break
            return items

        orders = await self._call("list orders", pages)
        return [self._order(order, []) for order in orders if as_str(order.get("id"))]

    async def aclose(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # --- translation -----------------------------------------------------------------------------------------

    def _verify(self, check: Callable[[Any], object], message: str) -> None:
        try:
            check(self._utility)
        except razorpay.errors.SignatureVerificationError:
            raise InvalidSignature(message) from None
        except TypeError:  # hmac.compare_digest refuses a non-ASCII signature: it cannot be ours
            raise InvalidSignature(message) from None

    @staticmethod
    def _expect(value: Any, entity: str, what: str) -> dict[str, Any]:
        if not isinstance(value, dict) or not as_str(value.get("id")):
            raise GatewayUnavailable(f"Razorpay answered without a {entity} id to {what}.", gateway=NAME)
        return value

    @staticmethod
    def _payment(payment: dict[str, Any]) -> GatewayPayment:
        raw_status = str(payment.get("status") or "")
        card = as_dict(payment.get("card"))
        failure = as_str(payment.get("error_description")) or as_str(payment.get("error_reason"))
        if failure and as_str(payment.get("error_code")):
            failure = f"{failure} ({payment['error_code']})"
        return GatewayPayment(
            payment_id=str(payment.get("id") or ""),
            status=_PAYMENT_STATUS.get(raw_status, PaymentStatus.PENDING),
            amount=as_int(payment.get("amount")) or 0,
            currency=(as_str(payment.get("currency")) or "").upper(),
            raw_status=raw_status,
            method=as_str(payment.get("method")),
            card_brand=as_str(card.get("network")),
            card_last4=as_str(card.get("last4")),
            failure_reason=failure,
            amount_refunded=as_int(payment.get("amount_refunded")) or 0,
            created_at=from_timestamp(payment.get("created_at")),
        )

    @staticmethod
    def _order(order: dict[str, Any], payments: list[GatewayPayment]) -> GatewayOrder:
        raw_status = str(order.get("status") or "")
        if payments:
            status = best_status([payment.status for payment in payments])
            amount_paid = sum(payment.amount for payment in payments if payment.captured)
        else:
            status = _ORDER_STATUS.get(raw_status, PaymentStatus.PENDING)
            amount_paid = as_int(order.get("amount_paid")) or 0
        return GatewayOrder(
            gateway=NAME,
            gateway_order_id=str(order["id"]),
            reference=as_str(order.get("receipt")) or as_str(as_dict(order.get("notes")).get("order_id")),
            amount=as_int(order.get("amount")) or 0,
            currency=(as_str(order.get("currency")) or "").upper(),
            status=status,
            raw_status=raw_status,
            amount_paid=amount_paid,
            payments=tuple(payments),
            created_at=from_timestamp(order.get("created_at")),
        )

    @staticmethod
    def _refund(refund: dict[str, Any], *, payment_id: str, currency: str) -> GatewayRefund:
        raw_status = str(refund.get("status") or "")
        return GatewayRefund(
            gateway=NAME,
            refund_id=str(refund["id"]),
            payment_id=as_str(refund.get("payment_id")) or payment_id,
            amount=as_int(refund.get("amount")) or 0,
            # Razorpay's refund entity may carry an empty currency: the payment's is the refund's
            currency=(as_str(refund.get("currency")) or currency).upper(),
            status=_REFUND_STATUS.get(raw_status, RefundStatus.PENDING),
            raw_status=raw_status,
            reference=as_str(as_dict(refund.get("notes")).get("refund_id")),
        )

    def _event(self, event_id: str, payload: dict[str, Any]) -> GatewayEvent:
        raw_type: str = payload["event"]
        body = as_dict(payload.get("payload"))
        payment = as_dict(as_dict(body.get("payment")).get("entity"))
        order = as_dict(as_dict(body.get("order")).get("entity"))
        refund = as_dict(as_dict(body.get("refund")).get("entity"))
        dispute = as_dict(as_dict(body.get("dispute")).get("entity"))
        event_type = _EVENT_TYPES.get(raw_type, EventType.OTHER)
        created_at = from_timestamp(payload.get("created_at")) or datetime.now(UTC)
        card = as_dict(payment.get("card"))
        common: dict[str, Any] = {
            "gateway": NAME,
            "event_id": event_id,
            "type": event_type,
            "raw_type": raw_type,
            "created_at": created_at,
            "gateway_order_id": as_str(payment.get("order_id")) or as_str(order.get("id")),
            "payment_id": as_str(payment.get("id")),
            "reference": as_str(order.get("receipt"))
            or as_str(as_dict(payment.get("notes")).get("order_id")),
            "method": as_str(payment.get("method")),
            "card_brand": as_str(card.get("network")),
            "card_last4": as_str(card.get("last4")),
            "payload": payload,
        }
        if refund:
            return GatewayEvent(
                **common
                | {
                    "payment_id": as_str(refund.get("payment_id")) or common["payment_id"],
                    "amount": as_int(refund.get("amount")),
                    "currency": (
                        as_str(refund.get("currency")) or as_str(payment.get("currency")) or ""
                    ).upper()
                    or None,
                    "status": as_str(refund.get("status")),
                    "refund_id": as_str(refund.get("id")),
                    "refund_reference": as_str(as_dict(refund.get("notes")).get("refund_id")),
                }
            )
        if dispute:
            if raw_type == "payment.dispute.closed" and (as_int(dispute.get("amount_deducted")) or 0) > 0:
                event_type = EventType.DISPUTE_LOST
            return GatewayEvent(
                **common
                | {
                    "type": event_type,
                    "payment_id": as_str(dispute.get("payment_id")) or common["payment_id"],
                    "amount": as_int(dispute.get("amount")),
                    "currency": (as_str(dispute.get("currency")) or "").upper() or None,
                    "status": as_str(dispute.get("status")),
                    "dispute_id": as_str(dispute.get("id")),
                }
            )
        if payment:
            failure = as_str(payment.get("error_description")) or as_str(payment.get("error_reason"))
            status = as_str(payment.get("status"))
            if raw_type == "order.paid" and status != "captured":
                event_type = EventType.OTHER  # an order is paid only through a captured payment
            if raw_type == "payment.captured" and status not in (None, "captured", "refunded"):
                event_type = EventType.OTHER
            return GatewayEvent(
                **common
                | {
                    "type": event_type,
                    "amount": as_int(payment.get("amount")),
                    "currency": (as_str(payment.get("currency")) or "").upper() or None,
                    "status": status,
                    "failure_reason": failure if event_type is EventType.PAYMENT_FAILED else None,
                }
            )
        if order:
            return GatewayEvent(
                **common
                | {
                    "type": EventType.OTHER if event_type is EventType.PAYMENT_CAPTURED else event_type,
                    "amount": as_int(order.get("amount_paid")),
                    "currency": (as_str(order.get("currency")) or "").upper() or None,
                    "status": as_str(order.get("status")),
                }
            )
        return GatewayEvent(**common | {"type": EventType.OTHER})
