"""A fake Stripe API: PaymentIntents, Checkout Sessions and Refunds as Stripe documents them (form-encoded
requests, ``expand``, list objects, its error object), with Stripe's idempotency: a POST with an
``Idempotency-Key`` already seen answers the first response again (``Idempotent-Replayed: true``); the same key
with other parameters is an ``idempotency_error``.

Webhook events are built as Stripe's event objects and signed as Stripe documents:
``Stripe-Signature: t=<unix time>,v1=<HMAC-SHA256 hex of "<t>.<raw body>" with the endpoint secret>``.
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

SECRET_KEY = "sk_test_FakeStripeSecretKey0123456789"
PUBLISHABLE_KEY = "pk_test_FakeStripePublishableKey0123"
WEBHOOK_SECRET = "whsec_FakeStripeWebhookSecret0123456789"
_ALNUM = string.ascii_letters + string.digits


def stripe_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def error(message: str, status: int = 400, type_: str = "invalid_request_error", **extra: Any) -> Response:
    return json_response({"error": {"type": type_, "message": message, **extra}}, status)


class FakeStripe(FakeApi):
    def __init__(self, *, secret_key: str = SECRET_KEY) -> None:
        super().__init__()
        self.secret_key = secret_key
        self.intents: dict[str, dict[str, Any]] = {}
        self.charges: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        self._idempotent: dict[str, tuple[str, int, Any]] = {}

    def app(self) -> Starlette:
        w = self.wrap
        return Starlette(
            routes=[
                Route("/v1/payment_intents", w(self._create_intent), methods=["POST"]),
                Route("/v1/payment_intents", w(self._list_intents), methods=["GET"]),
                Route("/v1/payment_intents/{id}", w(self._retrieve_intent), methods=["GET"]),
                Route("/v1/checkout/sessions", w(self._create_session), methods=["POST"]),
                Route("/v1/checkout/sessions/{id}", w(self._retrieve_session), methods=["GET"]),
                Route("/v1/refunds", w(self._create_refund), methods=["POST"]),
            ]
        )

    # --- what the customer does (test controls) ------------------------------------------------------------

    def succeed(
        self, intent_id: str, *, brand: str = "visa", last4: str = "4242", amount: int | None = None
    ) -> dict[str, Any]:
        with self.lock:
            intent = self.intents[intent_id]
            charge = self._charge(intent, brand=brand, last4=last4, amount=amount)
            intent.update(
                status="succeeded",
                amount_received=charge["amount"],
                latest_charge=charge["id"],
                last_payment_error=None,
                amount_capturable=0,
            )
            return dict(intent)

    def authorize(self, intent_id: str) -> None:
        with self.lock:
            intent = self.intents[intent_id]
            charge = self._charge(intent, brand="visa", last4="4242", captured=False)
            intent.update(
                status="requires_capture", amount_capturable=intent["amount"], latest_charge=charge["id"]
            )

    def decline(self, intent_id: str, *, decline_code: str = "generic_decline") -> None:
        with self.lock:
            intent = self.intents[intent_id]
            intent.update(
                status="requires_payment_method",
                last_payment_error={
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": decline_code,
                    "message": "Your card was declined.",
                },
            )

    def complete_session(self, session_id: str, *, paid: bool = True) -> dict[str, Any]:
        """The customer finishes Stripe's hosted page: the session's PaymentIntent exists (and succeeded when
        ``paid``; an unpaid session is an async payment method still settling)."""
        with self.lock:
            session = self.sessions[session_id]
            intent = self._new_intent(
                amount=session["amount_total"],
                currency=session["currency"],
                metadata=dict(session.get("_intent_metadata") or {}),
                description=None,
            )
            intent["status"] = "processing"
            session.update(status="complete", payment_intent=intent["id"], payment_status="unpaid")
        if paid:
            self.succeed(intent["id"])
            with self.lock:
                session["payment_status"] = "paid"
        with self.lock:
            return dict(session)

    # --- objects --------------------------------------------------------------------------------------------

    def _new_intent(
        self, *, amount: int, currency: str, metadata: dict[str, Any], description: str | None
    ) -> dict[str, Any]:
        intent_id = stripe_id("pi")
        intent = {
            "id": intent_id,
            "object": "payment_intent",
            "amount": amount,
            "amount_capturable": 0,
            "amount_received": 0,
            "automatic_payment_methods": {"enabled": True},
            "capture_method": "automatic",
            "client_secret": f"{intent_id}_secret_{secrets.token_hex(12)}",
            "confirmation_method": "automatic",
            "created": int(time.time()),
            "currency": currency,
            "description": description,
            "last_payment_error": None,
            "latest_charge": None,
            "livemode": False,
            "metadata": metadata,
            "payment_method": None,
            "payment_method_types": ["card"],
            "status": "requires_payment_method",
        }
        self.intents[intent_id] = intent
        return intent

    def _charge(
        self,
        intent: dict[str, Any],
        *,
        brand: str,
        last4: str,
        amount: int | None = None,
        captured: bool = True,
    ) -> dict[str, Any]:
        charge = {
            "id": stripe_id("ch"),
            "object": "charge",
            "amount": intent["amount"] if amount is None else amount,
            "amount_captured": (intent["amount"] if amount is None else amount) if captured else 0,
            "amount_refunded": 0,
            "captured": captured,
            "currency": intent["currency"],
            "payment_intent": intent["id"],
            "paid": True,
            "refunded": False,
            "status": "succeeded",
            "payment_method_details": {
                "type": "card",
                "card": {
                    "brand": brand,
                    "last4": last4,
                    "exp_month": 12,
                    "exp_year": 2034,
                    "funding": "credit",
                },
            },
            "created": int(time.time()),
        }
        self.charges[charge["id"]] = charge
        return charge

    def _expanded_intent(self, intent: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        public = dict(intent)
        if "latest_charge" in expand and public.get("latest_charge"):
            public["latest_charge"] = dict(self.charges[public["latest_charge"]])
        return public

    # --- idempotency and auth --------------------------------------------------------------------------------

    def _authorised(self, recorded: Recorded) -> bool:
        return recorded.bearer == self.secret_key

    def _replay(self, recorded: Recorded) -> Response | None:
        key = recorded.header("idempotency-key")
        if key is None or key not in self._idempotent:
            return None
        fingerprint, status, body = self._idempotent[key]
        if fingerprint != self._fingerprint(recorded):
            return error(
                "Keys for idempotent requests can only be used with the same parameters they were first used "
                f"with. Try using a key other than '{key}' if you meant to execute a different request.",
                type_="idempotency_error",
            )
        return json_response(body, status, headers={"Idempotent-Replayed": "true"})

    def _remember(self, recorded: Recorded, body: Any, status: int = 200) -> Response:
        key = recorded.header("idempotency-key")
        if key is not None:
            self._idempotent[key] = (self._fingerprint(recorded), status, body)
        return json_response(body, status, headers={"Idempotency-Key": key} if key else None)

    @staticmethod
    def _fingerprint(recorded: Recorded) -> str:
        return json.dumps([recorded.path, recorded.form], sort_keys=True)

    # --- the API --------------------------------------------------------------------------------------------

    async def _create_intent(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Invalid API Key provided: sk_test_****", 401)
        with self.lock:
            replay = self._replay(recorded)
            if replay is not None:
                return replay
            form = recorded.form
            try:
                amount = int(form["amount"])
            except (KeyError, ValueError):
                return error("Missing required param: amount.", param="amount", code="parameter_missing")
            currency = form.get("currency", "")
            if amount < 50:
                return error("Amount must be at least $0.50 usd", param="amount", code="amount_too_small")
            intent = self._new_intent(
                amount=amount,
                currency=currency,
                metadata=form.get("metadata", {}),
                description=form.get("description"),
            )
            return self._remember(recorded, dict(intent))

    async def _retrieve_intent(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Invalid API Key provided: sk_test_****", 401)
        expand = [value for key, value in recorded.query if key.startswith("expand")]
        with self.lock:
            intent = self.intents.get(request.path_params["id"])
            if intent is None:
                return error(
                    f"No such payment_intent: '{request.path_params['id']}'",
                    404,
                    code="resource_missing",
                    param="intent",
                )
            return json_response(self._expanded_intent(intent, expand))

    async def _list_intents(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Invalid API Key provided: sk_test_****", 401)
        query = dict(recorded.query)
        limit = min(int(query.get("limit", 10)), 100)
        gte, lte = int(query.get("created[gte]", 0)), int(query.get("created[lte]", 2**40))
        after = query.get("starting_after")
        with self.lock:
            chosen = [dict(i) for i in self.intents.values() if gte <= i["created"] <= lte]
        chosen.sort(key=lambda i: (i["created"], i["id"]), reverse=True)
        if after:
            ids = [i["id"] for i in chosen]
            chosen = chosen[ids.index(after) + 1 :] if after in ids else []
        page = chosen[:limit]
        return json_response(
            {"object": "list", "data": page, "has_more": len(chosen) > limit, "url": "/v1/payment_intents"}
        )

    async def _create_session(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Invalid API Key provided: sk_test_****", 401)
        with self.lock:
            replay = self._replay(recorded)
            if replay is not None:
                return replay
            form = recorded.form
            items = form.get("line_items") or []
            if form.get("mode") != "payment" or not items or not form.get("success_url"):
                return error("Missing required param: line_items.", param="line_items")
            price = items[0]["price_data"]
            amount = int(price["unit_amount"]) * int(items[0].get("quantity", 1))
            session_id = stripe_id("cs_test")
            session = {
                "id": session_id,
                "object": "checkout.session",
                "amount_subtotal": amount,
                "amount_total": amount,
                "cancel_url": form.get("cancel_url"),
                "client_reference_id": form.get("client_reference_id"),
                "created": int(time.time()),
                "currency": price["currency"],
                "customer_email": form.get("customer_email"),
                "livemode": False,
                "metadata": form.get("metadata", {}),
                "mode": "payment",
                "payment_intent": None,
                "payment_status": "unpaid",
                "status": "open",
                "success_url": form.get("success_url"),
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
                "_intent_metadata": (form.get("payment_intent_data") or {}).get("metadata", {}),
            }
            self.sessions[session_id] = session
            return self._remember(recorded, self._public_session(session, []))

    def _public_session(self, session: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        public = {key: value for key, value in session.items() if not key.startswith("_")}
        if public.get("payment_intent") and any(e.startswith("payment_intent") for e in expand):
            nested = [e.removeprefix("payment_intent.") for e in expand if e.startswith("payment_intent.")]
            public["payment_intent"] = self._expanded_intent(self.intents[public["payment_intent"]], nested)
        return public

    async def _retrieve_session(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Invalid API Key provided: sk_test_****", 401)
        expand = [value for key, value in recorded.query if key.startswith("expand")]
        with self.lock:
            session = self.sessions.get(request.path_params["id"])
            if session is None:
                return error(
                    f"No such checkout.session: '{request.path_params['id']}'", 404, code="resource_missing"
                )
            return json_response(self._public_session(session, expand))

    async def _create_refund(self, request: Request, recorded: Recorded) -> Response:
        if not self._authorised(recorded):
            return error("Invalid API Key provided: sk_test_****", 401)
        with self.lock:
            replay = self._replay(recorded)
            if replay is not None:
                return replay
            form = recorded.form
            intent = self.intents.get(form.get("payment_intent", ""))
            charge = self.charges.get(form.get("charge", "")) or (
                self.charges.get(intent["latest_charge"]) if intent and intent.get("latest_charge") else None
            )
            if charge is None or not charge["captured"]:
                return error(
                    "This PaymentIntent does not have a successful charge to refund.",
                    code="charge_not_refundable" if charge else "resource_missing",
                )
            left = charge["amount"] - charge["amount_refunded"]
            amount = int(form.get("amount", left))
            if amount > left:
                return error(
                    f"Refund amount ({amount}) is greater than unrefunded amount on charge ({left})",
                    code="amount_too_large",
                    param="amount",
                )
            refund = {
                "id": stripe_id("re"),
                "object": "refund",
                "amount": amount,
                "charge": charge["id"],
                "created": int(time.time()),
                "currency": charge["currency"],
                "metadata": form.get("metadata", {}),
                "payment_intent": charge["payment_intent"],
                "reason": form.get("reason"),
                "status": "succeeded",
            }
            self.refunds[refund["id"]] = refund
            charge["amount_refunded"] += amount
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
            return self._remember(recorded, refund)


# --- webhooks --------------------------------------------------------------------------------------------------


def event(event_type: str, obj: dict[str, Any], *, created: int | None = None) -> dict[str, Any]:
    """An event object as Stripe sends it to a webhook endpoint."""
    return {
        "id": stripe_id("evt"),
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": created or int(time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


def signature_header(raw: bytes, *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """``Stripe-Signature`` as Stripe's docs describe it: ``t=`` the Unix time, ``v1=`` the HMAC-SHA256 hex of
    ``"{t}.{raw body}"`` keyed with the endpoint's signing secret."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def signed(
    body: dict[str, Any], *, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[dict[str, str], bytes]:
    raw = json.dumps(body).encode()
    return {
        "Content-Type": "application/json",
        "Stripe-Signature": signature_header(raw, secret=secret, timestamp=timestamp),
    }, raw
