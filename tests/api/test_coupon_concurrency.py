"""Checkouts racing for a coupon's last use, each reservation in its own session and transaction, all started
at once with ``asyncio.gather``, on SQLite and PostgreSQL.

PostgreSQL locks the coupon row ``FOR UPDATE``; SQLite serialises writers with ``BEGIN IMMEDIATE``. Either way
the reservations count one after another, so a limit is never exceeded.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.catalog import pricing
from prepaid.catalog import service as catalog_service
from prepaid.catalog.models import Coupon, CouponRedemption
from prepaid.db import utcnow
from tests import factories
from tests.api.test_coupons import Store, make_plans
from tests.factories import make_customer

CHECKOUTS = 20
DEADLOCK_TIMEOUT = 60  # seconds: far above what the reservations need


@pytest.fixture
async def store(app: Any, client: httpx.AsyncClient) -> Store:
    admin = await make_customer(app, roles=["user", "admin"])
    await make_plans(app, admin.id)
    return Store(app, client, admin, await make_customer(app), await make_customer(app))


Job = Callable[[AsyncSession], Awaitable[Any]]


async def _race(store: Store, engine_name: str, jobs: list[Job]) -> list[Any]:
    """Every job's result or exception, each job in a transaction of its own, all let go at once; fails if
    they do not all finish (a deadlock).

    On PostgreSQL every transaction is open (its connection checked out and warmed up) before any job starts,
    so no checkout can finish before the others begin. SQLite's ``BEGIN IMMEDIATE`` takes the
    write lock, so there the jobs are let go just before their transactions begin, and queue on the lock."""
    barrier = asyncio.Barrier(len(jobs))

    async def run(job: Job) -> Any:
        if engine_name == "sqlite":
            await barrier.wait()
        async with store.db.transaction() as session:
            if engine_name != "sqlite":
                await _warm_up(session)
                await barrier.wait()
            return await job(session)

    return await asyncio.wait_for(
        asyncio.gather(*(run(job) for job in jobs), return_exceptions=True), DEADLOCK_TIMEOUT
    )


async def _warm_up(session: AsyncSession) -> None:
    """Check the connection out and read what the jobs read, so that a fresh connection's first-use work
    (asyncpg's type introspection and statement preparation) is done before the race, not during it."""
    await session.execute(select(Coupon).limit(1))
    await session.execute(select(CouponRedemption).limit(1))
    await session.execute(select(func.count()).select_from(CouponRedemption))


def _reserve(code: str, user: factories.TestUser | None, order_id: str) -> Job:
    async def job(session: AsyncSession) -> CouponRedemption:
        now = utcnow()
        return await catalog_service.reserve_coupon(
            session,
            code=code,
            user_id=user.id if user else None,
            order_id=order_id,
            expires_at=now + timedelta(minutes=30),
            now=now,
        )

    return job


def _redeem(order_id: str) -> Job:
    return lambda session: catalog_service.redeem_reservation(session, order_id)


def _release(order_id: str) -> Job:
    return lambda session: catalog_service.release_reservation(session, order_id)


async def _counting_uses(store: Store) -> int:
    now = utcnow()
    async with store.db.transaction(write=False) as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(CouponRedemption)
                .where(
                    (CouponRedemption.status == "redeemed")
                    | ((CouponRedemption.status == "reserved") & (CouponRedemption.expires_at > now))
                )
            )
            or 0
        )


