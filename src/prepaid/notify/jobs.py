"""Outbox delivery, run by the background runner after the writing transaction has committed.

At most once per message: a message is claimed (``sending``) and that claim committed before the send, so
two processes never send it both; a failed send goes back to ``pending`` with exponential backoff; a process
that dies mid-send leaves the message ``sending``, and after ``STUCK_AFTER`` it is marked ``failed`` rather
than sent again, since it may already have left.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from prepaid.db import Database, utcnow
from prepaid.notify.email import Mailer, render_email
from prepaid.notify.models import OutboxMessage
from prepaid.observability import log
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
                context=message.payload,
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
