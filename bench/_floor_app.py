"""The HTTP floor: the smallest server that can answer ``POST /v1/wallets/{id}/debits`` on this machine. A
FastAPI route served by uvicorn exactly like ``prepaid serve`` (same worker count), doing the raw SQL debit of
``bench/ledger.py`` and nothing else: no authentication, no ORM, no middleware, no logging.

It shows how much of the distance between the HTTP path and raw SQL is HTTP itself (the client process, the
server's parsing and framing, the loopback) and how much is prepaid's own work. ``bench/ledger.py --paths
...,floor`` starts it with::

    python -m uvicorn bench._floor_app:create_app --factory --workers N --port P

and these environment variables: ``BENCH_FLOOR_DATABASE_URL``, ``BENCH_FLOOR_LOTS`` (a JSON file mapping each
wallet to its lot), ``BENCH_FLOOR_POOL`` (connections per worker) and ``BENCH_FLOOR_PREFIX`` (idempotency
keys).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from pydantic import BaseModel

from bench import ledger as bench_ledger


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
