"""Outgoing webhooks: endpoints an admin registers, events queued for them through the outbox, delivery.

An event of a type in ``EVENT_TYPES`` (``realtime.emit`` calls ``enqueue``) becomes one ``WebhookDelivery`` row
per endpoint subscribed to its type, written in the event's own transaction, so a delivery exists exactly
when the change it announces commits. The runner's ``webhooks`` job sends what is due after commit:

- at least once: a delivery is claimed (``sending``) and that claim committed before the POST, so two processes
  never send it at the same moment; a process that dies mid-send leaves it ``sending``, and after
  ``STUCK_AFTER`` it is sent again. Receivers deduplicate by the event's ``id`` (also sent as
  ``Prepaid-Event-Id``);
- a 2xx answer is success; anything else (a status, a timeout, a refused connection) is retried with
  exponential backoff (``PREPAID_WEBHOOK_RETRY_BASE`` seconds, doubling, at most ``MAX_BACKOFF`` apart) until
  3 days after the event, then the delivery is ``failed``; an admin may redeliver it (a new delivery row);
- every attempt is signed ``Prepaid-Signature: t=...,v1=...`` (``prepaid.webhook_signature``) over the exact
  stored body, with the endpoint's secret, which is stored sealed (AES-GCM, the primitive that seals stored
  idempotent answers, ``prepaid.idempotency.seal``) under a key derived from ``PREPAID_SECRET_KEY`` and the
  endpoint's id, and unsealed only to sign.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid import __version__
from prepaid.auth.models import User
from prepaid.db import Database, utcnow
from prepaid.errors import InvalidRequest, NotFound
from prepaid.idempotency import seal, unseal
from prepaid.ids import new_id
from prepaid.notify.models import WebhookDelivery, WebhookEndpoint
from prepaid.observability import log
from prepaid.pagination import Page, PageParams, paginate
from prepaid.runner import JobFunction
from prepaid.settings import Settings
from prepaid.webhook_signature import HEADER, sign

# Events an endpoint may subscribe to.
EVENT_TYPES = frozenset(
    {"order.paid", "usage.recorded", "session.started", "session.ended", "wallet.low_balance"}
)
RETRY_FOR = timedelta(days=3)
MAX_BACKOFF = timedelta(hours=6)
STUCK_AFTER = timedelta(minutes=2)  # well over the request timeout (at most 60 s)
BATCH = 50
CONCURRENCY = 10
SECRET_PREFIX = "whsec_"
_ENDPOINTS = "prepaid_webhook_endpoints"


# ---------------------------------------------------------------- queueing (in the event's transaction)


async def _subscribed(session: AsyncSession) -> list[tuple[str, list[str]]]:
    """The live endpoints and their types, read once per session (one transaction in this server)."""
    cached: list[tuple[str, list[str]]] | None = session.sync_session.info.get(_ENDPOINTS)
    if cached is None:
        rows = await session.execute(
            select(WebhookEndpoint.id, WebhookEndpoint.event_types).where(
                WebhookEndpoint.deleted_at.is_(None)
            )
        )
        cached = [(endpoint_id, list(types or [])) for endpoint_id, types in rows.all()]
        session.sync_session.info[_ENDPOINTS] = cached
    return cached


async def enqueue(
    session: AsyncSession, *, user_id: str | None, event: dict[str, Any]
) -> list[WebhookDelivery]:
    """Queue ``event`` (``realtime.make_event``) for every endpoint subscribed to its type, in the caller's
    transaction. The body names the customer: ``{"id": user id, "external_id": the app's own id or null}``."""
    targets = [endpoint_id for endpoint_id, types in await _subscribed(session) if event["type"] in types]
    if not targets:
        return []
    customer = None
    if user_id is not None:
        user = await session.get(User, user_id)
        customer = {"id": user_id, "external_id": user.external_id if user is not None else None}
    body = json.dumps({**event, "customer": customer}, separators=(",", ":"), sort_keys=True)
    now = utcnow()
    deliveries = [
        WebhookDelivery(
            id=new_id("wdl"),
            endpoint_id=endpoint_id,
            event_id=event["id"],
            event_type=event["type"],
            body=body,
            status="pending",
            attempts=0,
            next_attempt_at=now,
            give_up_at=now + RETRY_FOR,
            created_at=now,
        )
        for endpoint_id in targets
    ]
    session.add_all(deliveries)
    return deliveries


# ---------------------------------------------------------------- endpoints (admin)


def _check_url(url: str, settings: Settings) -> str:
    try:
        parts = urlsplit(url)
        httpx.URL(url)  # what will send it must be able to read it
        _ = parts.port
    except (ValueError, httpx.InvalidURL):
        raise InvalidRequest("The url is not a valid URL.", code="invalid_url", param="url") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("The url must be an absolute http(s) URL.", code="invalid_url", param="url")
    if parts.username or parts.password:
        raise InvalidRequest("The url must not carry credentials.", code="invalid_url", param="url")
    if settings.env == "production" and parts.scheme != "https":
        raise InvalidRequest("Webhook URLs must use https in production.", code="https_required", param="url")
    return url


def _check_types(event_types: list[str]) -> list[str]:
    unknown = sorted(set(event_types) - EVENT_TYPES)
    if unknown:
        raise InvalidRequest(
            f"Unknown event type(s): {', '.join(unknown)}; known: {', '.join(sorted(EVENT_TYPES))}.",
            code="unknown_event_type",
            param="event_types",
        )
    if not event_types:
        raise InvalidRequest(
            "Subscribe to at least one event type.", code="no_event_types", param="event_types"
        )
    return sorted(set(event_types))


def _secret_cipher(secret_key: str, endpoint_id: str) -> AESGCM:
    """The key an endpoint's secret is sealed under: bound to the endpoint, so a sealed secret copied onto
    another row does not open."""
    material = b"\0".join([b"prepaid-webhook-secret-v1", endpoint_id.encode()])
    return AESGCM(hmac.new(secret_key.encode(), material, hashlib.sha256).digest())


def seal_secret(secret_key: str, endpoint_id: str, secret: str) -> bytes:
    return seal(_secret_cipher(secret_key, endpoint_id), secret.encode())


def unseal_secret(secret_key: str, endpoint_id: str, sealed: bytes) -> str:
    """The endpoint's secret; ``cryptography.exceptions.InvalidTag`` when ``secret_key`` is not the one that
    sealed it (or the row was tampered with)."""
    return unseal(_secret_cipher(secret_key, endpoint_id), sealed).decode()


async def create_endpoint(
    session: AsyncSession, *, url: str, event_types: list[str], description: str | None, settings: Settings
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its fresh secret (the caller shows it once; only its sealed form is stored)."""
    endpoint_id = new_id("whe")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        url=_check_url(url, settings),
        description=description,
        event_types=_check_types(event_types),
        secret_sealed=seal_secret(settings.secret_key, endpoint_id, secret),
        created_at=utcnow(),
    )
    session.add(endpoint)
    return endpoint, secret


async def list_endpoints(session: AsyncSession, *, page: PageParams) -> Page[WebhookEndpoint]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.deleted_at.is_(None))
    return await paginate(session, stmt, WebhookEndpoint.id, page)


async def get_endpoint(session: AsyncSession, *, endpoint_id: str, lock: bool = False) -> WebhookEndpoint:
    stmt = select(WebhookEndpoint).where(
        WebhookEndpoint.id == endpoint_id, WebhookEndpoint.deleted_at.is_(None)
    )
    endpoint = await session.scalar(stmt.with_for_update() if lock else stmt)
    if endpoint is None:
        raise NotFound(f"No webhook endpoint {endpoint_id}.", param="endpoint_id")
    return endpoint


async def delete_endpoint(session: AsyncSession, *, endpoint_id: str) -> WebhookEndpoint:
    """No more events for it: what is still waiting is cancelled and its secret forgotten."""
    endpoint = await get_endpoint(session, endpoint_id=endpoint_id, lock=True)
    endpoint.deleted_at = utcnow()
    endpoint.secret_sealed = None
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "pending")
        .values(status="cancelled", last_error="endpoint deleted")
    )
    return endpoint


async def list_deliveries(
    session: AsyncSession, *, endpoint_id: str, status: str | None, page: PageParams
) -> Page[WebhookDelivery]:
    await get_endpoint(session, endpoint_id=endpoint_id)
    stmt = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    return await paginate(session, stmt, WebhookDelivery.id, page)


async def redeliver(session: AsyncSession, *, endpoint_id: str, delivery_id: str) -> WebhookDelivery:
    """Send the same event (same body, same event id) again now, as a new delivery with its own 3 days."""
    await get_endpoint(session, endpoint_id=endpoint_id)
    original = await session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.id == delivery_id, WebhookDelivery.endpoint_id == endpoint_id
        )
    )
    if original is None:
        raise NotFound(f"No delivery {delivery_id} for this endpoint.", param="delivery_id")
    now = utcnow()
    again = WebhookDelivery(
        id=new_id("wdl"),
        endpoint_id=endpoint_id,
        event_id=original.event_id,
        event_type=original.event_type,
        body=original.body,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        give_up_at=now + RETRY_FOR,
        redelivery_of=original.id,
        created_at=now,
    )
    session.add(again)
    return again


# ---------------------------------------------------------------- delivery (the runner's job)


def backoff(attempts: int, settings: Settings) -> timedelta:
    """After the n-th failed attempt: base, 2 x base, 4 x base, ... at most ``MAX_BACKOFF``."""
    seconds = settings.webhook_retry_base * (2 ** min(max(0, attempts - 1), 30))
    return min(timedelta(seconds=seconds), MAX_BACKOFF)


async def _claim(db: Database, settings: Settings, now: datetime) -> list[tuple[WebhookDelivery, str, str]]:
    # A look without the write lock first: almost always there is nothing to send.
    async with db.transaction(write=False) as session:
        due = await session.scalar(
            select(WebhookDelivery.id)
            .where(
                or_(
                    and_(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now),
                    and_(WebhookDelivery.status == "sending", WebhookDelivery.claimed_at < now - STUCK_AFTER),
                )
            )
            .limit(1)
        )
    if due is None:
        return []
    async with db.transaction() as session:
        await session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == "sending", WebhookDelivery.claimed_at < now - STUCK_AFTER)
            .values(status="pending", next_attempt_at=now)
        )
        deliveries = list(
            (
                await session.scalars(
                    select(WebhookDelivery)
                    .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                    .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        if not deliveries:
            return []
        endpoints = {
            endpoint.id: endpoint
            for endpoint in await session.scalars(
                select(WebhookEndpoint).where(WebhookEndpoint.id.in_({d.endpoint_id for d in deliveries}))
            )
        }
        claimed = []
        for delivery in deliveries:
            endpoint = endpoints.get(delivery.endpoint_id)
            if endpoint is None or endpoint.deleted_at is not None or endpoint.secret_sealed is None:
                delivery.status, delivery.last_error = "cancelled", "endpoint deleted"
                continue
            try:
                secret = unseal_secret(settings.secret_key, endpoint.id, endpoint.secret_sealed)
            except InvalidTag:  # PREPAID_SECRET_KEY changed: nothing can be signed; try again later
                log.warning("webhook_secret_unsealable", endpoint_id=endpoint.id)
                delivery.last_error = "the endpoint's secret cannot be unsealed with PREPAID_SECRET_KEY"
                delivery.next_attempt_at = now + backoff(delivery.attempts + 1, settings)
                continue
            delivery.status, delivery.claimed_at = "sending", now
            delivery.attempts += 1
            claimed.append((delivery, endpoint.url, secret))
    return claimed


async def _post(
    client: httpx.AsyncClient, delivery: WebhookDelivery, url: str, secret: str
) -> tuple[int | None, str | None]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"prepaid-webhooks/{__version__}",
        HEADER: sign(secret, delivery.body),
        "Prepaid-Event-Id": delivery.event_id,
        "Prepaid-Event-Type": delivery.event_type,
        "Prepaid-Delivery-Id": delivery.id,
    }
    try:
        response = await client.post(url, content=delivery.body.encode(), headers=headers)
    except Exception as error:  # refused, timed out, reset, a bad address: an attempt that failed
        return None, f"{type(error).__name__}: {error}"[:500]
    if 200 <= response.status_code < 300:
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"


async def deliver_due(
    db: Database, settings: Settings, *, now: datetime | None = None, client: httpx.AsyncClient | None = None
) -> int:
    """Send every delivery due at ``now``; returns how many succeeded."""
    now = now or utcnow()
    claimed = await _claim(db, settings, now)
    if not claimed:
        return 0
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=settings.webhook_timeout, follow_redirects=False)
    gate = asyncio.Semaphore(CONCURRENCY)

    async def attempt(item: tuple[WebhookDelivery, str, str]) -> tuple[int | None, str | None]:
        async with gate:
            return await _post(http, *item)

    try:
        results = await asyncio.gather(*(attempt(item) for item in claimed))
    finally:
        if own_client:
            await http.aclose()
    succeeded = 0
    finished = utcnow()
    async with db.transaction() as session:
        for (delivery, _url, _secret), (status_code, error) in zip(claimed, results, strict=True):
            row = await session.get(WebhookDelivery, delivery.id, with_for_update=True)
            if row is None or row.status != "sending":
                continue
            row.last_attempt_at, row.last_status_code, row.claimed_at = finished, status_code, None
            if error is None:
                row.status, row.delivered_at, row.last_error = "succeeded", finished, None
                succeeded += 1
                continue
            row.last_error = error
            retry_at = max(now, finished) + backoff(row.attempts, settings)
            if retry_at > row.give_up_at:
                row.status = "failed"
                log.warning("webhook_failed", delivery_id=row.id, attempts=row.attempts)
            else:
                row.status, row.next_attempt_at = "pending", retry_at
                log.info("webhook_retry", delivery_id=row.id, attempts=row.attempts, status=status_code)
    return succeeded


def delivery_job() -> JobFunction:
    async def run(db: Database, settings: Settings) -> int:
        return await deliver_due(db, settings)

    return run
