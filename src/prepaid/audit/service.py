"""The audit log: every admin write records who, what, when, and the values before and after.

Call ``record`` in the same transaction as the change, so the entry exists exactly when the change does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit.models import AuditLogEntry
from prepaid.ids import new_id
from prepaid.observability import request_context
from prepaid.pagination import Page, PageParams, paginate


@dataclass(frozen=True)
class Actor:
    user_id: str | None
    api_key_id: str | None = None


async def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: str | None,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> AuditLogEntry:
    context = request_context()
    entry = AuditLogEntry(
        id=new_id("aud"),
        actor_user_id=actor.user_id,
        actor_api_key_id=actor.api_key_id,
        action=action,
        object_type=object_type,
        object_id=object_id,
        before=before,
        after=after,
        request_id=context.get("request_id"),
        ip=context.get("client_ip"),
    )
    session.add(entry)
    return entry


async def erase_personal_data(
    session: AsyncSession, *, object_type: str, object_id: str, fields: tuple[str, ...]
) -> None:
    """Blank a deleted person's data in the entries about them; the record of who changed what stays."""
    entries = await session.scalars(
        select(AuditLogEntry).where(
            AuditLogEntry.object_type == object_type, AuditLogEntry.object_id == object_id
        )
    )
    for entry in entries:
        for side in ("before", "after"):
            values = getattr(entry, side)
            if values and any(field in values for field in fields):
                setattr(entry, side, {k: (None if k in fields else v) for k, v in values.items()})


async def list_entries(
    session: AsyncSession,
    *,
    params: PageParams,
    actor_user_id: str | None = None,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> Page[AuditLogEntry]:
    stmt: Select[AuditLogEntry] = select(AuditLogEntry)
    if actor_user_id:
        stmt = stmt.where(AuditLogEntry.actor_user_id == actor_user_id)
    if action:
        stmt = stmt.where(AuditLogEntry.action == action)
    if object_type:
        stmt = stmt.where(AuditLogEntry.object_type == object_type)
    if object_id:
        stmt = stmt.where(AuditLogEntry.object_id == object_id)
    if created_after:
        stmt = stmt.where(AuditLogEntry.created_at >= created_after)
    if created_before:
        stmt = stmt.where(AuditLogEntry.created_at < created_before)
    return await paginate(session, stmt, AuditLogEntry.id, params)
