"""Orders and gateway webhooks over HTTP.

Who may do what: a person (signed in) buys for themselves and sees only their own orders (another user's order
answers ``404``, as one that does not exist); an admin, or a server key with ``orders:write``, may buy for any
``customer`` and sees every order. Reading needs ``balance:read`` or ``orders:write`` on an API key; creating,
verifying, retrying and cancelling need ``orders:write`` (only server keys carry it).

The routes that call a gateway (create, verify, retry) resolve the caller in a read-only transaction and let the
service commit short transactions around the gateway call, so no write lock waits on the network. Webhooks are
authenticated by the gateway's signature alone: no credentials, no rate limit, and nothing stored unless the
signature verifies.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.db import Database, utcnow
from prepaid.deps import (
    SAFE_METHODS,
    Pagination,
    ReadSession,
    Session,
    SettingsDep,
    client_ip,
    get_database,
    optional_principal,
    rate_limit,
)
from prepaid.errors import AuthenticationError, NotFound, PermissionDenied
from prepaid.observability import log
from prepaid.pagination import ListResponse
from prepaid.payments import service
from prepaid.payments.gateways import Gateway
from prepaid.payments.models import PaymentOrder
from prepaid.payments.schemas import (
    OrderCreate,
    OrderRead,
    OrderRetry,
    OrderStatus,
    OrderVerify,
    WebhookReceived,
)
from prepaid.schemas import Timestamp

router = APIRouter(prefix="/v1", tags=["orders"])
webhooks = APIRouter(prefix="/v1", tags=["webhooks"])
IdPath = Annotated[str, Path(max_length=64)]
WRITE = "orders:write"
READ = ("balance:read", WRITE)

_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _errors(**statuses: str) -> dict[int | str, dict[str, Any]]:
    return {
        int(code[1:]): {"description": text, "content": _ERROR_CONTENT} for code, text in statuses.items()
    }


# ---------------------------------------------------------------- who is calling


async def _caller(request: Request, session: ReadSession) -> auth_service.Principal | None:
    """The caller, resolved in a read-only transaction (the checkout routes must not hold a write lock)."""
    return await optional_principal(request, session)


Caller = Annotated[auth_service.Principal | None, Depends(_caller)]


async def limit_by_caller(request: Request, principal: Caller) -> None:
    """The ``read`` / ``write`` limit every ``/v1`` call counts against, for this router's callers."""
    who = principal.caller_id if principal is not None else f"ip:{client_ip(request)}"
    await request.app.state.rate_limiter.hit("read" if request.method in SAFE_METHODS else "write", who)


def _acts_for_anyone(principal: auth_service.Principal, *scopes: str) -> bool:
    if principal.is_admin:
        return True
    key = principal.api_key
    return key is not None and key.server and any(scope in key.scopes for scope in scopes)


def _require(*scopes: str) -> Any:
    async def check(principal: Caller) -> auth_service.Principal:
        if principal is None:
            raise AuthenticationError()
        if not (principal.is_admin or any(principal.has_scope(scope) for scope in scopes)):
            raise PermissionDenied(
                f"This API key lacks the {' or '.join(scopes)} scope.", code="missing_scope", param=scopes[0]
            )
        return principal

    return check


OrderReader = Annotated[auth_service.Principal, Depends(_require(*READ))]
OrderWriter = Annotated[auth_service.Principal, Depends(_require(WRITE))]


def _actor(principal: auth_service.Principal, owner_id: str) -> audit_service.Actor | None:
    """Who the audit log names: an admin, or anyone acting on another user's order (a server key)."""
    if principal.is_admin or owner_id != principal.user.id:
        return principal.audit_actor
    return None


def _check_owner(principal: auth_service.Principal, order: PaymentOrder, *scopes: str) -> PaymentOrder:
    if order.user_id != principal.user.id and not _acts_for_anyone(principal, *scopes):
        raise NotFound(f"No order {order.id}.", param="order_id")
    return order


