"""Movements racing each other, each in its own transaction, all started at once with ``asyncio.gather``.

SQLite serialises writers with ``BEGIN IMMEDIATE`` and a busy timeout; PostgreSQL locks the wallet rows
``FOR UPDATE`` in id order. Either way a wallet's movements happen one after another: no overdraft, no
double resolution, no deadlock, one transaction per idempotency key.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from prepaid.db import utcnow
from prepaid.ledger import service
from prepaid.ledger.errors import HoldNotPending, InsufficientCredits
from tests.ledger.conftest import Ledger, new_key

DEADLOCK_TIMEOUT = 60  # seconds: far above the time the movements need, far below pytest's patience


async def gather_outcomes(*calls: Any) -> list[Any]:
    """Every call's result or exception; fails if they do not all finish (a deadlock)."""
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), DEADLOCK_TIMEOUT)


async def test_hundred_concurrent_spends_of_one_on_ten_credits_let_exactly_ten_through(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)

    outcomes = await gather_outcomes(*(ledger.spend(wallet, 1) for _ in range(100)))

    succeeded = [o for o in outcomes if isinstance(o, service.Movement)]
    refused = [o for o in outcomes if isinstance(o, InsufficientCredits)]
    assert len(succeeded) == 10, [
        o for o in outcomes if not isinstance(o, service.Movement | InsufficientCredits)
    ]
    assert len(refused) == 90
    assert {error.code for error in refused} == {"insufficient_credits"}
    assert {error.extra["available"] for error in refused} == {0}
    assert (await ledger.balance(wallet)).available == 0
    assert len(await ledger.transactions(kind="spend")) == 10
    assert await ledger.account_sum("sys_usage") == 10
    assert await ledger.breaches() == []


async def test_concurrent_spends_and_holds_never_take_more_than_the_wallet_has(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 30)

    calls = [ledger.spend(wallet, 2) for _ in range(15)] + [ledger.hold(wallet, 3) for _ in range(15)]
    outcomes = await gather_outcomes(*calls)

    assert all(isinstance(o, service.Movement | InsufficientCredits) for o in outcomes), outcomes
    moved = sum(o.hold.amount if o.hold else 2 for o in outcomes if isinstance(o, service.Movement))
    balance = await ledger.balance(wallet)
    assert moved <= 30
    assert balance.available == 30 - moved >= 0
    assert balance.available < 2  # every refusal was for want of credits
    assert balance.held == 3 * sum(1 for o in outcomes if isinstance(o, service.Movement) and o.hold)


@pytest.mark.parametrize("rounds", [8])
async def test_concurrent_capture_and_release_of_one_hold_resolve_it_exactly_once(
    ledger: Ledger, rounds: int
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10 * rounds)
    winners: Counter[str] = Counter()
    for _ in range(rounds):
        held = await ledger.hold(wallet, 10)
        assert held.hold is not None
        hold_id = held.hold.id

        capture, release = await gather_outcomes(ledger.capture(hold_id, 6), ledger.release(hold_id))

        results = [o for o in (capture, release) if isinstance(o, service.Movement)]
        losers = [o for o in (capture, release) if isinstance(o, Exception)]
        assert len(results) == 1 and len(losers) == 1, (capture, release)
        assert isinstance(losers[0], HoldNotPending) and losers[0].code == "hold_not_pending"
        stored = await ledger.get_hold(hold_id)
        winner = "captured" if capture is results[0] else "released"
        assert stored.status == winner
        assert stored.captured == (6 if winner == "captured" else 0)
        assert len(await ledger.transactions(reference_id=hold_id)) == 1
        winners[winner] += 1
    balance = await ledger.balance(wallet)
    assert balance.held == 0
    assert balance.available == 10 * rounds - 6 * winners["captured"]
    assert await ledger.account_sum("sys_usage") == 6 * winners["captured"]


