"""Routes for holds for AI calls (``/v1/ai_holds``) and metered sessions (``/v1/sessions``).

Kept beside ``metering/api.py`` (the usage routes) so the two can be written at once; the rules live in
``metering.ai_holds`` and ``metering.sessions``. Who may act follows the ledger (``ledger.access``): holds,
captures, session starts, heartbeats and stops come from an app's key with ``usage:write`` (its user's wallets
only), a server key, or an admin; a session is read by its owner (signed in or with ``balance:read``) and by
admins and server keys; anyone else's session answers 404. The time source is ``app.state.clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status

from prepaid.db import utcnow
from prepaid.deps import Pagination, Principal, Session
from prepaid.errors import NotFound
from prepaid.ledger import access
from prepaid.ledger import service as ledger_service
from prepaid.ledger.schemas import HoldRead, WalletBalanceRead
from prepaid.metering import ai_holds, sessions
from prepaid.metering.models import MeteredSession
from prepaid.metering.schemas import (
    AiCaptureRead,
    AiHoldCapture,
    AiHoldCreate,
    AiHoldRead,
    SessionCreate,
    SessionHeartbeat,
    SessionRead,
    SessionStatus,
    SessionStop,
)
from prepaid.pagination import ListResponse

router = APIRouter(prefix="/v1", tags=["metering"])
IdPath = Annotated[str, Path(max_length=64)]

_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_ERROR_DESCRIPTIONS = {
    402: "Not enough credits: type insufficient_funds, code insufficient_credits, with `available`, `required`",
    404: "No such wallet, hold, session, meter or customer, or not one of yours",
    409: "The wallet is frozen, the hold is no longer pending, the session has ended (session_ended), or a "
    "request with this Idempotency-Key is still running",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": _ERROR_DESCRIPTIONS[code], "content": _ERROR_CONTENT} for code in statuses}


def _now(request: Request) -> datetime:
    clock: Callable[[], datetime] = getattr(request.app.state, "clock", utcnow)
    return clock()


def _balance(movement: ledger_service.Movement, wallet_id: str) -> WalletBalanceRead:
    return WalletBalanceRead.of(movement.balances[wallet_id])


# ---------------------------------------------------------------- holds for AI calls


@router.post("/ai_holds", status_code=status.HTTP_201_CREATED, responses=_errors(402, 404, 409))
async def create_ai_hold(body: AiHoldCreate, principal: Principal, session: Session) -> AiHoldRead:
    owner_id = access.spending_owner(principal)
    try:
        movement = await ai_holds.hold_estimate(
            session,
            wallet_id=body.wallet,
            owner_id=owner_id,
            meter=body.meter,
            input_tokens=body.input_tokens,
            max_output_tokens=body.max_output_tokens,
            cached_input_tokens=body.cached_input_tokens,
            expires_at=utcnow() + timedelta(seconds=body.expires_in),
            idempotency_key=access.ledger_key(principal, body.idempotency_key),
            memo=body.reason,
            actor_user_id=principal.user.id,
        )
    except NotFound as error:
        if error.param in ("wallet_id", "wallet"):
            raise NotFound(f"No wallet {body.wallet}.", param="wallet") from None
        raise
    assert movement.hold is not None
    return AiHoldRead(
        meter=body.meter,
        asset=movement.hold.asset,
        estimate=movement.hold.amount,
        hold=HoldRead.of(movement.hold),
        wallet=_balance(movement, body.wallet),
        replayed=movement.replayed,
    )


@router.post("/ai_holds/{hold_id}/capture", responses=_errors(404, 409))
async def capture_ai_hold(
    hold_id: IdPath, body: AiHoldCapture, principal: Principal, session: Session
) -> AiCaptureRead:
    access.require_app_or_admin(principal)
    hold = await access.hold(session, principal, hold_id, access.SPEND)
    result = await ai_holds.capture_tokens(
        session,
        hold=hold,
        input_tokens=body.input_tokens,
        output_tokens=body.output_tokens,
        cached_input_tokens=body.cached_input_tokens,
        idempotency_key=access.ledger_key(principal, body.idempotency_key),
        memo=body.reason,
        actor_user_id=principal.user.id,
    )
    movement = result.movement
    assert movement.hold is not None
    return AiCaptureRead(
        meter=result.meter,
        asset=movement.hold.asset,
        cost=result.cost,
        charged=result.charged,
        released=result.released,
        uncharged=result.uncharged,
        transaction_id=movement.transaction.id,
        hold=HoldRead.of(movement.hold),
        wallet=_balance(movement, hold.wallet_id),
        replayed=movement.replayed,
    )


# ---------------------------------------------------------------- metered sessions


async def _own_session(
    session: Session, principal: Principal, session_id: str, *scopes: str, lock: bool = False
) -> MeteredSession:
    """A session the caller may act on with one of ``scopes`` (``lock``: for a change); anyone else's is 404."""
    access.require_scope(principal, *scopes)
    missing = NotFound(f"No session {session_id}.", param="session_id")
    found = await sessions.get_session(session, session_id, lock=lock)
    if found is None:
        raise missing
    if found.user_id != principal.user.id and not access.acts_for_anyone(principal, *scopes):
        raise missing
    return found


