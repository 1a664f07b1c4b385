"""Holds for AI calls: hold the worst case of a model call, capture what the real token counts cost.

Reached through the ledger's own routes: ``POST /v1/holds`` with an ``estimate`` instead of an ``amount`` and
``POST /v1/holds/{id}/capture`` with ``usage`` (token counts) instead of an ``amount``; those routes stay thin
and call here. ``hold_estimate`` prices ``input_tokens`` (uncached), ``cached_input_tokens`` and
``max_output_tokens`` with the model meter through ``catalog.service.meter_cost`` (exactly as ``POST /v1/usage``
prices the same counts) and makes an ordinary ledger hold of that amount, marked with the meter
(``reference_type='ai_meter'``, ``reference_id`` = the meter code, the counts in its metadata).
``capture_tokens`` prices the real counts with the same meter at the catalog price in force then, captures that
much (never more than the hold: an overrun beyond the estimate is reported as ``uncharged`` and not taken) and
releases the rest, in one ledger transaction. A retry with the same idempotency key answers the capture already
made, priced as it was then.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.catalog import service as catalog_service
from prepaid.errors import InsufficientFunds, InvalidRequest
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Hold, Transaction
from prepaid.metering import low_balance

REFERENCE_TYPE = "ai_meter"


@dataclass(frozen=True)
class Estimate:
    meter: str
    input_tokens: int
    max_output_tokens: int
    cached_input_tokens: int
    cost: int  # what was held


@dataclass(frozen=True)
class Capture:
    movement: ledger_service.Movement
    meter: str
    cost: int  # what the real counts cost
    charged: int  # what was captured: the cost, at most the hold
    released: int  # the rest of the hold, back to the wallet
    uncharged: int  # the cost beyond the hold, not taken


def estimate_of(hold: Hold) -> Estimate | None:
    """How a hold made from an estimate was priced (None for a hold of an amount)."""
    if hold.reference_type != REFERENCE_TYPE or not hold.reference_id:
        return None
    facts = hold.metadata_ or {}
    return Estimate(
        meter=hold.reference_id,
        input_tokens=int(facts.get("input_tokens", 0)),
        max_output_tokens=int(facts.get("max_output_tokens", 0)),
        cached_input_tokens=int(facts.get("cached_input_tokens", 0)),
        cost=hold.amount,
    )


async def _model_meter(session: AsyncSession, code: str) -> catalog_service.PricedMeter:
    meter = await catalog_service.get_meter(session, code)
    if meter.kind != "model":
        raise InvalidRequest(
            f"The meter {code} is not a model meter: AI holds are priced by token counts.",
            code="meter_not_model",
            param="meter",
        )
    if not meter.active or meter.archived_at is not None:
        raise InvalidRequest(f"The meter {code} is not active.", code="meter_inactive", param="meter")
    return meter


async def estimate(
    session: AsyncSession,
    *,
    meter: str,
    input_tokens: int,
    max_output_tokens: int,
    cached_input_tokens: int = 0,
) -> int:
    """The worst case of a call: the prompt and ``max_output_tokens`` of output, priced once."""
    priced = await _model_meter(session, meter)
    return catalog_service.meter_cost(
        priced,
        input_tokens=input_tokens,
        output_tokens=max_output_tokens,
        cached_input_tokens=cached_input_tokens,
    )


async def hold_estimate(
    session: AsyncSession,
    *,
    wallet_id: str,
    owner_id: str | None,
    meter: str,
    input_tokens: int,
    max_output_tokens: int,
    cached_input_tokens: int,
    expires_at: datetime,
    idempotency_key: str,
    memo: str = "",
    actor_user_id: str | None = None,
) -> ledger_service.Movement:
    amount = await estimate(
        session,
        meter=meter,
        input_tokens=input_tokens,
        max_output_tokens=max_output_tokens,
        cached_input_tokens=cached_input_tokens,
    )
    if amount <= 0:
        raise InvalidRequest(
            "The estimate costs nothing: there is nothing to hold.", code="zero_estimate", param="meter"
        )
    try:
        movement = await ledger_service.hold(
            session,
            wallet_id=wallet_id,
            owner_id=owner_id,
            amount=amount,
            expires_at=expires_at,
            idempotency_key=idempotency_key,
            reference=(REFERENCE_TYPE, meter),
            memo=memo,
            metadata={
                "meter": meter,
                "input_tokens": input_tokens,
                "max_output_tokens": max_output_tokens,
                "cached_input_tokens": cached_input_tokens,
            },
            actor_user_id=actor_user_id,
        )
    except InsufficientFunds as error:  # the caller sent no amount: name the wallet, and say what was needed
        raise InsufficientFunds(
            error.message, param="wallet", **{**error.extra, "required": amount}
        ) from None
    await low_balance.balances_changed(session, wallet_ids=[wallet_id])
    return movement


async def _resolved_with(session: AsyncSession, hold: Hold, idempotency_key: str) -> Transaction | None:
    """The transaction that already resolved ``hold`` with this idempotency key, if one did."""
    if hold.status == "pending" or hold.resolve_transaction_id is None:
        return None
    done = await session.get(Transaction, hold.resolve_transaction_id)
    return done if done is not None and done.idempotency_key == idempotency_key else None


async def capture_tokens(
    session: AsyncSession,
    *,
    hold: Hold,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int,
    idempotency_key: str,
    memo: str = "",
    actor_user_id: str | None = None,
) -> Capture:
    if hold.reference_type != REFERENCE_TYPE or not hold.reference_id:
        raise InvalidRequest(
            f"The hold {hold.id} was not made from an AI estimate; capture it by amount.",
            code="hold_not_estimated",
            param="hold_id",
        )
    done = await _resolved_with(session, hold, idempotency_key)
    if done is not None:  # a retry: answer the capture made, priced as it was then (the price may have moved)
        cost, charged = int((done.metadata_ or {}).get("cost", hold.captured)), hold.captured
    else:
        meter = await _model_meter(session, hold.reference_id)
        cost = catalog_service.meter_cost(
            meter,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cached_input_tokens=cached_input_tokens,
        )
        charged = min(cost, hold.amount)
    movement = await ledger_service.capture(
        session,
        hold_id=hold.id,
        amount=charged,
        idempotency_key=idempotency_key,
        memo=memo,
        metadata={
            "meter": hold.reference_id,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cached_input_tokens": cached_input_tokens,
            "cost": cost,
        },
        actor_user_id=actor_user_id,
    )
    await low_balance.balances_changed(session, wallet_ids=[hold.wallet_id])
    captured = movement.hold.captured if movement.hold is not None else charged
    return Capture(
        movement=movement,
        meter=hold.reference_id,
        cost=cost,
        charged=captured,
        released=hold.amount - captured,
        uncharged=max(0, cost - hold.amount),
    )
