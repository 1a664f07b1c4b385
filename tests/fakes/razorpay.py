"""A fake Razorpay API: the endpoints prepaid's adapter uses, answering with the entities Razorpay documents
(orders, payments, refunds, collections, its error object) and checking what Razorpay checks (Basic auth with
the key id and secret, the minimum amount, the receipt length, refunds no larger than what is left, the
``X-Refund-Idempotency`` key: the same key and body answer the first refund again; another body is refused).

Helpers build webhook payloads shaped as Razorpay's samples and sign them as Razorpay documents.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import string
import time
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.server import FakeApi, Recorded, json_response

KEY_ID = "rzp_test_FakeKeyId0001"
KEY_SECRET = "fake_razorpay_key_secret_0123456789"
WEBHOOK_SECRET = "fake_razorpay_webhook_secret_abcdef"
_ALNUM = string.ascii_letters + string.digits


def razorpay_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(14))


def error(
    description: str, status: int = 400, code: str = "BAD_REQUEST_ERROR", field: str | None = None
) -> Response:
    body: dict[str, Any] = {
        "error": {
            "code": code,
            "description": description,
            "source": "business",
            "step": "payment_initiation",
            "reason": "input_validation_failed",
            "metadata": {},
        }
    }
    if field:
        body["error"]["field"] = field
    return json_response(body, status)


def hmac_hex(secret: str, message: str | bytes) -> str:
    """HMAC-SHA256 hex, as Razorpay documents for payment and webhook signatures."""
    data = message.encode() if isinstance(message, str) else message
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def payment_signature(order_id: str, payment_id: str, secret: str = KEY_SECRET) -> str:
    return hmac_hex(secret, f"{order_id}|{payment_id}")


class FakeRazorpay(FakeApi):
    def __init__(self, *, key_id: str = KEY_ID, key_secret: str = KEY_SECRET) -> None:
        super().__init__()
        self.key_id, self.key_secret = key_id, key_secret
        self.orders: dict[str, dict[str, Any]] = {}
        self.payments: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, tuple[str, dict[str, Any]]] = {}  # key -> (request fingerprint, refund)

    def app(self) -> Starlette:
        w = self.wrap
        return Starlette(
            routes=[
                Route("/v1/orders", w(self._create_order), methods=["POST"]),
                Route("/v1/orders", w(self._list_orders), methods=["GET"]),
                Route("/v1/orders/{id}", w(self._fetch_order), methods=["GET"]),
                Route("/v1/orders/{id}/payments", w(self._order_payments), methods=["GET"]),
                Route("/v1/payments/{id}", w(self._fetch_payment), methods=["GET"]),
                Route("/v1/payments/{id}/refund", w(self._refund), methods=["POST"]),
            ]
        )

    # --- what the customer does at checkout (test controls) ------------------------------------------------

    def pay(
        self,
        order_id: str,
        *,
        status: str = "captured",
        amount: int | None = None,
        currency: str | None = None,
        method: str = "card",
        network: str = "Visa",
        last4: str = "1111",
        error_description: str | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            order = self.orders[order_id]
            payment_id = razorpay_id("pay")
            card_id = razorpay_id("card")
            payment: dict[str, Any] = {
                "id": payment_id,
                "entity": "payment",
                "amount": order["amount"] if amount is None else amount,
                "currency": currency or order["currency"],
                "status": status,
                "order_id": order_id,
                "invoice_id": None,
                "international": False,
                "method": method,
                "amount_refunded": 0,
                "refund_status": None,
                "captured": status == "captured",
                "description": None,
                "card_id": card_id if method == "card" else None,
                "bank": None,
                "wallet": None,
                "vpa": "success@razorpay" if method == "upi" else None,
                "email": "buyer@example.com",
                "contact": "+919999999999",
                "notes": [],
                "fee": 236 if status == "captured" else None,
                "tax": 36 if status == "captured" else None,
                "error_code": "BAD_REQUEST_ERROR" if status == "failed" else None,
                "error_description": (error_description or "Payment failed") if status == "failed" else None,
                "error_source": "customer" if status == "failed" else None,
                "error_step": "payment_authorization" if status == "failed" else None,
                "error_reason": "payment_failed" if status == "failed" else None,
                "acquirer_data": {"auth_code": "828553"},
                "created_at": int(time.time()),
                "_card": {
                    "id": card_id,
                    "entity": "card",
                    "name": "",
                    "last4": last4,
                    "network": network,
                    "type": "credit",
                    "issuer": None,
                    "international": False,
                    "emi": False,
                    "sub_type": "consumer",
                    "token_iin": None,
                },
            }
            self.payments[payment_id] = payment
            order["attempts"] += 1
            if status == "captured":
                order["amount_paid"] += payment["amount"]
                order["amount_due"] = max(order["amount"] - order["amount_paid"], 0)
                order["status"] = "paid"
            elif order["status"] == "created":
                order["status"] = "attempted"
            return self._public_payment(payment)

    def capture(self, payment_id: str) -> None:
        with self.lock:
            payment = self.payments[payment_id]
            payment["status"], payment["captured"] = "captured", True
            order = self.orders[payment["order_id"]]
            order["amount_paid"] += payment["amount"]
            order["amount_due"] = max(order["amount"] - order["amount_paid"], 0)
            order["status"] = "paid"

    # --- the API --------------------------------------------------------------------------------------------

    def _authorised(self, recorded: Recorded) -> bool:
        return recorded.basic_auth == (self.key_id, self.key_secret)

    @staticmethod
    def _public_payment(payment: dict[str, Any], *, card: bool = False) -> dict[str, Any]:
        public = {key: value for key, value in payment.items() if not key.startswith("_")}
        if card and payment["method"] == "card":
            public["card"] = dict(payment["_card"])
        return public

    async def _create_order(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Authentication failed", 401)
        data = recorded.json if isinstance(recorded.json, dict) else {}
        amount, currency, receipt = data.get("amount"), data.get("currency"), data.get("receipt")
        if not isinstance(amount, int) or isinstance(amount, bool):
            return error("The amount must be an integer.", field="amount")
        if not isinstance(currency, str) or len(currency) != 3:
            return error("The currency field is required.", field="currency")
        if amount < 100:
            return error(f"The amount must be at least {currency} 1.00", field="amount")
        if receipt is not None and (not isinstance(receipt, str) or len(receipt) > 40):
            return error("receipt: the receipt may not be greater than 40 characters.", field="receipt")
        order = {
            "id": razorpay_id("order"),
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency,
            "receipt": receipt,
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": data.get("notes") or [],
            "created_at": int(time.time()),
        }
        with self.lock:
            self.orders[order["id"]] = order
        return json_response(order)

    async def _list_orders(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Authentication failed", 401)
        query = dict(recorded.query)
        count = min(int(query.get("count", 10)), 100)
        skip = int(query.get("skip", 0))
        start, end = int(query.get("from", 0)), int(query.get("to", 2**40))
        with self.lock:
            chosen = [o for o in self.orders.values() if start <= o["created_at"] <= end]
        chosen.sort(key=lambda o: (o["created_at"], o["id"]), reverse=True)
        items = chosen[skip : skip + count]
        return json_response({"entity": "collection", "count": len(items), "items": items})

    async def _fetch_order(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Authentication failed", 401)
        with self.lock:
            order = self.orders.get(request.path_params["id"])
        if order is None:
            return error("The id provided does not exist")
        return json_response(order)

    async def _order_payments(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Authentication failed", 401)
        order_id = request.path_params["id"]
        with self.lock:
            if order_id not in self.orders:
                return error("The id provided does not exist")
            items = [self._public_payment(p) for p in self.payments.values() if p["order_id"] == order_id]
        items.reverse()
        return json_response({"entity": "collection", "count": len(items), "items": items})

    async def _fetch_payment(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Authentication failed", 401)
        expand = [value for key, value in recorded.query if key == "expand[]"]
        with self.lock:
            payment = self.payments.get(request.path_params["id"])
            if payment is None:
                return error("The id provided does not exist")
            return json_response(self._public_payment(payment, card="card" in expand))

    async def _refund(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Authentication failed", 401)
        payment_id = request.path_params["id"]
        data = recorded.json if isinstance(recorded.json, dict) else {}
        key = recorded.header("x-refund-idempotency")
        fingerprint = json.dumps([payment_id, data], sort_keys=True)
        with self.lock:
            if key is not None:
                if len(key) < 10 or not all(c in _ALNUM + "-_" for c in key):
                    return error("The idempotency key is invalid.")
                if key in self._idempotent:
                    first, refund = self._idempotent[key]
                    if first != fingerprint:
                        return error(
                            "Different request with the same idempotency key has already been processed."
                        )
                    return json_response(refund)  # the same refund again: nothing is refunded twice
            payment = self.payments.get(payment_id)
            if payment is None:
                return error("The id provided does not exist")
            if payment["status"] not in ("captured", "refunded"):
                return error("The payment has not been captured, so it cannot be refunded.")
            amount = data.get("amount", payment["amount"] - payment["amount_refunded"])
            if not isinstance(amount, int) or amount < 100:
                return error("The amount must be atleast INR 1.00", field="amount")
            if amount > payment["amount"] - payment["amount_refunded"]:
                return error("The refund amount provided is greater than amount captured", field="amount")
            refund = {
                "id": razorpay_id("rfnd"),
                "entity": "refund",
                "amount": amount,
                "receipt": data.get("receipt"),
                "currency": payment["currency"],
                "payment_id": payment_id,
                "notes": data.get("notes") or [],
                "acquirer_data": {"arn": None},
                "created_at": int(time.time()),
                "batch_id": None,
                "status": "processed",
                "speed_processed": "normal",
                "speed_requested": "normal",
            }
            self.refunds[refund["id"]] = refund
            payment["amount_refunded"] += amount
            full = payment["amount_refunded"] == payment["amount"]
            payment["refund_status"] = "full" if full else "partial"
            if full:
                payment["status"] = "refunded"
            if key is not None:
                self._idempotent[key] = (fingerprint, refund)
        return json_response(refund)


# --- webhooks --------------------------------------------------------------------------------------------------


def webhook(event: str, **entities: dict[str, Any]) -> dict[str, Any]:
    """A webhook body shaped as Razorpay's samples: ``{"entity": "event", "event": ..., "contains": [...],
    "payload": {"payment": {"entity": {...}}, ...}}``."""
    return {
        "entity": "event",
        "account_id": "acc_BFQ7uQEaa7j2z7",
        "event": event,
        "contains": list(entities),
        "payload": {name: {"entity": entity} for name, entity in entities.items()},
        "created_at": int(time.time()),
    }


def signed(
    body: dict[str, Any] | bytes, *, secret: str = WEBHOOK_SECRET, event_id: str | None = None
) -> tuple[dict[str, str], bytes]:
    """The headers Razorpay sends with a webhook (``X-Razorpay-Signature``: HMAC-SHA256 hex of the raw body
    with the webhook secret; ``x-razorpay-event-id``) and the raw body."""
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Razorpay-Signature": hmac_hex(secret, raw),
        "x-razorpay-event-id": event_id or razorpay_id("evt")[4:],
    }
    return headers, raw
