"""Metering over HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from pydantic_core import to_json
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth.models import User
from prepaid.auth.service import Principal as PrincipalType
from prepaid.deps import Pagination, Principal, Session, SettingsDep
from prepaid.errors import DomainError, NotFound, PermissionDenied
from prepaid.ids import new_id
from prepaid.ledger import access
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Account
from prepaid.ledger.schemas import TransactionRead, WalletRead
from prepaid.metering import service
from prepaid.metering.models import UsageEvent
from prepaid.metering.schemas import (
    CustomerBalance,
    CustomerRead,
    CustomerUpdate,
    UsageBatchCreate,
    UsageBatchRead,
    UsageCreate,
    UsageRead,
    UsageSummary,
    UsageSummaryRow,
)
from prepaid.pagination import ListResponse
from prepaid.schemas import Timestamp

router = APIRouter(prefix="/v1", tags=["metering"])

# === usage (customers by external id, usage events) ===

_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    402: {
        "description": "Not enough credits (insufficient_credits, with `available`)",
        "content": _ERROR_CONTENT,
    },
    404: {"description": "No such customer, wallet or meter, or not one of yours", "content": _ERROR_CONTENT},
    409: {
        "description": "The usage id is someone else's, the meter is inactive, or the wallet is frozen",
        "content": _ERROR_CONTENT,
    },
}
ExternalIdPath = Annotated[
    str, Path(max_length=128, pattern=r"^[\x21-\x7e]+$", description="The app's own id for the customer.")
]
CustomerQuery = Annotated[str | None, Query(max_length=128, description="A user id or external id.")]
WalletQuery = Annotated[str | None, Query(max_length=64)]
MeterQuery = Annotated[str | None, Query(max_length=64)]


def _may_act_for(principal: PrincipalType, user: User, *scopes: str) -> bool:
    return user.id == principal.user.id or access.acts_for_anyone(principal, *scopes)


async def _readable_customer(session: AsyncSession, principal: PrincipalType, external_id: str) -> User:
    """A customer the caller may read: admins and server keys any, anyone else only themselves."""
    access.require_scope(principal, access.READ, access.MANAGE)
    missing = NotFound(f"No customer {external_id}.", param="external_id")
    try:
        user = await service.find_customer(session, external_id)
    except NotFound:
        raise missing from None
    if not _may_act_for(principal, user, access.READ, access.MANAGE):
        raise missing
    return user


async def _customer_read(session: AsyncSession, user: User, *, provisioned: bool = False) -> CustomerRead:
    wallets = await service.customer_wallets(session, user_id=user.id)
    parts = await ledger_service.lot_parts(session, wallet_ids=[wallet.id for wallet in wallets])
    asset = wallets[0].asset if wallets else "credit"
    return CustomerRead(
        id=user.id,
        external_id=user.external_id,
        name=user.name,
        email=user.email,
        phone=user.phone,
        created_at=user.created_at,
        provisioned=provisioned,
        balance=CustomerBalance(
            asset=asset,
            balance=sum(wallet.total for wallet in wallets),
            available=sum(wallet.available for wallet in wallets),
            held=sum(wallet.held for wallet in wallets),
            debt=sum(wallet.debt for wallet in wallets),
        ),
        wallets=[WalletRead.of(wallet, parts[wallet.id]) for wallet in wallets],
    )


def _usage_read(row: UsageEvent | service.UsageRow, *, replayed: bool = False) -> UsageRead:
    return UsageRead(
        id=row.event_id,
        customer=row.user_id,
        wallet=row.wallet_id,
        meter=row.meter_code,
        quantity=row.quantity,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        cached_input_tokens=row.cached_input_tokens,
        cost=row.cost,
        asset=row.asset,
        balance_after=row.balance_after,
        transaction=row.transaction_id,
        batch=row.batch_id,
        metadata=dict(row.metadata_ or {}),
        timestamp=row.occurred_at,
        created_at=row.created_at,
        replayed=replayed,
    )


def _stamp(value: datetime, stamps: dict[datetime, str]) -> str:
    """A time as pydantic writes it in JSON, made once per distinct time of a batch (most events share two)."""
    text = stamps.get(value)
    if text is None:
        text = stamps[value] = to_json(value).decode()[1:-1]
    return text


def _usage_dict(
    row: UsageEvent | service.UsageRow, stamps: dict[datetime, str], *, replayed: bool = False
) -> dict[str, Any]:
    """``UsageRead`` as a plain dict, its fields in the model's order (the batch's answer is serialised
    without building a model per event; ``test_the_batch_answer_is_the_schemas_and_matches_the_stored_events``
    holds them equal)."""
    return {
        "object": "usage",
        "id": row.event_id,
        "customer": row.user_id,
        "wallet": row.wallet_id,
        "meter": row.meter_code,
        "quantity": row.quantity,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cached_input_tokens": row.cached_input_tokens,
        "cost": row.cost,
        "asset": row.asset,
        "balance_after": row.balance_after,
        "transaction": row.transaction_id,
        "batch": row.batch_id,
        "metadata": row.metadata_ or {},
        "timestamp": _stamp(row.occurred_at, stamps),
        "created_at": _stamp(row.created_at, stamps),
        "replayed": replayed,
    }


def _error_dict(error: DomainError) -> dict[str, Any]:
    extra = error.extra
    return {
        "type": error.type,
        "code": error.code,
        "message": error.message,
        "param": error.param,
        "available": extra.get("available"),
        "asset": extra.get("asset"),
    }


def _provisioning(principal: PrincipalType, settings: SettingsDep) -> service.Provisioning:
    return service.Provisioning.of(
        settings, allowed=access.acts_for_anyone(principal, access.MANAGE), actor=principal.audit_actor
    )


async def _usage_owner(
    session: AsyncSession, principal: PrincipalType, customer: str | None, wallet: str | None
) -> str | None:
    """Whose usage a read covers: a customer (admins and server keys: anyone), the caller's own otherwise."""
    access.require_scope(principal, access.READ)
    if customer is not None:
        return await access.customer_id(session, principal, customer, access.READ)
    if wallet is not None:
        await access.wallet(session, principal, wallet, access.READ, param="wallet")
        return None
    return None if access.acts_for_anyone(principal, access.READ) else principal.user.id


