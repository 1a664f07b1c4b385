"""Ledger jobs on the background runner: expire holds past ``expires_at``, sweep expired lots. Each run is one
transaction; a wallet another process holds is skipped and taken on the next run."""

from __future__ import annotations

from prepaid.db import Database, utcnow
from prepaid.ledger import service
from prepaid.settings import Settings


async def expire_holds(db: Database, _settings: Settings) -> int:
    async with db.transaction() as session:
        return await service.expire_due_holds(session, now=utcnow())


async def sweep_expired_lots(db: Database, _settings: Settings) -> int:
    async with db.transaction() as session:
        return await service.sweep_expired_lots(session, now=utcnow())
