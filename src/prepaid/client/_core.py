"""What the sync and async clients share: settings, request building, the retry rule and error mapping.
Neither touches the network here; ``Prepaid`` and ``AsyncPrepaid`` only send what ``Request`` describes."""

from __future__ import annotations

import os
import random
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from prepaid.client.errors import APIConnectionError, PrepaidError, error_for

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_BACKOFF = 0.5
RETRY_STATUSES = frozenset({500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Config:
    api_key: str
    base_url: str
    timeout: float
    max_retries: int
    backoff: float

    @classmethod
    def build(
        cls,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
    ) -> Config:
        key = api_key if api_key is not None else os.environ.get("PREPAID_API_KEY")
        if not key:
            raise PrepaidError("No API key: pass api_key= or set PREPAID_API_KEY.")
        url = base_url or os.environ.get("PREPAID_BASE_URL") or DEFAULT_BASE_URL
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        return cls(key, url.rstrip("/"), timeout, max_retries, backoff)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "User-Agent": "prepaid-python"}


@dataclass
class Request:
    """One API call. A POST always carries an ``Idempotency-Key`` (a uuid4 unless given), so a retry is the same
    request to the server and is answered once; requests without one are never retried."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    idempotency_key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method == "POST" and self.idempotency_key is None:
            self.idempotency_key = str(uuid.uuid4())
        if self.idempotency_key is not None:
            self.headers["Idempotency-Key"] = self.idempotency_key

    @property
    def retryable(self) -> bool:
        return self.method in IDEMPOTENT_METHODS or self.idempotency_key is not None

    def kwargs(self) -> dict[str, Any]:
        params = {k: v for k, v in (self.params or {}).items() if v is not None}
        return {"json": self.json, "params": params or None, "headers": self.headers}


def segment(value: str) -> str:
    """A path segment from caller data (an external id may hold '/' or '?')."""
    return quote(value, safe="")


def should_retry(request: Request, attempt: int, config: Config, response: httpx.Response | None) -> bool:
    if not request.retryable or attempt >= config.max_retries:
        return False
    return response is None or response.status_code in RETRY_STATUSES


def delay(attempt: int, config: Config, response: httpx.Response | None) -> float:
    if response is not None:
        after = response.headers.get("Retry-After")
        if after is not None and after.isdigit():
            return min(float(after), 30.0)
    return float(config.backoff * (2**attempt) * (0.5 + random.random() / 2))


def result(response: httpx.Response) -> Any:
    """The decoded body of a success, or the typed exception of an error answer."""
    try:
        body = response.json() if response.content else None
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise error_for(response.status_code, body)
    return body


def connection_error(exc: Exception) -> APIConnectionError:
    return APIConnectionError(f"Could not reach prepaid: {exc.__class__.__name__}: {exc}")


# ---------------------------------------------------------------- request bodies


def drop_none(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def usage_event(
    id: str,
    meter: str,
    *,
    customer: str | None = None,
    wallet: str | None = None,
    quantity: int | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    cached_input_tokens: int | None = None,
    timestamp: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One usage event as ``POST /v1/usage`` (and each item of a batch) takes it."""
    return drop_none(
        id=id,
        meter=meter,
        customer=customer,
        wallet=wallet,
        quantity=quantity,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        timestamp=timestamp,
        metadata=metadata,
    )


def default_wallet(customer: dict[str, Any], asset: str | None) -> str:
    """The wallet an AI hold goes on when none is named: the customer's first wallet (in ``asset``)."""
    wallets = [w for w in customer.get("wallets", []) if asset is None or w.get("asset") == asset]
    if not wallets:
        raise PrepaidError(f"Customer {customer.get('external_id') or customer.get('id')} has no wallet.")
    return str(wallets[0]["id"])


class AiHoldState:
    """What an AI hold knows between its hold and its capture: set ``usage`` with ``set_usage``."""

    def __init__(self, meter: str) -> None:
        self.meter = meter
        self.hold: dict[str, Any] = {}
        self.capture: dict[str, Any] | None = None
        self.usage: dict[str, int] | None = None
        self.released = False

    @property
    def id(self) -> str:
        return str(self.hold["hold"]["id"])

    @property
    def estimate(self) -> int:
        """What was held: the worst case's cost."""
        return int(self.hold["estimate"]["cost"])

    def set_usage(self, *, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> None:
        """The real token counts of the call: captured when the ``with`` block ends."""
        self.usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
        }


def keyed(method: str, path: str, body: dict[str, Any], key: str | None) -> Request:
    """A ledger-style POST whose body also names its ``idempotency_key``: the same key in both places."""
    key = key or str(uuid.uuid4())
    return Request(method, path, json={**body, "idempotency_key": key}, idempotency_key=key)


class Build:
    """Every endpoint the client speaks, as a ``Request``; the sync and async clients only send them."""

    @staticmethod
    def upsert_customer(
        external_id: str, *, name: str | None, email: str | None, phone: str | None
    ) -> Request:
        body = drop_none(name=name, email=email, phone=phone)
        return Request("PUT", f"/v1/customers/{segment(external_id)}", json=body)

    @staticmethod
    def get_customer(external_id: str) -> Request:
        return Request("GET", f"/v1/customers/{segment(external_id)}")

    @staticmethod
    def usage(event: dict[str, Any], idempotency_key: str | None) -> Request:
        return Request("POST", "/v1/usage", json=event, idempotency_key=idempotency_key)

    @staticmethod
    def usage_batch(events: list[dict[str, Any]], idempotency_key: str | None) -> Request:
        return Request("POST", "/v1/usage/batch", json={"events": events}, idempotency_key=idempotency_key)

    @staticmethod
    def ai_hold(
        wallet: str,
        meter: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        cached_input_tokens: int,
        expires_in: int | None,
        reason: str | None,
        idempotency_key: str | None,
    ) -> Request:
        estimate = {
            "meter": meter,
            "input_tokens": input_tokens,
            "max_output_tokens": max_output_tokens,
            "cached_input_tokens": cached_input_tokens,
        }
        body = drop_none(wallet=wallet, estimate=estimate, expires_in=expires_in, reason=reason)
        return keyed("POST", "/v1/holds", body, idempotency_key)

    @staticmethod
    def ai_capture(hold_id: str, usage: dict[str, int], idempotency_key: str | None = None) -> Request:
        """The real token counts of a hold made from an estimate: their cost is captured, the rest released."""
        return keyed("POST", f"/v1/holds/{segment(hold_id)}/capture", {"usage": dict(usage)}, idempotency_key)

    @staticmethod
    def release_hold(hold_id: str, reason: str = "", idempotency_key: str | None = None) -> Request:
        return keyed("POST", f"/v1/holds/{segment(hold_id)}/release", {"reason": reason}, idempotency_key)

    @staticmethod
    def create_order(
        *,
        currency: str,
        customer: str | None,
        plan: str | None,
        quantity: int | None,
        coupon: str | None,
        wallet: str | None,
        gateway: str | None,
        idempotency_key: str | None,
    ) -> Request:
        body = drop_none(
            currency=currency,
            customer=customer,
            plan=plan,
            quantity=quantity,
            coupon=coupon,
            wallet=wallet,
            gateway=gateway,
        )
        return Request("POST", "/v1/orders", json=body, idempotency_key=idempotency_key)

    @staticmethod
    def get_order(order_id: str) -> Request:
        return Request("GET", f"/v1/orders/{segment(order_id)}")