async def test_opposite_transfers_between_two_wallets_never_deadlock_and_conserve_credits(
    ledger: Ledger,
) -> None:
    a, b = await ledger.wallet(), await ledger.wallet()
    await ledger.grant(a, 100)
    await ledger.grant(b, 100, source="paid")

    calls = [ledger.transfer(a, b, 1) for _ in range(30)] + [ledger.transfer(b, a, 2) for _ in range(30)]
    outcomes = await gather_outcomes(*calls)

    failures = [o for o in outcomes if not isinstance(o, service.Movement)]
    assert failures == []
    balance_a, balance_b = await ledger.balance(a), await ledger.balance(b)
    assert balance_a.available == 100 - 30 + 60
    assert balance_b.available == 100 + 30 - 60
    assert balance_a.available + balance_b.available == 200
    assert sum(lot.remaining for lot in await ledger.lots(a) + await ledger.lots(b)) == 200


async def test_one_idempotency_key_sent_twenty_times_at_once_makes_one_transaction(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 50)
    key = new_key("same")

    outcomes = await gather_outcomes(*(ledger.spend(wallet, 5, idempotency_key=key) for _ in range(20)))

    assert all(isinstance(o, service.Movement) for o in outcomes), outcomes
    assert len({o.transaction.id for o in outcomes}) == 1
    assert sum(1 for o in outcomes if not o.replayed) == 1
    assert len(await ledger.transactions(idempotency_key=key)) == 1
    assert (await ledger.balance(wallet)).available == 45


async def test_one_hold_key_sent_twenty_times_at_once_reserves_once_and_names_one_hold(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 50)
    key = new_key("hold")

    outcomes = await gather_outcomes(*(ledger.hold(wallet, 7, idempotency_key=key) for _ in range(20)))

    assert all(isinstance(o, service.Movement) for o in outcomes), outcomes
    assert len({o.transaction.id for o in outcomes}) == 1
    assert len({o.hold.id for o in outcomes if o.hold}) == 1 and all(o.hold for o in outcomes)
    balance = await ledger.balance(wallet)
    assert (balance.available, balance.held) == (43, 7)


async def test_lot_sweep_racing_spends_neither_spends_nor_sweeps_a_credit_twice(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    grant = await ledger.grant(wallet, 20)
    await ledger.grant(wallet, 5, source="paid")
    ((lot_id, _),) = grant.transaction.lot_moves
    await ledger.expire_lot(lot_id)

    calls: list[Any] = [ledger.spend(wallet, 1) for _ in range(10)] + [ledger.sweep() for _ in range(3)]
    outcomes = await gather_outcomes(*calls)

    spends, sweeps = outcomes[:10], outcomes[10:]
    assert all(isinstance(o, service.Movement | InsufficientCredits) for o in spends), spends
    assert sum(1 for o in spends if isinstance(o, service.Movement)) == 5
    assert all(isinstance(o, int) for o in sweeps), sweeps
    assert (await ledger.balance(wallet)).available == 0
    assert await ledger.account_sum("sys_expired") == 20
    assert len(await ledger.transactions(kind="expire")) == 1


async def test_one_capture_key_sent_twenty_times_at_once_captures_once_and_every_answer_shows_it(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 50)
    held = await ledger.hold(wallet, 10)
    assert held.hold is not None
    key = new_key("capture")

    outcomes = await gather_outcomes(
        *(ledger.capture(held.hold.id, 4, idempotency_key=key) for _ in range(20))
    )

    assert all(isinstance(o, service.Movement) for o in outcomes), outcomes
    assert len({o.transaction.id for o in outcomes}) == 1
    assert {(o.hold.status, o.hold.captured) for o in outcomes if o.hold} == {("captured", 4)}
    assert all(o.hold for o in outcomes)
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 46, 0, 0)


async def test_the_hold_expiry_job_racing_a_capture_resolves_the_hold_once(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 100)
    later = utcnow() + timedelta(hours=2)
    for _ in range(5):
        held = await ledger.hold(wallet, 10, expires_at=utcnow() + timedelta(hours=1))
        assert held.hold is not None

        captured, expired = await gather_outcomes(
            ledger.capture(held.hold.id, 10), ledger.expire_holds(now=later)
        )

        stored = await ledger.get_hold(held.hold.id)
        if isinstance(captured, service.Movement):
            assert (stored.status, expired) == ("captured", 0)
        else:
            assert isinstance(captured, HoldNotPending), captured
            assert (stored.status, expired) == ("expired", 1)
    assert (await ledger.balance(wallet)).held == 0
