"""A Python client for prepaid's API: ``Prepaid`` (sync) and ``AsyncPrepaid`` (async), over httpx.

Both send the requests ``_core.Build`` describes and share its retry rule and error mapping: every POST
carries an ``Idempotency-Key`` (a uuid4 unless given), so a network error or a 5xx is retried with the same key
and charged at most once; errors raise typed exceptions carrying the API error object
(``InsufficientCredits.available``, ``.code``, ``.param``). The API key comes from ``api_key=`` or
``PREPAID_API_KEY``, the server from ``base_url=`` or ``PREPAID_BASE_URL``.

    with Prepaid(base_url="https://credits.example.com") as client:
        client.upsert_customer("+919812345678", phone="+919812345678")
        client.record_usage(customer="+919812345678", meter="image", quantity=1, id="msg-42")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from prepaid.client._core import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    AiHoldState,
    Build,
    Config,
    Request,
    connection_error,
    default_wallet,
    delay,
    result,
    should_retry,
    usage_event,
)
from prepaid.client.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    Conflict,
    InsufficientCredits,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    PrepaidError,
    RateLimited,
    ServerError,
)
from prepaid.webhook_signature import SignatureError
from prepaid.webhook_signature import verify_signature as verify_webhook

__all__ = [
    "APIConnectionError",
    "APIError",
    "AiHold",
    "AsyncPrepaid",
    "AuthenticationError",
    "Conflict",
    "InsufficientCredits",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "Prepaid",
    "PrepaidError",
    "RateLimited",
    "ServerError",
    "SignatureError",
    "usage_event",
    "verify_webhook",
]

AiHold = AiHoldState


class _Base:
    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
    ) -> None:
        self._config = Config.build(api_key, base_url, timeout, max_retries, backoff)


class Prepaid(_Base):
    """The synchronous client. Pass ``transport=`` (an httpx transport) to talk to an app in process."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            api_key, base_url=base_url, timeout=timeout, max_retries=max_retries, backoff=backoff
        )
        self._http = httpx.Client(
            base_url=self._config.base_url,
            timeout=timeout,
            headers=self._config.headers(),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Prepaid:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, request: Request) -> Any:
        attempt = 0
        while True:
            try:
                response = self._http.request(request.method, request.path, **request.kwargs())
            except httpx.TransportError as exc:
                if not should_retry(request, attempt, self._config, None):
                    raise connection_error(exc) from exc
                time.sleep(delay(attempt, self._config, None))
            else:
                if not should_retry(request, attempt, self._config, response):
                    return result(response)
                time.sleep(delay(attempt, self._config, response))
            attempt += 1

    # customers
    def upsert_customer(
        self, external_id: str, *, name: str | None = None, email: str | None = None, phone: str | None = None
    ) -> dict[str, Any]:
        """Create or update the customer the app knows as ``external_id`` (a new one gets the signup credits)."""
        answer: dict[str, Any] = self._send(
            Build.upsert_customer(external_id, name=name, email=email, phone=phone)
        )
        return answer

    def get_customer(self, external_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(Build.get_customer(external_id))
        return answer

    def balance(self, external_id: str) -> dict[str, Any]:
        """``{"asset", "balance", "available", "held", "debt"}`` over the customer's wallets."""
        answer: dict[str, Any] = self.get_customer(external_id)["balance"]
        return answer

    # usage
    def record_usage(
        self, *, id: str, meter: str, idempotency_key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """One usage event (``customer`` or ``wallet``; ``quantity`` or token counts); its ``id`` dedupes."""
        answer: dict[str, Any] = self._send(Build.usage(usage_event(id, meter, **fields), idempotency_key))
        return answer

    def record_usage_batch(
        self, events: list[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """Up to 1,000 events (build them with ``usage_event``); the answer says per event what happened."""
        answer: dict[str, Any] = self._send(Build.usage_batch(events, idempotency_key))
        return answer

    # holds for AI calls
    @contextlib.contextmanager
    def ai_hold(
        self,
        *,
        meter: str,
        input_tokens: int,
        max_output_tokens: int,
        customer: str | None = None,
        wallet: str | None = None,
        cached_input_tokens: int = 0,
        expires_in: int | None = None,
        reason: str | None = None,
    ) -> Iterator[AiHold]:
        """Hold the worst case of a model call; inside the block call ``hold.set_usage(...)`` with the real
        token counts, which are captured on exit (the rest released). An exception, or no usage set, releases
        the whole hold. After the block ``hold.capture`` is the capture's answer."""
        if wallet is None:
            if customer is None:
                raise ValueError("ai_hold needs customer= or wallet=")
            wallet = default_wallet(self.get_customer(customer), None)
        state = AiHold(meter)
        state.hold = self._send(
            Build.ai_hold(
                wallet,
                meter,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                cached_input_tokens=cached_input_tokens,
                expires_in=expires_in,
                reason=reason,
                idempotency_key=None,
            )
        )
        try:
            yield state
        except BaseException:
            with contextlib.suppress(PrepaidError):  # the caller's error wins; the server expires the hold
                self._send(Build.release_hold(state.id, "the call failed"))
                state.released = True
            raise
        if state.usage is None:
            self._send(Build.release_hold(state.id, "no usage reported"))
            state.released = True
        else:
            state.capture = self._send(Build.ai_capture(state.id, state.usage))

    # orders
    def create_order(
        self,
        *,
        currency: str,
        customer: str | None = None,
        plan: str | None = None,
        quantity: int | None = None,
        coupon: str | None = None,
        wallet: str | None = None,
        gateway: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """An order for ``customer`` (a server key with ``orders:write``); send the buyer ``checkout_url``."""
        answer: dict[str, Any] = self._send(
            Build.create_order(
                currency=currency,
                customer=customer,
                plan=plan,
                quantity=quantity,
                coupon=coupon,
                wallet=wallet,
                gateway=gateway,
                idempotency_key=idempotency_key,
            )
        )
        return answer

    def get_order(self, order_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(Build.get_order(order_id))
        return answer


class AsyncPrepaid(_Base):
    """The asynchronous client: the same methods as ``Prepaid``, awaited; ``ai_hold`` is ``async with``."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            api_key, base_url=base_url, timeout=timeout, max_retries=max_retries, backoff=backoff
        )
        self._http = httpx.AsyncClient(
            base_url=self._config.base_url,
            timeout=timeout,
            headers=self._config.headers(),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncPrepaid:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _send(self, request: Request) -> Any:
        attempt = 0
        while True:
            try:
                response = await self._http.request(request.method, request.path, **request.kwargs())
            except httpx.TransportError as exc:
                if not should_retry(request, attempt, self._config, None):
                    raise connection_error(exc) from exc
                await asyncio.sleep(delay(attempt, self._config, None))
            else:
                if not should_retry(request, attempt, self._config, response):
                    return result(response)
                await asyncio.sleep(delay(attempt, self._config, response))
            attempt += 1

    async def upsert_customer(
        self, external_id: str, *, name: str | None = None, email: str | None = None, phone: str | None = None
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(
            Build.upsert_customer(external_id, name=name, email=email, phone=phone)
        )
        return answer

    async def get_customer(self, external_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(Build.get_customer(external_id))
        return answer

    async def balance(self, external_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = (await self.get_customer(external_id))["balance"]
        return answer

    async def record_usage(
        self, *, id: str, meter: str, idempotency_key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(
            Build.usage(usage_event(id, meter, **fields), idempotency_key)
        )
        return answer

    async def record_usage_batch(
        self, events: list[dict[str, Any]], *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(Build.usage_batch(events, idempotency_key))
        return answer

    @contextlib.asynccontextmanager
    async def ai_hold(
        self,
        *,
        meter: str,
        input_tokens: int,
        max_output_tokens: int,
        customer: str | None = None,
        wallet: str | None = None,
        cached_input_tokens: int = 0,
        expires_in: int | None = None,
        reason: str | None = None,
    ) -> AsyncIterator[AiHold]:
        if wallet is None:
            if customer is None:
                raise ValueError("ai_hold needs customer= or wallet=")
            wallet = default_wallet(await self.get_customer(customer), None)
        state = AiHold(meter)
        state.hold = await self._send(
            Build.ai_hold(
                wallet,
                meter,
                input_tokens=input_tokens,
                max_output_tokens=max_output_tokens,
                cached_input_tokens=cached_input_tokens,
                expires_in=expires_in,
                reason=reason,
                idempotency_key=None,
            )
        )
        try:
            yield state
        except BaseException:
            with contextlib.suppress(PrepaidError):  # the caller's error wins; the server expires the hold
                await self._send(Build.release_hold(state.id, "the call failed"))
                state.released = True
            raise
        if state.usage is None:
            await self._send(Build.release_hold(state.id, "no usage reported"))
            state.released = True
        else:
            state.capture = await self._send(Build.ai_capture(state.id, state.usage))

    async def create_order(
        self,
        *,
        currency: str,
        customer: str | None = None,
        plan: str | None = None,
        quantity: int | None = None,
        coupon: str | None = None,
        wallet: str | None = None,
        gateway: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(
            Build.create_order(
                currency=currency,
                customer=customer,
                plan=plan,
                quantity=quantity,
                coupon=coupon,
                wallet=wallet,
                gateway=gateway,
                idempotency_key=idempotency_key,
            )
        )
        return answer

    async def get_order(self, order_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._send(Build.get_order(order_id))
        return answer