@router.post("/sessions", status_code=status.HTTP_201_CREATED, responses=_errors(402, 404, 409))
async def start_session(
    body: SessionCreate, principal: Principal, session: Session, request: Request
) -> SessionRead:
    access.spending_owner(principal)
    user_id = await access.customer_id(session, principal, body.customer, access.SPEND)
    if body.wallet is None:
        wallet = await ledger_service.default_wallet(session, user_id=user_id)
    else:
        wallet = await access.wallet(session, principal, body.wallet, access.SPEND, param="wallet")
        if wallet.user_id != user_id:
            raise NotFound(f"No wallet {body.wallet} of this customer.", param="wallet")
    metered = await sessions.start_session(
        session,
        user_id=user_id,
        wallet=wallet,
        meter_code=body.meter,
        now=_now(request),
        interval_seconds=body.interval_seconds,
        grace_seconds=body.grace_seconds,
        metadata=body.metadata,
    )
    return SessionRead.of(metered)


@router.post("/sessions/{session_id}/heartbeat", responses=_errors(404, 409))
async def session_heartbeat(
    session_id: IdPath,
    principal: Principal,
    session: Session,
    request: Request,
    body: SessionHeartbeat | None = None,
) -> SessionRead:
    access.require_app_or_admin(principal)
    metered = await _own_session(session, principal, session_id, access.SPEND, lock=True)
    return SessionRead.of(
        await sessions.heartbeat(
            session, metered=metered, now=_now(request), metrics=body.metrics if body else None
        )
    )


@router.post("/sessions/{session_id}/stop", responses=_errors(404, 409))
async def stop_session(
    session_id: IdPath,
    principal: Principal,
    session: Session,
    request: Request,
    body: SessionStop | None = None,  # nothing to send yet; an empty object is accepted
) -> SessionRead:
    access.require_app_or_admin(principal)
    metered = await _own_session(session, principal, session_id, access.SPEND, lock=True)
    return SessionRead.of(await sessions.stop(session, metered=metered, now=_now(request)))


@router.get("/sessions", responses=_errors(404))
async def list_sessions(
    principal: Principal,
    session: Session,
    page: Pagination,
    customer: Annotated[str | None, Query(max_length=128)] = None,
    status: SessionStatus | None = None,
) -> ListResponse[SessionRead]:
    access.require_scope(principal, access.READ, access.SPEND)
    scope = access.READ if access.has_scope(principal, access.READ) else access.SPEND
    user_id = await access.customer_id(session, principal, customer, scope)
    found = await sessions.list_sessions(session, user_id=user_id, params=page, status=status)
    return ListResponse[SessionRead](data=[SessionRead.of(s) for s in found.data], has_more=found.has_more)


@router.get("/sessions/{session_id}", responses=_errors(404))
async def get_session(session_id: IdPath, principal: Principal, session: Session) -> SessionRead:
    return SessionRead.of(await _own_session(session, principal, session_id, access.READ, access.SPEND))
