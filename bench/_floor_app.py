"""The HTTP floors: the least a server can do to answer ``POST /v1/wallets/{id}/debits`` on this machine.

``create_app``: a FastAPI route served by uvicorn exactly like ``prepaid serve`` (same worker count), doing the
raw SQL debit of ``bench/ledger.py`` and nothing else: no authentication, no ORM, no middleware, no logging. It
shows how much of the distance between the HTTP path and raw SQL is HTTP itself (the client process, the
server's parsing and framing, the loopback). ``bench/ledger.py --paths ...,floor`` starts it with::

    python -m uvicorn bench._floor_app:create_app --factory --workers N --port P

and these environment variables: ``BENCH_FLOOR_DATABASE_URL``, ``BENCH_FLOOR_LOTS`` (a JSON file mapping each
wallet to its lot), ``BENCH_FLOOR_POOL`` (connections per worker) and ``BENCH_FLOOR_PREFIX`` (idempotency
keys).

``create_prepaid_app`` (PostgreSQL, ``--paths ...,plumbing``): prepaid's own app, with every middleware, the
API key's authentication and the request's SQLAlchemy transaction, whose debit route runs the same raw SQL
statements in that transaction instead of ``ledger.service``. It is what any debit built on the design's stack
(FastAPI routes, the request owning one SQLAlchemy session) costs before the ledger does any work of its own.
It reads prepaid's settings (``PREPAID_*``) and ``BENCH_FLOOR_LOTS`` and ``BENCH_FLOOR_PREFIX``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from bench import ledger as bench_ledger
from prepaid.app import _limit_by_caller  # the rate limit every /v1 route counts against
from prepaid.app import create_app as create_prepaid
from prepaid.deps import Principal, Session


class Debit(BaseModel):
    amount: int
    idempotency_key: str
    reason: str = ""


def create_app() -> FastAPI:
    url = os.environ["BENCH_FLOOR_DATABASE_URL"]
    lots: dict[str, str] = json.loads(Path(os.environ["BENCH_FLOOR_LOTS"]).read_text())
    pool = int(os.environ.get("BENCH_FLOOR_POOL", "16"))
    prefix = f"{os.environ.get('BENCH_FLOOR_PREFIX', 'floor')}-{os.getpid()}"
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        raw = (
            bench_ledger.raw_postgres(url, concurrency=pool, lots=lots, prefix=prefix)
            if url.startswith("postgresql")
            else bench_ledger.raw_sqlite(
                bench_ledger.sqlite_path(url), concurrency=pool, lots=lots, prefix=prefix
            )
        )
        async with raw as operation:
            state["debit"] = operation
            yield

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    sequence = itertools.count()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/wallets/{wallet_id}/debits", status_code=201)
    async def debit(wallet_id: str, body: Debit, response: Response) -> dict[str, Any]:
        if not await state["debit"](0, next(sequence), wallet_id):
            response.status_code = 402
        return {"object": "movement", "wallet": wallet_id, "amount": body.amount}

    return app


def create_prepaid_app() -> FastAPI:
    lots: dict[str, str] = json.loads(Path(os.environ["BENCH_FLOOR_LOTS"]).read_text())
    prefix = f"{os.environ.get('BENCH_FLOOR_PREFIX', 'plumbing')}-{os.getpid()}"
    sequence = itertools.count()
    app = create_prepaid()
    router = APIRouter(dependencies=[Depends(_limit_by_caller)])

    @router.post("/v1/wallets/{wallet_id}/debits", status_code=201)
    async def debit(
        wallet_id: str, body: Debit, principal: Principal, session: Session, response: Response
    ) -> dict[str, Any]:
        conn: AsyncConnection = await session.connection()

        async def fetchval(statement: str, *args: Any) -> Any:
            return (await conn.exec_driver_sql(statement, args)).scalar()

        async def execute(statement: str, *args: Any) -> None:
            await conn.exec_driver_sql(statement, args)

        key = f"{prefix}-{next(sequence)}"
        if not await bench_ledger.pg_debit(
            fetchval, execute, wallet_id=wallet_id, lot_id=lots[wallet_id], key=key
        ):
            response.status_code = 402
        return {"object": "movement", "wallet": wallet_id, "amount": body.amount, "by": principal.caller_id}

    app.include_router(router)
    app.router.routes.insert(0, app.router.routes.pop())  # before prepaid's own debit route
    return app