async def _readable_order(order_id: IdPath, principal: OrderReader, session: ReadSession) -> PaymentOrder:
    try:
        order = await service.get_order(session, order_id)
    except NotFound:
        raise NotFound(f"No order {order_id}.", param="order_id") from None
    return _check_owner(principal, order, *READ)


async def _writable_order(order_id: IdPath, principal: OrderWriter, session: ReadSession) -> PaymentOrder:
    try:
        order = await service.get_order(session, order_id)
    except NotFound:
        raise NotFound(f"No order {order_id}.", param="order_id") from None
    return _check_owner(principal, order, WRITE)


ReadableOrder = Annotated[PaymentOrder, Depends(_readable_order)]
WritableOrder = Annotated[PaymentOrder, Depends(_writable_order)]


def _gateways(request: Request) -> dict[str, Gateway]:
    gateways: dict[str, Gateway] = getattr(request.app.state, "gateways", {})
    return gateways


async def _order_read(db: Database, order_id: str) -> OrderRead:
    async with db.transaction(write=False) as session:
        order = await service.get_order(session, order_id)
        return OrderRead.of(order, attempts=await service.attempts_of(session, order_id))


# ---------------------------------------------------------------- orders


@router.post(
    "/orders",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(rate_limit("order_create"))],
    responses=_errors(
        _404="No such wallet or customer",
        _409="The coupon has no use left now",
        _502="The gateway could not open the payment (gateway_error); the order is failed and may be retried",
    ),
)
async def create_order(
    body: OrderCreate, principal: OrderWriter, request: Request, session: ReadSession, settings: SettingsDep
) -> OrderRead:
    """Create an order at the catalog's quote and open its payment at the gateway; the answer's ``checkout``
    carries what the client needs to open that gateway's checkout. A zero total is fulfilled at once."""
    buyer_id = principal.user.id
    if body.customer is not None and body.customer not in (principal.user.id, principal.user.external_id):
        if not _acts_for_anyone(principal, WRITE):
            raise PermissionDenied(
                "Only admins and server keys may buy for another customer.",
                code="customer_forbidden",
                param="customer",
            )
        buyer_id = (await auth_service.find_customer(session, body.customer)).id
    purchase = service.Purchase(
        currency=body.currency,
        plan_code=body.plan,
        quantity=body.quantity,
        coupon_code=body.coupon,
        wallet_id=body.wallet,
        gateway=body.gateway,
    )
    db = get_database(request)
    order = await service.place_order(
        db,
        buyer_id=buyer_id,
        purchase=purchase,
        gateways=_gateways(request),
        settings=settings,
        client_ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        actor=_actor(principal, buyer_id),
    )
    return await _order_read(db, order.id)


@router.get("/orders")
async def list_orders(
    principal: OrderReader,
    session: ReadSession,
    page: Pagination,
    status: OrderStatus | None = None,
    gateway: Annotated[str | None, Query(max_length=32)] = None,
    user: Annotated[str | None, Query(max_length=64, description="Admins: one user's orders.")] = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    flagged: Annotated[bool | None, Query(description="Only orders with (or without) a flag_reason.")] = None,
) -> ListResponse[OrderRead]:
    """Your orders, newest first; admins and server keys see everyone's (``user`` narrows it)."""
    if _acts_for_anyone(principal, *READ):
        user_id = user
    elif user is None or user == principal.user.id:
        user_id = principal.user.id
    else:
        raise PermissionDenied(
            "Only admins may list another user's orders.", code="customer_forbidden", param="user"
        )
    orders = await service.list_orders(
        session,
        params=page,
        user_id=user_id,
        status=status,
        gateway=gateway,
        created_after=created_after,
        created_before=created_before,
        flagged=flagged,
    )
    latest = await service.latest_attempts(session, [order.id for order in orders.data])
    return ListResponse[OrderRead](
        data=[OrderRead.of(order, latest=latest.get(order.id)) for order in orders.data],
        has_more=orders.has_more,
    )


