"""Routes for metered sessions (``/v1/sessions``). (Holds for AI calls are the ledger's ``/v1/holds`` routes
with an ``estimate`` or ``usage``, priced by ``metering.ai_holds``.)

The rules live in ``metering.sessions``. Who may act follows the ledger (``ledger.access``): session starts, heartbeats and stops come from an app's key with ``usage:write`` (its user's wallets
only), a server key, or an admin; a session is read by its owner (signed in or with ``balance:read``) and by
admins and server keys; anyone else's session answers 404. The time source is ``app.state.clock``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, status

from prepaid.db import utcnow
from prepaid.deps import Pagination, Principal, Session
from prepaid.errors import NotFound
from prepaid.ledger import access
from prepaid.ledger import service as ledger_service
from prepaid.metering import sessions
from prepaid.metering.models import MeteredSession
from prepaid.metering.schemas import (
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
