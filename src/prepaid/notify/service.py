"""The outbox: messages written in the caller's transaction and delivered after commit by the runner."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.db import utcnow
from prepaid.ids import new_id
from prepaid.notify.models import OutboxMessage


async def forget_recipient(session: AsyncSession, *, recipient: str) -> None:
    """Account deletion: the address and the contents of messages to it go; the rows stay as a count, and
    what was still waiting is not sent."""
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.recipient == recipient, OutboxMessage.status == "pending")
        .values(status="cancelled")
    )
    await session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.recipient == recipient)
        .values(recipient="erased", payload={}, last_error=None)
    )


async def enqueue_email(
    session: AsyncSession, *, to: str, template: str, context: dict[str, Any]
) -> OutboxMessage:
    message = OutboxMessage(
        id=new_id("msg"),
        channel="email",
        recipient=to,
        template=template,
        payload=context,
        status="pending",
        attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(message)
    return message