@router.put("/customers/{external_id}", responses={201: {"model": CustomerRead}, **_ERRORS})
async def put_customer(
    external_id: ExternalIdPath,
    body: CustomerUpdate,
    principal: Principal,
    session: Session,
    settings: SettingsDep,
    response: Response,
) -> CustomerRead:
    """Create or update a customer by the app's own id (admins, and server keys with customers:write)."""
    access.require_scope(principal, access.MANAGE)
    if not access.acts_for_anyone(principal, access.MANAGE):
        raise PermissionDenied(
            "Only admins and server keys manage customers.", code="customer_forbidden", param="external_id"
        )
    user, created = await service.put_customer(
        session,
        external_id=external_id,
        changes=body.model_dump(exclude_unset=True),
        provisioning=_provisioning(principal, settings),
        actor=principal.audit_actor,
    )
    if created:
        response.status_code = status.HTTP_201_CREATED
    return await _customer_read(session, user, provisioned=created)


@router.get("/customers/{external_id}", responses=_ERRORS)
async def get_customer(external_id: ExternalIdPath, principal: Principal, session: Session) -> CustomerRead:
    """A customer's profile, wallets and balance (reads never create a customer)."""
    user = await _readable_customer(session, principal, external_id)
    return await _customer_read(session, user)


@router.get("/customers/{external_id}/transactions", responses=_ERRORS)
async def list_customer_transactions(
    external_id: ExternalIdPath,
    principal: Principal,
    session: Session,
    page: Pagination,
    wallet: WalletQuery = None,
) -> ListResponse[TransactionRead]:
    """The transactions of the customer's default wallet, or of ``wallet`` (one of theirs)."""
    user = await _readable_customer(session, principal, external_id)
    target: Account
    if wallet is None:
        target = await ledger_service.default_wallet(session, user_id=user.id)
    else:
        target = await access.wallet(session, principal, wallet, access.READ, access.MANAGE, param="wallet")
        if target.user_id != user.id:
            raise NotFound(f"No wallet {wallet} for this customer.", param="wallet")
    found = await service.customer_transactions(session, wallet=target, params=page)
    postings = await ledger_service.postings_by_transaction(
        session, transaction_ids=[transaction.id for transaction in found.data]
    )
    return ListResponse[TransactionRead](
        data=[TransactionRead.of(transaction, postings[transaction.id]) for transaction in found.data],
        has_more=found.has_more,
    )


