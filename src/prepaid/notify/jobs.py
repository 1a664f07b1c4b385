"""Outbox delivery, run by the background runner after the writing transaction has committed.

At most once per message: a message is claimed (``sending``) and that claim committed before the send, so
two processes never send it both; a failed send goes back to ``pending`` with exponential backoff; a process
that dies mid-send leaves the message ``sending``, and after ``STUCK_AFTER`` it is marked ``failed`` rather
than sent again, since it may already have left.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.db import Database, utcnow
from prepaid.notify import service as notify_service
from prepaid.notify.email import Mailer, presentation_context, render_email
from prepaid.notify.models import AlertMark, OutboxMessage
from prepaid.observability import log
from prepaid.payments.models import PaymentAttempt
from prepaid.runner import JobFunction
from prepaid.settings import Settings

BATCH = 20
MAX_ATTEMPTS = 8
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=1)
STUCK_AFTER = timedelta(minutes=15)


def backoff(attempts: int) -> timedelta:
    delay: timedelta = BASE_BACKOFF * (2 ** max(0, attempts - 1))
    return min(delay, MAX_BACKOFF)


async def _claim(db: Database) -> list[OutboxMessage]:
    now = utcnow()
    async with db.transaction() as session:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.status == "sending", OutboxMessage.claimed_at < now - STUCK_AFTER)
            .values(status="failed", last_error="interrupted while sending; not retried (at most once)")
        )
        messages = list(
            (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
                    .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        for message in messages:
            message.status = "sending"
            message.claimed_at = now
            message.attempts += 1
    return messages


async def deliver_due(db: Database, settings: Settings, mailer: Mailer) -> int:
    """Send what is due; returns the number of messages sent."""
    sent = 0
    for message in await _claim(db):
        error: str | None = None
        try:
            if message.channel != "email":
                raise ValueError(f"unknown channel {message.channel}")
            email = render_email(
                template=message.template,
                context={**presentation_context(settings), **message.payload},
                to=message.recipient,
                sender=settings.email_from,
                message_id=message.id,
            )
            await mailer.send(email)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        async with db.transaction() as session:
            row = await session.get(OutboxMessage, message.id)
            if row is None:
                continue
            if error is None:
                row.status = "sent"
                row.sent_at = utcnow()
                row.payload = {}  # the payload may hold a one-time link; it is not needed any more
                row.last_error = None
                sent += 1
            elif row.attempts >= MAX_ATTEMPTS:
                row.status = "failed"
                row.payload = {}  # it will not be sent; a one-time link in it must not linger
                row.last_error = error
                log.warning("outbox_failed", message_id=row.id, attempts=row.attempts)
            else:
                row.status = "pending"
                row.next_attempt_at = utcnow() + backoff(row.attempts)
                row.last_error = error
                log.info("outbox_retry", message_id=row.id, attempts=row.attempts)
    return sent


def delivery_job(mailer: Mailer) -> JobFunction:
    async def run(db: Database, settings: Settings) -> int:
        return await deliver_due(db, settings, mailer)

    return run


# ---------------------------------------------------------------- admin alert: payment failure rate

FAILURE_WINDOW = timedelta(hours=1)
FAILURE_ALERT_EVERY = timedelta(hours=1)
FAILURE_ALERT = "payment_failure_rate"


async def payment_failure_counts(session: AsyncSession, *, since: datetime) -> tuple[int, int]:
    """``(failed, settled)``: payment attempts that failed, and that failed or were paid, since ``since`` (by
    when they last changed). Attempts still open or cancelled by the buyer are not counted."""
    failed = func.count().filter(PaymentAttempt.status == "failed")
    rows = await session.execute(
        select(failed, func.count()).where(
            PaymentAttempt.updated_at >= since, PaymentAttempt.status.in_(("failed", "paid"))
        )
    )
    failed_count, settled = rows.one()
    return int(failed_count or 0), int(settled or 0)


async def check_payment_failure_rate(session: AsyncSession, settings: Settings, *, now: datetime) -> bool:
    """Alert every admin when more than ``PREPAID_PAYMENT_FAILURE_ALERT_PERCENT`` of the attempts settled over
    the last hour failed (with at least ``PREPAID_PAYMENT_FAILURE_ALERT_MIN_ATTEMPTS`` settled), at most once an
    hour: the alert's mark row is locked, so two processes never both send it. Returns whether it fired."""
    mark = await session.scalar(select(AlertMark).where(AlertMark.name == FAILURE_ALERT).with_for_update())
    if mark is not None and mark.fired_at > now - FAILURE_ALERT_EVERY:
        return False
    failed, settled = await payment_failure_counts(session, since=now - FAILURE_WINDOW)
    threshold = settings.payment_failure_alert_percent
    if not _alarming(failed, settled, settings):
        return False
    if mark is None:
        session.add(AlertMark(name=FAILURE_ALERT, fired_at=now))
    else:
        mark.fired_at = now
    await notify_service.notify_admins(
        session,
        kind="failure_rate_high",
        data={
            "failed": failed,
            "total": settled,
            "rate_percent": failed * 100 // settled,
            "threshold_percent": threshold,
            "window_minutes": int(FAILURE_WINDOW.total_seconds()) // 60,
        },
    )
    log.warning("payment_failure_rate_high", failed=failed, settled=settled, threshold_percent=threshold)
    return True


def _alarming(failed: int, settled: int, settings: Settings) -> bool:
    if settled < settings.payment_failure_alert_min_attempts:
        return False
    return failed * 100 > settings.payment_failure_alert_percent * settled


async def payment_failure_alert(db: Database, settings: Settings) -> int:
    """Look first without the write lock (almost always there is nothing to say), then decide under it."""
    now = utcnow()
    async with db.transaction(write=False) as session:
        mark = await session.get(AlertMark, FAILURE_ALERT)
        if mark is not None and mark.fired_at > now - FAILURE_ALERT_EVERY:
            return 0
        if not _alarming(*await payment_failure_counts(session, since=now - FAILURE_WINDOW), settings):
            return 0
    async with db.transaction() as session:
        return int(await check_payment_failure_rate(session, settings, now=now))


def failure_alert_job(every: timedelta = timedelta(minutes=1)) -> JobFunction:
    """The runner's job: the failure rate is looked at once a minute per process, not on every pass."""
    due = [0.0]

    async def run(db: Database, settings: Settings) -> int:
        if time.monotonic() < due[0]:
            return 0
        due[0] = time.monotonic() + every.total_seconds()
        return await payment_failure_alert(db, settings)

    return run
