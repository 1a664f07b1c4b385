"""A signed-in person's in-app notifications: list (newest first, ``unread`` filter), mark read, delete.

Each person sees only their own: another user's notification answers 404, admins included (an admin's own
alerts arrive as the admin's own notifications). API keys are refused (403): notifications are for people.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from prepaid.deps import Pagination, Person, Session, SettingsDep
from prepaid.notify import service
from prepaid.notify.email import render_inapp
from prepaid.notify.models import Notification
from prepaid.notify.schemas import NotificationDeleted, NotificationRead
from prepaid.observability import log
from prepaid.pagination import ListResponse
from prepaid.settings import Settings

router = APIRouter(prefix="/v1", tags=["notifications"])
NotificationId = Annotated[str, Path(max_length=64)]


def _read(notification: Notification, settings: Settings) -> NotificationRead:
    try:
        title, body = render_inapp(kind=notification.kind, data=notification.data, settings=settings)
    except Exception as error:  # a notification whose facts its template cannot show is still listed
        log.warning("notification_render_failed", notification_id=notification.id, error=type(error).__name__)
        title, body = notification.kind.replace("_", " ").capitalize(), ""
    return NotificationRead(
        id=notification.id,
        kind=notification.kind,
        title=title,
        body=body,
        data=notification.data,
        read=notification.read_at is not None,
        read_at=notification.read_at,
        created_at=notification.created_at,
    )


@router.get("/notifications")
async def list_notifications(
    principal: Person,
    session: Session,
    settings: SettingsDep,
    page: Pagination,
    unread: Annotated[
        bool | None, Query(description="true: only unread ones; false: only read ones; absent: all")
    ] = None,
) -> ListResponse[NotificationRead]:
    """Your notifications, newest first."""
    found = await service.list_notifications(session, user_id=principal.user.id, unread=unread, page=page)
    return ListResponse[NotificationRead](
        data=[_read(notification, settings) for notification in found.data], has_more=found.has_more
    )


@router.post("/notifications/{notification_id}/read")
async def read_notification(
    notification_id: NotificationId, principal: Person, session: Session, settings: SettingsDep
) -> NotificationRead:
    """Mark one of your notifications read (again is fine: the first time is kept)."""
    notification = await service.mark_read(
        session, user_id=principal.user.id, notification_id=notification_id
    )
    return _read(notification, settings)


@router.delete("/notifications/{notification_id}")
async def delete_notification(
    notification_id: NotificationId, principal: Person, session: Session
) -> NotificationDeleted:
    """Delete one of your notifications."""
    notification = await service.delete_notification(
        session, user_id=principal.user.id, notification_id=notification_id
    )
    return NotificationDeleted(id=notification.id)
