"""Routes for apps: the realtime stream (``/v1/stream``, a WebSocket) and outgoing webhook endpoints (admin).

The stream pushes the signed-in user's own events (``realtime.STREAM_TYPES``) as JSON text messages
``{"id", "type", "created_at", "data"}``; the first message is ``{"type": "stream.ready"}`` once the connection
is subscribed. Credentials: an access token (``Authorization: Bearer``), an API key with ``balance:read``
(the key owner's events), or the browser session cookie, which needs an ``Origin`` of ``PREPAID_BASE_URL`` or
one of ``PREPAID_CORS_ORIGINS``. A refused handshake answers the error object with its HTTP status (401, 403,
429). The credentials are checked again every ``RECHECK_EVERY`` seconds: a connection whose token expired,
session ended or account was deactivated is closed with code 1008 (the client reconnects with fresh
credentials); a client too slow to read its events is closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Path, Query, WebSocket, status
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.db import Database, utcnow
from prepaid.deps import SESSION_COOKIE, Admin, Pagination, Session, SettingsDep
from prepaid.errors import AuthenticationError, DomainError, PermissionDenied, RateLimited
from prepaid.notify import realtime, webhooks_out
from prepaid.notify.models import WebhookDelivery, WebhookEndpoint
from prepaid.notify.schemas import (
    WebhookDeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointRead,
)
from prepaid.observability import log
from prepaid.pagination import ListResponse
from prepaid.settings import Settings

router = APIRouter(prefix="/v1", tags=["webhook endpoints"])
stream_router = APIRouter()
EndpointId = Annotated[str, Path(max_length=64)]
DeliveryId = Annotated[str, Path(max_length=64)]
RECHECK_EVERY = 60.0
MAX_STREAMS_PER_USER = 20  # per server process


# ---------------------------------------------------------------- outgoing webhook endpoints (admin)


def _endpoint(endpoint: WebhookEndpoint) -> WebhookEndpointRead:
    return WebhookEndpointRead(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        event_types=list(endpoint.event_types),
        created_at=endpoint.created_at,
        deleted=endpoint.deleted_at is not None,
    )


def _delivery(delivery: WebhookDelivery) -> WebhookDeliveryRead:
    return WebhookDeliveryRead(
        id=delivery.id,
        endpoint_id=delivery.endpoint_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        status=delivery.status,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at if delivery.status == "pending" else None,
        last_attempt_at=delivery.last_attempt_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        delivered_at=delivery.delivered_at,
        redelivery_of=delivery.redelivery_of,
        created_at=delivery.created_at,
        body=json.loads(delivery.body),
    )


@router.post("/webhook_endpoints", status_code=status.HTTP_201_CREATED)
async def create_webhook_endpoint(
    body: WebhookEndpointCreate, admin: Admin, session: Session, settings: SettingsDep
) -> WebhookEndpointCreated:
    """Register an app's URL for the event types it wants; the answer shows the signing secret, once."""
    endpoint, secret = await webhooks_out.create_endpoint(
        session, url=body.url, event_types=body.event_types, description=body.description, settings=settings
    )
    read = _endpoint(endpoint)
    await audit_service.record(
        session,
        actor=admin.audit_actor,
        action="webhook_endpoint.create",
        object_type="webhook_endpoint",
        object_id=endpoint.id,
        before=None,
        after=read.model_dump(mode="json"),
    )
    return WebhookEndpointCreated(**read.model_dump(), secret=secret)


@router.get("/webhook_endpoints")
async def list_webhook_endpoints(
    admin: Admin, session: Session, page: Pagination
) -> ListResponse[WebhookEndpointRead]:
    """The registered endpoints, newest first (secrets are never shown again)."""
    found = await webhooks_out.list_endpoints(session, page=page)
    return ListResponse[WebhookEndpointRead](data=[_endpoint(e) for e in found.data], has_more=found.has_more)


@router.delete("/webhook_endpoints/{endpoint_id}")
async def delete_webhook_endpoint(
    endpoint_id: EndpointId, admin: Admin, session: Session
) -> WebhookEndpointRead:
    """Stop sending to this endpoint; deliveries still waiting are cancelled."""
    before = _endpoint(await webhooks_out.get_endpoint(session, endpoint_id=endpoint_id)).model_dump(
        mode="json"
    )
    endpoint = await webhooks_out.delete_endpoint(session, endpoint_id=endpoint_id)
    read = _endpoint(endpoint)
    await audit_service.record(
        session,
        actor=admin.audit_actor,
        action="webhook_endpoint.delete",
        object_type="webhook_endpoint",
        object_id=endpoint.id,
        before=before,
        after=read.model_dump(mode="json"),
    )
    return read