@router.get("/orders/{order_id}", responses=_errors(_404="No such order, or not one of yours"))
async def get_order(order: ReadableOrder, session: ReadSession) -> OrderRead:
    return OrderRead.of(order, attempts=await service.attempts_of(session, order.id))


@router.post(
    "/orders/{order_id}/verify",
    dependencies=[Depends(rate_limit("order_verify"))],
    responses=_errors(
        _404="No such order (or attempt), or not one of yours",
        _409="The attempt was never opened at the gateway",
        _502="The gateway could not be asked about the payment",
    ),
)
async def verify_order(order: WritableOrder, body: OrderVerify, request: Request) -> OrderRead:
    """The gateway's callback fields after checkout: checked against the attempt's own gateway order id (a bad
    signature is 400 and changes nothing); the payment is then fetched from the gateway and, if captured,
    fulfils the order. An order already fulfilled answers as it is."""
    db = get_database(request)
    await service.verify_order(
        db, order_id=order.id, attempt_id=body.attempt, fields=body.fields(), gateways=_gateways(request)
    )
    return await _order_read(db, order.id)


@router.post(
    "/orders/{order_id}/retry",
    responses=_errors(
        _404="No such order, or not one of yours",
        _409="Not failed or expired (order_not_retryable), the quote is over 24 hours old (quote_expired), or the "
        "coupon has no use left",
        _502="The gateway could not open the payment",
    ),
)
async def retry_order(
    order: WritableOrder,
    principal: OrderWriter,
    request: Request,
    settings: SettingsDep,
    body: OrderRetry | None = None,
) -> OrderRead:
    """A new attempt for a failed or expired order, at the same quote while it is valid (24 hours)."""
    db = get_database(request)
    await service.retry_order(
        db,
        order_id=order.id,
        gateway_name=body.gateway if body is not None else None,
        gateways=_gateways(request),
        settings=settings,
        actor=_actor(principal, order.user_id),
    )
    return await _order_read(db, order.id)


@router.post(
    "/orders/{order_id}/cancel",
    responses=_errors(_404="No such order, or not one of yours", _409="Already paid (order_not_cancellable)"),
)
async def cancel_order(order: WritableOrder, principal: OrderWriter, session: Session) -> OrderRead:
    """Give up an unpaid order; its coupon reservation is released."""
    cancelled = await service.cancel_order(
        session, order_id=order.id, now=utcnow(), actor=_actor(principal, order.user_id)
    )
    return OrderRead.of(cancelled, attempts=await service.attempts_of(session, order.id))


# ---------------------------------------------------------------- webhooks


@webhooks.post(
    "/webhooks/{gateway}",
    responses=_errors(_400="The signature does not verify (invalid_signature), or the body is not an event"),
)
async def receive_webhook(gateway: Annotated[str, Path(max_length=32)], request: Request) -> WebhookReceived:
    """A gateway's webhook: verified over the raw body (400 and nothing stored otherwise), stored with its event
    id (a redelivery answers 200 and changes nothing), then processed in this request; if processing fails the
    event stays stored and the runner processes it later."""
    adapter = _gateways(request).get(gateway)
    if adapter is None:
        raise NotFound(
            f"No webhook endpoint for gateway {gateway}.", code="gateway_not_found", param="gateway"
        )
    body = await request.body()
    event = adapter.parse_webhook(dict(request.headers), body)
    db = get_database(request)
    async with db.transaction() as session:
        row, duplicate = await service.store_event(session, event=event, body=body, now=utcnow())
        row_id, processed = row.id, row.processed_at is not None
    if not processed:
        try:
            async with db.transaction() as session:
                await service.process_event(session, event_row_id=row_id, now=utcnow())
            processed = True
        except Exception as error:  # stored: the runner tries again; the gateway needs no retry
            log.warning("gateway_event_failed", gateway_event=row_id, error_type=type(error).__name__)
            async with db.transaction() as session:
                await service.record_event_error(
                    session, event_row_id=row_id, error=f"{type(error).__name__}: {error}"
                )
    return WebhookReceived(event=row_id, duplicate=duplicate, processed=processed)
