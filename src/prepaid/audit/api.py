from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from prepaid.audit import service
from prepaid.audit.schemas import AuditLogEntryRead
from prepaid.deps import Admin, Pagination, Session
from prepaid.pagination import ListResponse
from prepaid.schemas import Timestamp

router = APIRouter(prefix="/v1", tags=["audit"])
Filter = Annotated[str | None, Query(max_length=100)]


@router.get("/audit_log")
async def list_audit_log(
    _admin: Admin,
    session: Session,
    page: Pagination,
    actor: Filter = None,
    action: Filter = None,
    object_type: Filter = None,
    object_id: Filter = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
) -> ListResponse[AuditLogEntryRead]:
    entries = await service.list_entries(
        session,
        params=page,
        actor_user_id=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        created_after=created_after,
        created_before=created_before,
    )
    return ListResponse[AuditLogEntryRead].of(entries, AuditLogEntryRead)
