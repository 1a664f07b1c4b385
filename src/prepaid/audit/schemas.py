from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from prepaid.schemas import Output


class AuditLogEntryRead(Output):
    object: Literal["audit_log_entry"] = "audit_log_entry"
    id: str
    actor_user_id: str | None
    actor_api_key_id: str | None
    action: str
    object_type: str
    object_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip: str | None
    created_at: datetime