@router.get("/webhook_endpoints/{endpoint_id}/deliveries")
async def list_webhook_deliveries(
    endpoint_id: EndpointId,
    admin: Admin,
    session: Session,
    page: Pagination,
    status: Annotated[
        Literal["pending", "sending", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
) -> ListResponse[WebhookDeliveryRead]:
    """The endpoint's delivery log, newest first: each event sent to it, its attempts and last answer."""
    found = await webhooks_out.list_deliveries(session, endpoint_id=endpoint_id, status=status, page=page)
    return ListResponse[WebhookDeliveryRead](data=[_delivery(d) for d in found.data], has_more=found.has_more)


@router.post(
    "/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver", status_code=status.HTTP_201_CREATED
)
async def redeliver_webhook(
    endpoint_id: EndpointId, delivery_id: DeliveryId, admin: Admin, session: Session
) -> WebhookDeliveryRead:
    """Send that delivery's event again (same body and event id), as a new delivery due now."""
    delivery = await webhooks_out.redeliver(session, endpoint_id=endpoint_id, delivery_id=delivery_id)
    read = _delivery(delivery)
    await audit_service.record(
        session,
        actor=admin.audit_actor,
        action="webhook_delivery.redeliver",
        object_type="webhook_delivery",
        object_id=delivery.id,
        before=None,
        after={"redelivery_of": delivery_id, "endpoint_id": endpoint_id, "event_id": delivery.event_id},
    )
    return read


# ---------------------------------------------------------------- the realtime stream


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url.strip())
        given = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{given}" if given is not None and given != default else ""
    return f"{parts.scheme.lower()}://{parts.hostname.lower()}{port}"


def allowed_origins(settings: Settings) -> set[str]:
    origins = {_origin(settings.base_url), *(_origin(o) for o in settings.cors_origin_list)}
    return {origin for origin in origins if origin is not None}


def _credentials(websocket: WebSocket) -> auth_service.Credentials:
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    return auth_service.Credentials(
        bearer=value.strip() if scheme.lower() == "bearer" and value.strip() else None,
        api_key=websocket.headers.get("x-api-key") or None,
        session_cookie=websocket.cookies.get(SESSION_COOKIE) or None,
    )


async def authenticate(websocket: WebSocket, db: Database, settings: Settings) -> auth_service.Principal:
    credentials = _credentials(websocket)
    if credentials.bearer is None and credentials.api_key is None and credentials.session_cookie is not None:
        origin = websocket.headers.get("origin")
        if origin is None or _origin(origin) not in allowed_origins(settings):
            raise PermissionDenied(
                "A browser session may open the stream only from this server's own pages.",
                code="origin_not_allowed",
                param="Origin",
            )
    async with db.transaction(write=False) as session:
        principal = await auth_service.resolve_principal(session, credentials=credentials, settings=settings)
    if principal is None:
        raise AuthenticationError()
    if not principal.has_scope("balance:read"):
        raise PermissionDenied(
            "This API key lacks the balance:read scope.", code="missing_scope", param="balance:read"
        )
    return principal


async def _deny(websocket: WebSocket, error: DomainError) -> None:
    response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # the server cannot answer a handshake with HTTP: a plain close
        await websocket.close(code=1008, reason=error.code)


@stream_router.websocket("/v1/stream")
async def stream(websocket: WebSocket) -> None:
    """The signed-in user's events, live."""
    app = websocket.app
    db: Database = app.state.db
    settings: Settings = app.state.settings
    hub: realtime.Hub = app.state.realtime_hub
    try:
        principal = await authenticate(websocket, db, settings)
        if len(hub.subscribers.get(principal.user.id, ())) >= MAX_STREAMS_PER_USER:
            raise RateLimited(retry_after=10, message="Too many open streams for this user.")
    except DomainError as error:
        await _deny(websocket, error)
        return
    user_id = principal.user.id
    subscriber = hub.subscribe(user_id)
    try:
        await websocket.accept()
        await websocket.send_text(
            json.dumps(
                {"type": "stream.ready", "created_at": utcnow().isoformat(), "data": {"user_id": user_id}}
            )
        )
        reason = await _serve(websocket, subscriber, db, settings)
        if reason == "expired":
            await websocket.close(code=1008, reason="credentials_expired")
        elif reason == "overflow":
            await websocket.close(code=1013, reason="too_slow")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        hub.unsubscribe(subscriber)


async def _serve(
    websocket: WebSocket, subscriber: realtime.Subscriber, db: Database, settings: Settings
) -> str:
    async def pump() -> str:
        while True:
            item = await subscriber.queue.get()
            await websocket.send_text(json.dumps(item, separators=(",", ":")))

    async def listen() -> str:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return "gone"

    async def watch() -> str:
        while True:
            try:
                await asyncio.wait_for(subscriber.overflowed.wait(), timeout=RECHECK_EVERY)
                return "overflow"
            except TimeoutError:
                try:
                    await authenticate(websocket, db, settings)
                except DomainError:
                    return "expired"
                except Exception as error:  # the database is away for a moment: keep the stream
                    log.warning("stream_recheck_failed", error_type=type(error).__name__)

    tasks = [asyncio.create_task(job()) for job in (pump, listen, watch)]
    try:
        done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finished = done.pop()
        if finished.exception() is not None:
            return "gone"
        return str(finished.result())
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
