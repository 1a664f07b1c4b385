"""Wallets, transactions, lots, grants, debits, holds and transfers over HTTP.

Routes authorise through ``ledger.access`` (another user's wallet answers 404), make one movement through
``ledger.service`` with the caller's ``idempotency_key`` scoped by ``access.ledger_key``, and answer a schema.
(``ledger.service`` records each wallet a movement changed; ``notify.realtime`` announces it, ``balance.updated``,
after commit.) Holds and captures priced by token counts go through ``metering.ai_holds``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, status
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.db import utcnow
from prepaid.deps import Admin, Pagination, Principal, Session, SettingsDep
from prepaid.errors import InvalidRequest, NotFound
from prepaid.ledger import access, service
from prepaid.ledger.models import Account, Hold, Transaction
from prepaid.ledger.schemas import (
    CaptureMovementRead,
    CaptureRequest,
    DebitCreate,
    GrantCreate,
    HoldCreate,
    HoldEstimateRead,
    HoldMovementRead,
    HoldRead,
    Kind,
    LotRead,
    MovementRead,
    ReleaseRequest,
    TransactionRead,
    TransferCreate,
    WalletCreate,
    WalletRead,
    WalletUpdate,
)
from prepaid.metering import ai_holds
from prepaid.pagination import ListResponse
from prepaid.schemas import Timestamp

router = APIRouter(prefix="/v1", tags=["ledger"])
IdPath = Annotated[str, Path(max_length=64)]
Customer = Annotated[
    str | None,
    Query(
        max_length=128,
        description="Another customer, by user id or external id (admins, and server keys with the scope).",
    ),
]

_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_ERROR_DESCRIPTIONS = {
    402: "Not enough credits: type insufficient_funds, code insufficient_credits, with `available` and `asset`",
    404: "No such wallet, hold or customer, or not one of yours",
    409: "The wallet is frozen (wallet_frozen), the hold is no longer pending (hold_not_pending), or a request "
    "with this Idempotency-Key is still running",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": _ERROR_DESCRIPTIONS[code], "content": _ERROR_CONTENT} for code in statuses}


# ---------------------------------------------------------------- who may act on what


async def _own_customer(principal: Principal, session: Session, customer: Customer = None) -> str:
    access.require_scope(principal, access.READ)
    return await access.customer_id(session, principal, customer, access.READ)


async def _new_wallet_owner(principal: Principal, session: Session, customer: Customer = None) -> str:
    access.require_scope(principal, access.MANAGE)
    return await access.customer_id(session, principal, customer, access.MANAGE)


async def _readable_wallet(wallet_id: IdPath, principal: Principal, session: Session) -> Account:
    return await access.wallet(session, principal, wallet_id, access.READ)


async def _managed_wallet(wallet_id: IdPath, principal: Principal, session: Session) -> Account:
    return await access.wallet(session, principal, wallet_id, access.MANAGE)


async def _granted_wallet(wallet_id: IdPath, admin: Admin, session: Session) -> Account:
    return await access.wallet(session, admin, wallet_id, access.SPEND)


async def _readable_hold(hold_id: IdPath, principal: Principal, session: Session) -> Hold:
    return await access.hold(session, principal, hold_id, access.READ, access.SPEND)


async def _resolvable_hold(hold_id: IdPath, principal: Principal, session: Session) -> Hold:
    access.require_app_or_admin(principal)
    return await access.hold(session, principal, hold_id, access.SPEND)


async def _readable_transaction(
    transaction_id: IdPath, principal: Principal, session: Session
) -> Transaction:
    return await access.transaction(session, principal, transaction_id)


CustomerToRead = Annotated[str, Depends(_own_customer)]
CustomerToOpenFor = Annotated[str, Depends(_new_wallet_owner)]
ReadableWallet = Annotated[Account, Depends(_readable_wallet)]
ManagedWallet = Annotated[Account, Depends(_managed_wallet)]
GrantedWallet = Annotated[Account, Depends(_granted_wallet)]
ReadableHold = Annotated[Hold, Depends(_readable_hold)]
ResolvableHold = Annotated[Hold, Depends(_resolvable_hold)]
ReadableTransaction = Annotated[Transaction, Depends(_readable_transaction)]


# ---------------------------------------------------------------- answers


async def _wallet_reads(session: AsyncSession, wallets: Sequence[Account]) -> list[WalletRead]:
    parts = await service.lot_parts(session, wallet_ids=[wallet.id for wallet in wallets])
    return [WalletRead.of(wallet, parts[wallet.id]) for wallet in wallets]


async def _transaction_reads(
    session: AsyncSession, transactions: Sequence[Transaction]
) -> list[TransactionRead]:
    postings = await service.postings_by_transaction(session, transaction_ids=[t.id for t in transactions])
    return [TransactionRead.of(transaction, postings[transaction.id]) for transaction in transactions]


async def _movement_read(
    session: AsyncSession, movement: service.Movement, *, wallet_id: str, to_wallet_id: str | None = None
) -> MovementRead:
    transaction_id = movement.transaction.id
    postings = await service.postings_by_transaction(session, transaction_ids=[transaction_id])
    return MovementRead.of(movement, postings[transaction_id], wallet_id=wallet_id, to_wallet_id=to_wallet_id)


# ---------------------------------------------------------------- wallets


@router.get("/wallets", responses=_errors(404))
async def list_wallets(
    user_id: CustomerToRead, session: Session, page: Pagination
) -> ListResponse[WalletRead]:
    wallets = await service.list_wallets(session, user_id=user_id, params=page)
    return ListResponse[WalletRead](
        data=await _wallet_reads(session, wallets.data), has_more=wallets.has_more
    )


@router.post("/wallets", status_code=status.HTTP_201_CREATED, responses=_errors(404))
async def create_wallet(
    body: WalletCreate, user_id: CustomerToOpenFor, principal: Principal, session: Session
) -> WalletRead:
    wallet = await service.create_wallet(
        session,
        user_id=user_id,
        name=body.name,
        low_balance_threshold=body.low_balance_threshold,
        actor=access.audit_actor(principal, user_id),
    )
    return (await _wallet_reads(session, [wallet]))[0]


@router.get("/wallets/{wallet_id}")
async def get_wallet(wallet: ReadableWallet, session: Session) -> WalletRead:
    return (await _wallet_reads(session, [wallet]))[0]


@router.patch("/wallets/{wallet_id}")
async def update_wallet(
    body: WalletUpdate, wallet: ManagedWallet, principal: Principal, session: Session
) -> WalletRead:
    updated = await service.update_wallet(
        session,
        wallet_id=wallet.id,
        as_admin=principal.is_admin,
        actor=access.audit_actor(principal, wallet.user_id),
        name=body.name,
        low_balance_threshold=body.low_balance_threshold,
        clear_low_balance_threshold="low_balance_threshold" in body.model_fields_set,
        overdraft_limit=body.overdraft_limit,
        frozen=body.frozen,
    )
    return (await _wallet_reads(session, [updated]))[0]


@router.get("/wallets/{wallet_id}/transactions")
async def list_wallet_transactions(
    wallet: ReadableWallet,
    session: Session,
    page: Pagination,
    kind: Kind | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
) -> ListResponse[TransactionRead]:
    transactions = await service.list_transactions(
        session,
        wallet=wallet,
        params=page,
        kind=kind,
        created_after=created_after,
        created_before=created_before,
    )
    data = await _transaction_reads(session, transactions.data)
    return ListResponse[TransactionRead](data=data, has_more=transactions.has_more)


@router.get("/wallets/{wallet_id}/lots")
async def list_wallet_lots(
    wallet: ReadableWallet, session: Session, page: Pagination
) -> ListResponse[LotRead]:
    lots = await service.list_lots(session, wallet_id=wallet.id, params=page)
    return ListResponse[LotRead].of(lots, LotRead)


@router.get("/transactions/{transaction_id}")
async def get_transaction(transaction: ReadableTransaction, session: Session) -> TransactionRead:
    return (await _transaction_reads(session, [transaction]))[0]


# ---------------------------------------------------------------- movements


@router.post("/wallets/{wallet_id}/grants", status_code=status.HTTP_201_CREATED)
async def grant_credits(
    body: GrantCreate, wallet: GrantedWallet, admin: Admin, session: Session
) -> MovementRead:
    movement = await service.grant_credits(
        session,
        wallet_id=wallet.id,
        amount=body.amount,
        idempotency_key=access.ledger_key(admin, body.idempotency_key),
        actor=admin.audit_actor,
        source=body.source,
        priority=body.priority,
        expires_at=body.expires_at,
        memo=body.reason,
    )
    return await _movement_read(session, movement, wallet_id=wallet.id)


@router.post("/wallets/{wallet_id}/debits", status_code=status.HTTP_201_CREATED, responses=_errors(402, 409))
async def debit_wallet(
    wallet_id: IdPath, body: DebitCreate, principal: Principal, session: Session
) -> MovementRead:
    # The wallet is authorised by the statement that locks it: another user's wallet answers 404 there.
    movement = await service.spend(
        session,
        wallet_id=wallet_id,
        owner_id=access.spending_owner(principal),
        amount=body.amount,
        idempotency_key=access.ledger_key(principal, body.idempotency_key),
        memo=body.reason,
        actor_user_id=principal.user.id,
    )
    return await _movement_read(session, movement, wallet_id=wallet_id)


@router.post("/holds", status_code=status.HTTP_201_CREATED, responses=_errors(402, 404, 409))
async def create_hold(body: HoldCreate, principal: Principal, session: Session) -> HoldMovementRead:
    owner_id = access.spending_owner(principal)
    if (body.amount is None) == (body.estimate is None):
        raise InvalidRequest(
            "Give exactly one of amount and estimate.",
            code="amount_or_estimate",
            param="amount" if body.amount is None else "estimate",
        )
    key = access.ledger_key(principal, body.idempotency_key)
    try:  # the wallet is authorised by the statement that locks it, as for a debit
        if body.estimate is not None:  # priced by the model meter (metering.ai_holds)
            movement = await ai_holds.hold_estimate(
                session,
                wallet_id=body.wallet,
                owner_id=owner_id,
                meter=body.estimate.meter,
                input_tokens=body.estimate.input_tokens,
                max_output_tokens=body.estimate.max_output_tokens,
                cached_input_tokens=body.estimate.cached_input_tokens,
                expires_at=body.expiry(utcnow()),
                idempotency_key=key,
                memo=body.reason,
                actor_user_id=principal.user.id,
            )
        else:
            assert body.amount is not None
            movement = await service.hold(
                session,
                wallet_id=body.wallet,
                owner_id=owner_id,
                amount=body.amount,
                expires_at=body.expiry(utcnow()),
                idempotency_key=key,
                memo=body.reason,
                actor_user_id=principal.user.id,
            )
    except NotFound as error:
        if error.param not in ("wallet_id", "wallet"):
            raise
        raise NotFound(f"No wallet {body.wallet}.", param="wallet") from None
    read = await _movement_read(session, movement, wallet_id=body.wallet)
    estimate = ai_holds.estimate_of(movement.hold) if movement.hold is not None else None
    return HoldMovementRead(
        **read.model_dump(exclude={"object"}),
        estimate=HoldEstimateRead(**dataclasses.asdict(estimate)) if estimate is not None else None,
    )


@router.get("/holds/{hold_id}")
async def get_hold(hold: ReadableHold) -> HoldRead:
    return HoldRead.of(hold)


@router.post("/holds/{hold_id}/capture", responses=_errors(409))
async def capture_hold(
    body: CaptureRequest, hold: ResolvableHold, principal: Principal, session: Session
) -> CaptureMovementRead:
    if body.amount is not None and body.usage is not None:
        raise InvalidRequest("Give amount or usage, not both.", code="amount_or_usage", param="usage")
    key = access.ledger_key(principal, body.idempotency_key)
    priced: ai_holds.Capture | None = None
    if body.usage is not None:  # the real token counts, priced by the hold's meter (metering.ai_holds)
        priced = await ai_holds.capture_tokens(
            session,
            hold=hold,
            input_tokens=body.usage.input_tokens,
            output_tokens=body.usage.output_tokens,
            cached_input_tokens=body.usage.cached_input_tokens,
            idempotency_key=key,
            memo=body.reason,
            actor_user_id=principal.user.id,
        )
        movement = priced.movement
    else:
        movement = await service.capture(
            session,
            hold_id=hold.id,
            amount=hold.amount if body.amount is None else body.amount,
            idempotency_key=key,
            memo=body.reason,
            actor_user_id=principal.user.id,
        )
    read = await _movement_read(session, movement, wallet_id=hold.wallet_id)
    resolved = movement.hold or hold
    return CaptureMovementRead(
        **read.model_dump(exclude={"object"}),
        charged=resolved.captured,
        released=resolved.amount - resolved.captured,
        meter=priced.meter if priced else None,
        cost=priced.cost if priced else None,
        uncharged=priced.uncharged if priced else 0,
    )


@router.post("/holds/{hold_id}/release", responses=_errors(409))
async def release_hold(
    body: ReleaseRequest, hold: ResolvableHold, principal: Principal, session: Session
) -> MovementRead:
    movement = await service.release(
        session,
        hold_id=hold.id,
        idempotency_key=access.ledger_key(principal, body.idempotency_key),
        memo=body.reason,
        actor_user_id=principal.user.id,
    )
    return await _movement_read(session, movement, wallet_id=hold.wallet_id)


@router.post("/transfers", status_code=status.HTTP_201_CREATED, responses=_errors(402, 404, 409))
async def transfer_credits(
    body: TransferCreate, principal: Principal, session: Session, settings: SettingsDep
) -> MovementRead:
    source, target = await access.transfer_wallets(
        session,
        principal,
        body.from_wallet,
        body.to_wallet,
        allow_user_transfers=settings.allow_user_transfers,
    )
    movement = await service.transfer(
        session,
        from_wallet_id=source.id,
        to_wallet_id=target.id,
        amount=body.amount,
        idempotency_key=access.ledger_key(principal, body.idempotency_key),
        memo=body.reason,
        actor_user_id=principal.user.id,
    )
    shown = target.id if access.shows_balance(principal, target) else None
    return await _movement_read(session, movement, wallet_id=source.id, to_wallet_id=shown)