@router.post("/usage", status_code=status.HTTP_201_CREATED, responses={200: {"model": UsageRead}, **_ERRORS})
async def record_usage(
    body: UsageCreate, principal: Principal, session: Session, settings: SettingsDep, response: Response
) -> UsageRead:
    """Charge one use of a meter; the same ``id`` again answers the stored event (200, ``replayed``)."""
    owner_id = access.spending_owner(principal)
    (outcome,) = await service.record_usage(
        session,
        events=[body],
        owner_id=owner_id,
        provisioning=_provisioning(principal, settings),
        actor_user_id=principal.user.id,
        api_key_id=principal.api_key.id if principal.api_key else None,
    )
    if outcome.error is not None:
        raise outcome.error
    assert outcome.usage is not None
    if outcome.replayed:
        response.status_code = status.HTTP_200_OK
    return _usage_read(outcome.usage, replayed=outcome.replayed)


@router.post("/usage/batch", response_model=UsageBatchRead, responses=_ERRORS)
async def record_usage_batch(
    body: UsageBatchCreate, principal: Principal, session: Session, settings: SettingsDep
) -> Response:
    """Up to 1,000 events, answered one by one: ``charged``, ``duplicate`` (the stored event) or ``refused``
    (with the error it would have had alone). Only charged events are stored; each wallet is charged once."""
    owner_id = access.spending_owner(principal)
    batch_id = new_id("usb")
    outcomes = await service.record_usage(
        session,
        events=body.events,
        owner_id=owner_id,
        provisioning=_provisioning(principal, settings),
        actor_user_id=principal.user.id,
        api_key_id=principal.api_key.id if principal.api_key else None,
        batch_id=batch_id,
    )
    # The answer (a ``UsageBatchRead``) is built as dicts and serialised in one call, in pydantic's own JSON
    # (datetimes included): a model per event cost more than the charge.
    items: list[dict[str, Any]] = []
    stamps: dict[datetime, str] = {}
    charged = duplicates = refused = cost = 0
    for index, (event, outcome) in enumerate(zip(body.events, outcomes, strict=True)):
        if outcome.error is not None:
            refused += 1
            item = {"index": index, "id": event.id, "status": "refused", "usage": None}
            item["error"] = _error_dict(outcome.error)
        else:
            assert outcome.usage is not None
            if outcome.replayed:
                duplicates += 1
            else:
                charged += 1
                cost += outcome.usage.cost
            item = {
                "index": index,
                "id": event.id,
                "status": "duplicate" if outcome.replayed else "charged",
                "usage": _usage_dict(outcome.usage, stamps, replayed=outcome.replayed),
                "error": None,
            }
        items.append(item)
    answer = {
        "object": "usage_batch",
        "id": batch_id,
        "charged": charged,
        "duplicates": duplicates,
        "refused": refused,
        "cost": cost,
        "data": items,
    }
    return Response(to_json(answer), media_type="application/json")


@router.get("/usage", responses=_ERRORS)
async def list_usage(
    principal: Principal,
    session: Session,
    page: Pagination,
    customer: CustomerQuery = None,
    wallet: WalletQuery = None,
    meter: MeterQuery = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
) -> ListResponse[UsageRead]:
    """Usage events, newest received first; ``since``/``until`` bound the events' ``timestamp``."""
    user_id = await _usage_owner(session, principal, customer, wallet)
    found = await service.list_usage(
        session, params=page, user_id=user_id, wallet_id=wallet, meter=meter, since=since, until=until
    )
    return ListResponse[UsageRead](data=[_usage_read(row) for row in found.data], has_more=found.has_more)


@router.get("/usage/summary", responses=_ERRORS)
async def usage_summary(
    principal: Principal,
    session: Session,
    settings: SettingsDep,
    customer: CustomerQuery = None,
    wallet: WalletQuery = None,
    meter: MeterQuery = None,
    since: Timestamp | None = None,
    until: Timestamp | None = None,
) -> UsageSummary:
    """Usage per meter per day (days in ``PREPAID_REPORT_TZ``), newest day first."""
    user_id = await _usage_owner(session, principal, customer, wallet)
    rows = await service.summarize_usage(
        session,
        zone=service.report_zone(settings),
        user_id=user_id,
        wallet_id=wallet,
        meter=meter,
        since=since,
        until=until,
    )
    return UsageSummary(
        timezone=settings.report_tz,
        data=[UsageSummaryRow.model_validate(row, from_attributes=True) for row in rows],
    )


# === end usage ===
