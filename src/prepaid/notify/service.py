"""The outbox (messages written in the caller's transaction and delivered after commit by the runner) and the
notifications: ``notify`` tells one user in-app and by email, ``notify_admins`` every admin."""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.auth.models import User
from prepaid.db import utcnow
from prepaid.errors import NotFound
from prepaid.ids import new_id
from prepaid.notify.models import Notification, OutboxMessage
from prepaid.pagination import Page, PageParams, paginate


async def forget_recipient(session: AsyncSession, *, recipient: str) -> None:
    """Account deletion: the address and the contents of messages to it go; the rows stay as a count, and
    what was still waiting is not sent. The account's in-app notifications are deleted."""
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
    # In-app notifications hold the person's purchases: they go with the account.
    owner = select(User.id).where(User.email == recipient).scalar_subquery()
    await session.execute(delete(Notification).where(Notification.user_id == owner))


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


# ---------------------------------------------------------------- notifications (in-app and email)

# What a person is told about their own payments and balance.
USER_KINDS = frozenset(
    {"payment_succeeded", "payment_failed", "refund_processed", "dispute_updated", "low_balance"}
)
# What admins are told (notify_admins sends these to every admin).
ADMIN_KINDS = frozenset({"order_flagged", "chargeback_opened", "failure_rate_high"})
KINDS = USER_KINDS | ADMIN_KINDS


def _plain(value: Any) -> Any:
    """``data`` is stored as JSON: ints, strings, booleans, None, lists and dicts of them (money in minor units,
    never floats)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    raise ValueError(f"notification data must be JSON without floats, not {type(value).__name__}")


async def notify(
    session: AsyncSession,
    *,
    user_id: str,
    kind: str,
    data: dict[str, Any],
    dedupe_key: str | None = None,
    email: bool = True,
) -> Notification | None:
    """Tell one user: an in-app notification and (when the user has an email address and ``email``) an email
    through the outbox, both in the caller's transaction, so they exist exactly when the change they announce
    commits. ``data`` holds facts (ids, amounts in minor units with their ``currency``, ``credits`` in the
    credit asset's smallest unit); they are formatted when shown. With a ``dedupe_key`` a second call for the
    same user and key does nothing and answers None (callers should still call it under their own lock).
    The email template is ``email/{kind}``; links in it use ``PREPAID_BASE_URL`` at delivery."""
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    facts = _plain(data)
    if dedupe_key is not None:
        seen = await session.scalar(
            select(Notification.id).where(
                Notification.user_id == user_id, Notification.dedupe_key == dedupe_key
            )
        )
        if seen is not None:
            return None
    user = await session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        return None
    notification = Notification(
        id=new_id("ntf"), user_id=user_id, kind=kind, data=facts, dedupe_key=dedupe_key, created_at=utcnow()
    )
    session.add(notification)
    if email and user.email is not None and user.active:
        await enqueue_email(
            session,
            to=user.email,
            template=kind,
            context={"kind": kind, "name": user.name, "data": facts, "notification_id": notification.id},
        )
    return notification


async def admin_ids(session: AsyncSession) -> list[str]:
    """Active, not deleted users with the admin role."""
    rows = await session.execute(
        select(User.id, User.roles).where(
            User.deleted_at.is_(None), User.active.is_(True), cast(User.roles, String).like('%"admin"%')
        )
    )
    return [user_id for user_id, roles in rows.all() if "admin" in (roles or [])]


async def notify_admins(
    session: AsyncSession, *, kind: str, data: dict[str, Any], dedupe_key: str | None = None
) -> list[Notification]:
    """Tell every admin: each gets the in-app notification and one email (``notify`` per admin)."""
    sent = []
    for user_id in await admin_ids(session):
        notification = await notify(session, user_id=user_id, kind=kind, data=data, dedupe_key=dedupe_key)
        if notification is not None:
            sent.append(notification)
    return sent


# ---------------------------------------------------------------- a person's own notifications


async def list_notifications(
    session: AsyncSession, *, user_id: str, unread: bool | None, page: PageParams
) -> Page[Notification]:
    """The user's notifications, newest first; ``unread`` True keeps the unread ones, False the read ones."""
    stmt = select(Notification).where(Notification.user_id == user_id)
    if unread is not None:
        stmt = stmt.where(Notification.read_at.is_(None) if unread else Notification.read_at.is_not(None))
    return await paginate(session, stmt, Notification.id, page)


async def own_notification(session: AsyncSession, *, user_id: str, notification_id: str) -> Notification:
    """One of the user's notifications; another user's is not found (its existence is not revealed)."""
    notification = await session.scalar(
        select(Notification)
        .where(Notification.id == notification_id, Notification.user_id == user_id)
        .with_for_update()
    )
    if notification is None:
        raise NotFound(f"No notification {notification_id}.", param="notification_id")
    return notification


async def mark_read(session: AsyncSession, *, user_id: str, notification_id: str) -> Notification:
    """Read once: reading it again keeps the first ``read_at``."""
    notification = await own_notification(session, user_id=user_id, notification_id=notification_id)
    if notification.read_at is None:
        notification.read_at = utcnow()
    return notification


async def delete_notification(session: AsyncSession, *, user_id: str, notification_id: str) -> Notification:
    notification = await own_notification(session, user_id=user_id, notification_id=notification_id)
    await session.delete(notification)
    return notification
