"""Payments jobs on the background runner: expire pending orders past ``PREPAID_ORDER_TTL`` (releasing their
coupon reservations), and process stored webhook events whose processing failed or never ran."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from prepaid.db import Database, utcnow
from prepaid.observability import log
from prepaid.payments import refunds, service
from prepaid.payments.gateways import Gateway
from prepaid.settings import Settings

# An event is first processed by the request that stored it; the job takes only those left behind.
EVENT_RETRY_AFTER = timedelta(seconds=30)


async def expire_orders(db: Database, _settings: Settings) -> int:
    async with db.transaction() as session:
        return await service.expire_due_orders(session, now=utcnow())


async def process_events(db: Database, _settings: Settings) -> int:
    async with db.transaction(write=False) as session:
        event_ids = await service.unprocessed_events(session, before=utcnow() - EVENT_RETRY_AFTER)
    done = 0
    for event_id in event_ids:
        try:
            async with db.transaction() as session:
                done += await service.process_event(session, event_row_id=event_id, now=utcnow())
        except Exception as error:  # one bad event must not stop the others; it is tried again later
            log.warning("gateway_event_failed", gateway_event=event_id, error_type=type(error).__name__)
            async with db.transaction() as session:
                await service.record_event_error(
                    session, event_row_id=event_id, error=f"{type(error).__name__}: {error}"
                )
    return done


# ---------------------------------------------------------------- refunds


def refund_job(gateways: Mapping[str, Gateway]) -> Callable[[Database, Settings], Awaitable[int]]:
    """Send again the refunds still ``created`` (the gateway errored, or the process stopped before sending;
    the automatic refunds of duplicate payments start here): the same refund id as the idempotency key, so a
    refund the gateway did make but whose answer was lost is never made twice."""

    async def send_refunds(db: Database, _settings: Settings) -> int:
        async with db.transaction() as session:
            due = await refunds.due_refunds(session, now=utcnow())
        done = 0
        for refund_id in due:
            try:
                refund = await refunds.send_refund(db, refund_id=refund_id, gateways=gateways)
                done += refund.status != "created"
            except Exception as error:  # one bad refund must not stop the others; it is tried again later
                log.warning("refund_send_failed", refund_id=refund_id, error_type=type(error).__name__)
        return done

    return send_refunds
