"""The background runner: one asyncio task per process that runs every registered job in turn.

Jobs are plain ``async def job(db, settings) -> int`` functions returning how much work they did. A job that
several processes may run at once claims its rows with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL; SQLite has one
process), so any number of processes cooperate without doing a piece of work twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prepaid.db import Database
from prepaid.observability import log
from prepaid.settings import Settings

JobFunction = Callable[[Database, Settings], Awaitable[int]]


@dataclass(frozen=True)
class Job:
    name: str
    run: JobFunction


class JobRunner:
    def __init__(self, db: Database, settings: Settings, jobs: list[Job]) -> None:
        self.db = db
        self.settings = settings
        self.jobs = jobs
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> dict[str, int]:
        """Run every job once; a failing job is logged and does not stop the others."""
        done: dict[str, int] = {}
        for job in self.jobs:
            try:
                done[job.name] = await job.run(self.db, self.settings)
            except Exception as error:
                log.exception("job_failed", job=job.name, error_type=type(error).__name__)
                done[job.name] = -1
        return done

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.settings.job_interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="prepaid-runner")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
            self._task = None