async def test_twenty_checkouts_for_a_coupon_with_one_use_left_let_exactly_one_through(
    store: Store, engine_name: str
) -> None:
    await store.create(code="LAST", max_redemptions=1)
    buyers = [await make_customer(store.app) for _ in range(CHECKOUTS)]

    outcomes = await _race(
        store, engine_name, [_reserve("last", buyer, f"ord_race_{i}") for i, buyer in enumerate(buyers)]
    )

    won = [o for o in outcomes if isinstance(o, CouponRedemption)]
    lost = [o for o in outcomes if isinstance(o, pricing.CouponExhausted)]
    assert len(won) == 1, [
        o for o in outcomes if not isinstance(o, CouponRedemption | pricing.CouponExhausted)
    ]
    assert len(lost) == CHECKOUTS - 1
    assert {error.code for error in lost} == {"coupon_exhausted"}
    assert await _counting_uses(store) == 1
    read = await store.client.get("/v1/coupons/LAST", headers=store.admin.headers)
    assert (read.json()["times_redeemed"], read.json()["reserved"]) == (0, 1)
    (winner,) = won
    assert (await store.redeem(winner.order_id)).status == "redeemed"
    with pytest.raises(pricing.CouponExhausted):
        await store.reserve("LAST", store.other, "ord_after")


async def test_twenty_checkouts_by_one_user_with_a_per_user_limit_of_one_let_exactly_one_through(
    store: Store,
    engine_name: str,
) -> None:
    await store.create(code="ONEEACH", max_per_user=1)

    outcomes = await _race(
        store, engine_name, [_reserve("ONEEACH", store.user, f"ord_{i}") for i in range(CHECKOUTS)]
    )

    kinds = Counter(type(o).__name__ for o in outcomes)
    assert kinds == {"CouponRedemption": 1, "CouponPerUserLimit": CHECKOUTS - 1}, outcomes
    assert (await store.reserve("ONEEACH", store.other, "ord_other")).status == "reserved"


async def test_the_same_order_reserving_twenty_times_at_once_holds_one_use(
    store: Store, engine_name: str
) -> None:
    await store.create(code="RETRY", max_redemptions=5)

    outcomes = await _race(
        store, engine_name, [_reserve("RETRY", store.user, "ord_same") for _ in range(CHECKOUTS)]
    )

    assert all(isinstance(o, CouponRedemption) for o in outcomes), outcomes
    assert len({o.id for o in outcomes}) == 1
    assert await _counting_uses(store) == 1


async def test_a_release_racing_a_redeem_of_one_reservation_resolves_it_once(
    store: Store, engine_name: str
) -> None:
    await store.create(code="RACE")
    for round_ in range(6):
        order = f"ord_{round_}"
        await store.reserve("RACE", store.user, order)

        redeemed, released = await _race(store, engine_name, [_redeem(order), _release(order)])

        async with store.db.transaction(write=False) as session:
            stored = await session.scalar(select(CouponRedemption).where(CouponRedemption.order_id == order))
        assert isinstance(redeemed, CouponRedemption), redeemed  # a paid order always keeps its use here
        assert stored is not None and stored.status == "redeemed" and stored.redeemed_at is not None
        if isinstance(released, Exception):  # the redeem came first: the use stays used
            assert getattr(released, "code", None) == "reservation_redeemed", released
        else:  # the release came first; the redeem then took a use again (no limit on this coupon)
            assert isinstance(released, CouponRedemption) and released.status == "released"
    assert await _counting_uses(store) == 6


async def test_lapsed_reservations_free_their_uses_for_concurrent_checkouts(
    store: Store, engine_name: str
) -> None:
    await store.create(code="FIVE", max_redemptions=5)
    past = utcnow() - timedelta(hours=1)
    for i in range(5):  # five reservations that lapsed half an hour ago, never released
        await store.reserve(
            "FIVE", store.other, f"ord_old_{i}", now=past, expires_at=past + timedelta(minutes=30)
        )

    outcomes = await _race(
        store, engine_name, [_reserve("FIVE", store.user, f"ord_new_{i}") for i in range(CHECKOUTS)]
    )

    assert sum(isinstance(o, CouponRedemption) for o in outcomes) == 5
    assert sum(isinstance(o, pricing.CouponExhausted) for o in outcomes) == CHECKOUTS - 5
    assert await _counting_uses(store) == 5
