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

from typing import Annotated, Any, Literal

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
from prepaid.money import CREDIT
from prepaid.observability import log
from prepaid.pagination import ListResponse
from prepaid.payments import checkout_pages, disputes, refunds, service
from prepaid.payments.gateways import Gateway
from prepaid.payments.models import PaymentDispute, PaymentDisputeMessage, PaymentOrder
from prepaid.payments.schemas import (
    DisputeCategory,
    DisputeCreate,
    DisputeKind,
    DisputeMessageCreate,
    DisputeMessageRead,
    DisputeRead,
    DisputeResolve,
    DisputeStatusName,
    GatewayPaymentRead,
    GatewayViewRead,
    OrderCreate,
    OrderRead,
    OrderRetry,
    OrderStatus,
    OrderVerify,
    RefundCreate,
    RefundRead,
    RefundStatusName,
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


def _pays_on_pages(principal: auth_service.Principal) -> bool:
    """A browser or a bot's customer pays through this server's checkout pages (an app with a token pays a
    Stripe PaymentIntent itself, with Stripe.js)."""
    return principal.api_key is not None or principal.web_session is not None


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
    # Bots send their buyer a checkout_url (Stripe: a Checkout Session); the /buy page opens it too, where a
    # Stripe order pays with Stripe Elements on our page (a PaymentIntent, as for an app with a token).
    gateways = _gateways(request)
    gateway = body.gateway or next((name for name in settings.gateway_names if name in gateways), None)
    elements = principal.web_session is not None and gateway == "stripe"
    order = await service.place_order(
        db,
        buyer_id=buyer_id,
        purchase=purchase,
        gateways=gateways,
        settings=settings,
        client_ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        actor=_actor(principal, buyer_id),
        hosted_checkout=principal.api_key is not None or (principal.web_session is not None and not elements),
    )
    return checkout_pages.with_checkout_url(
        await _order_read(db, order.id), settings, pages=_pays_on_pages(principal)
    )


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
async def get_order(
    order: ReadableOrder, principal: OrderReader, session: ReadSession, settings: SettingsDep
) -> OrderRead:
    read = OrderRead.of(order, attempts=await service.attempts_of(session, order.id))
    return checkout_pages.with_checkout_url(read, settings, pages=_pays_on_pages(principal))


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
    return checkout_pages.with_checkout_url(
        await _order_read(db, order.id), settings, pages=_pays_on_pages(principal)
    )


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


# ---------------------------------------------------------------- refunds (payments/refunds.py holds the rules)


async def _refund_admin(principal: Caller) -> auth_service.Principal:
    if principal is None:
        raise AuthenticationError()
    if not principal.is_admin:
        raise PermissionDenied("Refunds are for admins.", code="admin_required")
    return principal


RefundAdmin = Annotated[auth_service.Principal, Depends(_refund_admin)]


async def _refund_read(db: Database, refund_id: str) -> RefundRead:
    async with db.transaction(write=False) as session:
        return RefundRead.of(await refunds.get_refund(session, refund_id))


@router.post(
    "/orders/{order_id}/refunds",
    status_code=status.HTTP_201_CREATED,
    tags=["refunds"],
    responses=_errors(
        _400="More than what is left of the payment (refund_exceeds_payment)",
        _403="Not an admin (admin_required)",
        _404="No such order",
        _409="Not paid (order_not_refundable), refunded in full already, or a chargeback is open (order_disputed)",
    ),
)
async def create_refund(
    order_id: IdPath, body: RefundCreate, principal: RefundAdmin, request: Request
) -> RefundRead:
    """Refund an order's payment, in full or in part, through the gateway that took it. The refund is written
    and its credits held first, then sent; the answer's ``status`` is ``processed`` or ``failed`` when the
    gateway settled it at once, ``pending`` while the gateway processes it (its webhook settles it), and
    ``created`` when the gateway could not be reached (``last_error``: it is sent again, never twice)."""
    db = get_database(request)
    refund = await refunds.place_refund(
        db,
        order_id=order_id,
        amount=body.amount,
        reason=body.reason,
        clawback=body.clawback,
        gateways=_gateways(request),
        actor=principal.audit_actor,
    )
    return await _refund_read(db, refund.id)


@router.get("/refunds", tags=["refunds"], responses=_errors(_403="Not an admin (admin_required)"))
async def list_refunds(
    _admin: RefundAdmin,
    session: ReadSession,
    page: Pagination,
    order: Annotated[str | None, Query(max_length=64, description="One order's refunds.")] = None,
    user: Annotated[str | None, Query(max_length=64, description="Refunds of one user's orders.")] = None,
    status: RefundStatusName | None = None,
    kind: Annotated[Literal["admin", "duplicate_payment"] | None, Query()] = None,
    gateway: Annotated[str | None, Query(max_length=32)] = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
) -> ListResponse[RefundRead]:
    """Every refund, newest first (admins)."""
    found = await refunds.list_refunds(
        session,
        params=page,
        order_id=order,
        user_id=user,
        status=status,
        kind=kind,
        gateway=gateway,
        created_after=created_after,
        created_before=created_before,
    )
    return ListResponse[RefundRead](data=[RefundRead.of(r) for r in found.data], has_more=found.has_more)


@router.get(
    "/refunds/{refund_id}",
    tags=["refunds"],
    responses=_errors(_403="Not an admin (admin_required)", _404="No such refund"),
)
async def get_refund(refund_id: IdPath, _admin: RefundAdmin, session: ReadSession) -> RefundRead:
    return RefundRead.of(await refunds.get_refund(session, refund_id))


# ---------------------------------------------------------------- disputes (payments/disputes.py holds the rules)


def _dispute_read(
    dispute: PaymentDispute,
    *,
    messages: list[PaymentDisputeMessage] | None = None,
    views: list[disputes.GatewayView] | None = None,
) -> DisputeRead:
    return DisputeRead(
        id=dispute.id,
        order_id=dispute.order_id,
        user_id=dispute.user_id,
        kind=dispute.kind,
        category=dispute.category,
        status=dispute.status,
        gateway=dispute.gateway,
        gateway_dispute_id=dispute.gateway_dispute_id,
        gateway_status=dispute.gateway_status,
        amount=dispute.amount,
        currency=dispute.currency,
        reason=dispute.reason,
        asset=CREDIT,
        held_credits=dispute.held_credits,
        resolution=dispute.resolution,
        resolution_note=dispute.resolution_note,
        resolved_by=dispute.resolved_by,
        granted_credits=dispute.granted_credits,
        grant_transaction_id=dispute.grant_transaction_id,
        refund_id=dispute.refund_id,
        override_reason=dispute.override_reason,
        messages=[DisputeMessageRead.model_validate(m) for m in messages] if messages is not None else None,
        gateway_views=[_view_read(v) for v in views] if views is not None else None,
        created_at=dispute.created_at,
        updated_at=dispute.updated_at,
        resolved_at=dispute.resolved_at,
    )


def _view_read(found: disputes.GatewayView) -> GatewayViewRead:
    view = found.view
    return GatewayViewRead(
        attempt=found.attempt_id,
        gateway=found.gateway,
        gateway_order_id=found.gateway_order_id,
        status=view.status.value if view is not None else None,
        amount=view.amount if view is not None else None,
        currency=view.currency if view is not None else None,
        amount_paid=view.amount_paid if view is not None else None,
        payments=[
            GatewayPaymentRead(
                payment_id=p.payment_id,
                status=p.status.value,
                amount=p.amount,
                currency=p.currency,
                raw_status=p.raw_status,
                method=p.method,
                card_brand=p.card_brand,
                card_last4=p.card_last4,
                failure_reason=p.failure_reason,
                amount_refunded=p.amount_refunded,
            )
            for p in (view.payments if view is not None else ())
        ],
        error=found.error,
    )


async def _full_dispute(
    db: Database, dispute_id: str, *, gateways: dict[str, Gateway] | None = None
) -> DisputeRead:
    """The dispute with its thread; with ``gateways`` (admins), the gateway's live view of the order's payment,
    fetched outside any transaction."""
    async with db.transaction(write=False) as session:
        dispute = await disputes.get_dispute(session, dispute_id)
        messages = await disputes.messages_of(session, dispute_id)
        attempts = await service.attempts_of(session, dispute.order_id) if gateways is not None else []
    views = await disputes.gateway_views(attempts, gateways) if gateways is not None else None
    return _dispute_read(dispute, messages=messages, views=views)


def _dispute_owner_check(principal: auth_service.Principal, dispute: PaymentDispute, *scopes: str) -> None:
    if dispute.user_id != principal.user.id and not _acts_for_anyone(principal, *scopes):
        raise NotFound(f"No dispute {dispute.id}.", param="dispute_id")


async def _dispute_admin(principal: Caller) -> auth_service.Principal:
    """An admin, resolved without the write lock (resolving asks the gateway first)."""
    if principal is None:
        raise AuthenticationError()
    if not principal.is_admin:
        raise PermissionDenied("Resolving a dispute is for admins.", code="admin_required")
    return principal


DisputeAdmin = Annotated[auth_service.Principal, Depends(_dispute_admin)]


@router.post(
    "/disputes",
    status_code=status.HTTP_201_CREATED,
    tags=["disputes"],
    responses=_errors(
        _404="No such order, or not one of yours",
        _409="The order already has an open dispute (dispute_already_open)",
    ),
)
async def create_dispute(
    body: DisputeCreate, principal: OrderWriter, session: Session, request: Request
) -> DisputeRead:
    """Raise a dispute on one of your orders (credits missing, a wrong amount, a double charge, a refund
    request, anything else) with a first message. One open dispute per order."""
    anyone = _acts_for_anyone(principal, WRITE)
    dispute = await disputes.open_dispute(
        session,
        order_id=body.order,
        category=body.category,
        message=body.message,
        author_id=principal.user.id,
        author_role="admin" if principal.is_admin else "customer",
        owner_id=None if anyone else principal.user.id,
        now=utcnow(),
        actor=principal.audit_actor if anyone else None,
    )
    return _dispute_read(dispute, messages=await disputes.messages_of(session, dispute.id))


@router.get("/disputes", tags=["disputes"])
async def list_disputes(
    principal: OrderReader,
    session: ReadSession,
    page: Pagination,
    status: DisputeStatusName | None = None,
    kind: DisputeKind | None = None,
    category: Annotated[DisputeCategory | Literal["chargeback"] | None, Query()] = None,
    order: Annotated[str | None, Query(max_length=64, description="One order's disputes.")] = None,
    user: Annotated[str | None, Query(max_length=64, description="Admins: one user's disputes.")] = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
) -> ListResponse[DisputeRead]:
    """Your disputes (chargebacks on your orders included), newest first; admins and server keys see
    everyone's (``user`` narrows it)."""
    if _acts_for_anyone(principal, *READ):
        user_id = user
    elif user is None or user == principal.user.id:
        user_id = principal.user.id
    else:
        raise PermissionDenied(
            "Only admins may list another user's disputes.", code="customer_forbidden", param="user"
        )
    found = await disputes.list_disputes(
        session,
        params=page,
        user_id=user_id,
        status=status,
        kind=kind,
        category=category,
        order_id=order,
        created_after=created_after,
        created_before=created_before,
    )
    return ListResponse[DisputeRead](data=[_dispute_read(d) for d in found.data], has_more=found.has_more)


@router.get(
    "/disputes/{dispute_id}",
    tags=["disputes"],
    responses=_errors(_404="No such dispute, or not one of yours"),
)
async def get_dispute(dispute_id: IdPath, principal: OrderReader, request: Request) -> DisputeRead:
    """The dispute with its message thread; admins also see the gateway's live view of the order's payment
    (``gateway_views``: one per attempt opened at a gateway, newest first)."""
    db = get_database(request)
    async with db.transaction(write=False) as session:
        _dispute_owner_check(principal, await disputes.get_dispute(session, dispute_id), *READ)
    return await _full_dispute(db, dispute_id, gateways=_gateways(request) if principal.is_admin else None)


@router.post(
    "/disputes/{dispute_id}/messages",
    status_code=status.HTTP_201_CREATED,
    tags=["disputes"],
    responses=_errors(
        _404="No such dispute, or not one of yours", _409="The dispute is closed (dispute_closed)"
    ),
)
async def add_dispute_message(
    dispute_id: IdPath, body: DisputeMessageCreate, principal: OrderWriter, session: Session
) -> DisputeRead:
    """Add to the dispute's thread (its owner or an admin); answers the dispute with the whole thread."""
    dispute = await disputes.get_dispute(session, dispute_id)
    _dispute_owner_check(principal, dispute, WRITE)
    await disputes.add_message(
        session,
        dispute_id=dispute.id,
        body=body.message,
        author_id=principal.user.id,
        author_role="admin" if principal.is_admin else "customer",
        now=utcnow(),
        actor=principal.audit_actor if principal.is_admin else None,
    )
    return _dispute_read(dispute, messages=await disputes.messages_of(session, dispute.id))


@router.post(
    "/disputes/{dispute_id}/resolve",
    tags=["disputes"],
    responses=_errors(
        _400="An amount missing or not allowed for the category, an override without its reason",
        _403="Not an admin (admin_required)",
        _404="No such dispute",
        _409="Resolved already another way (dispute_closed), a chargeback (chargeback_not_resolvable), the "
        "gateway shows no captured payment (payment_not_captured), or the refund is refused",
        _502="The refund could not be sent (it is kept and sent again)",
    ),
)
async def resolve_dispute(
    dispute_id: IdPath, body: DisputeResolve, principal: DisputeAdmin, request: Request
) -> DisputeRead:
    """Resolve a customer dispute once: ``grant_credits`` (for ``not_credited``, the order's own fulfilment,
    so a late webhook never adds to it; otherwise a goodwill grant of ``amount``), ``refund`` or ``reject``,
    with a note. Granting needs the gateway to show a captured payment, or ``override`` with a reason.
    Resolving again the same way answers the dispute as it is."""
    db = get_database(request)
    gateways = _gateways(request)
    async with db.transaction(write=False) as session:
        dispute = await disputes.get_dispute(session, dispute_id)
        attempts = await service.attempts_of(session, dispute.order_id)
    views = await disputes.gateway_views(attempts, gateways) if body.resolution == "grant_credits" else []
    resolution = disputes.Resolution(
        action=body.resolution,
        note=body.note,
        amount=body.amount,
        override=body.override,
        override_reason=body.override_reason,
        clawback=body.clawback,
    )
    async with db.transaction() as session:
        resolved = await disputes.resolve_dispute(
            session,
            dispute_id=dispute_id,
            resolution=resolution,
            views=views,
            resolver_id=principal.user.id,
            actor=principal.audit_actor,
            now=utcnow(),
        )
        refund_id = resolved.refund_id if body.resolution == "refund" else None
    if refund_id is not None:  # committed with the resolution; sending again is harmless (its id is the key)
        await refunds.send_refund(db, refund_id=refund_id, gateways=gateways)
    return await _full_dispute(db, dispute_id)
