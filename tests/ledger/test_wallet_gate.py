"""The wallet gate (``db.wallet_gate``): on PostgreSQL, one process's spends on the same wallet queue in the
process, not on the wallet's row lock in PostgreSQL; the row lock still decides, and a gate never blocks a
transaction for longer than ``GATE_TIMEOUT``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest
from sqlalchemy import text

from prepaid import db as db_module
from prepaid.ledger import service
from prepaid.ledger.errors import InsufficientCredits
from tests.ledger.conftest import Ledger, new_key

_WAITING_ON_LOCKS = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


@pytest.fixture(autouse=True)
def _postgresql_only(ledger: Ledger) -> None:
    if ledger.engine != "postgresql":
        pytest.skip("SQLite queues every write transaction of a process already")


async def _backends_waiting_on_locks(ledger: Ledger) -> int:
    async with ledger.db.transaction(write=False) as session:
        return int(await session.scalar(_WAITING_ON_LOCKS) or 0)


async def _hold_open(
    ledger: Ledger,
    wallet: str,
    inside: asyncio.Event,
    finish: asyncio.Event,
    *,
    movement: str = "spend",
    amount: int = 1,
) -> None:
    """A spend (or a grant) whose transaction stays open (the wallet's row lock, and a spend's gate, held) until
    ``finish``."""
    async with ledger.db.transaction() as session:
        make = service.grant if movement == "grant" else service.spend
        await make(session, wallet_id=wallet, amount=amount, idempotency_key=new_key())
        inside.set()
        await finish.wait()


async def _until_one_waits_on_a_lock(ledger: Ledger) -> None:
    async with asyncio.timeout(20):
        while await _backends_waiting_on_locks(ledger) != 1:
            await asyncio.sleep(0.05)


async def _still_waiting(task: Awaitable[object]) -> bool:
    await asyncio.sleep(0.3)
    return not asyncio.ensure_future(task).done()


async def test_spends_on_one_wallet_wait_in_the_process_and_each_gets_its_turn(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    other = await ledger.wallet()
    await ledger.grant(wallet, 4)
    await ledger.grant(other, 1)
    inside, finish = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_hold_open(ledger, wallet, inside, finish))
    await inside.wait()

    queued = [asyncio.create_task(ledger.spend(wallet, 1)) for _ in range(3)]
    elsewhere = await ledger.spend(other, 1)  # another wallet's gate is free

    assert elsewhere.balances[other].balance == 0
    assert await _still_waiting(queued[0])
    assert await _backends_waiting_on_locks(ledger) == 0  # without the gate, three wait on the row lock
    finish.set()
    await first
    await asyncio.gather(*queued)
    with pytest.raises(InsufficientCredits):  # a refused spend rolls back and gives its gate back too
        await ledger.spend(wallet, 1)
    assert (await ledger.balance(wallet)).balance == 0
    assert ledger.db._wallet_gates() == {}


async def test_a_gate_held_too_long_is_passed_and_the_row_lock_decides(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "GATE_TIMEOUT", 0.05)
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 2)
    inside, finish = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_hold_open(ledger, wallet, inside, finish))
    await inside.wait()

    second = asyncio.create_task(ledger.spend(wallet, 2))

    assert await _still_waiting(second)
    assert await _backends_waiting_on_locks(ledger) == 1  # past the gate, on the row lock
    finish.set()
    await first
    with pytest.raises(InsufficientCredits):  # it saw the first spend's balance once the row lock was free
        await second
    assert (await ledger.balance(wallet)).balance == 1
    assert ledger.db._wallet_gates() == {}


async def test_a_transaction_that_holds_a_wallets_lock_never_waits_for_its_gate(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grant locks the wallet without its gate; a spend in the same transaction then must not queue behind a
    spend that holds the gate and waits for that very row lock (it would until ``GATE_TIMEOUT``)."""
    monkeypatch.setattr(db_module, "GATE_TIMEOUT", 60.0)
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 5)
    locked, finish = asyncio.Event(), asyncio.Event()

    async def grant_then_spend() -> None:
        async with ledger.db.transaction() as session:
            await service.grant(session, wallet_id=wallet, amount=1, idempotency_key=new_key())
            locked.set()
            await finish.wait()
            await service.spend(session, wallet_id=wallet, amount=1, idempotency_key=new_key(), memo="")

    first = asyncio.create_task(grant_then_spend())
    await locked.wait()
    second = asyncio.create_task(ledger.spend(wallet, 1))  # takes the gate, then waits for the row lock
    await _until_one_waits_on_a_lock(ledger)
    finish.set()

    async with asyncio.timeout(20):  # without the rule, the first would wait 60 s for the second's gate
        await asyncio.gather(first, second)
    assert (await ledger.balance(wallet)).balance == 4
    assert ledger.db._wallet_gates() == {}


async def _spend_after_the_lock_is_granted(
    ledger: Ledger, wallet: str, spend: int, *, meanwhile: str, amount: int
) -> service.Movement:
    """A spend of ``spend`` that waits on the wallet's row lock while a ``meanwhile`` movement of ``amount``
    commits."""
    inside, finish = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_hold_open(ledger, wallet, inside, finish, movement=meanwhile, amount=amount))
    await inside.wait()
    second = asyncio.create_task(ledger.spend(wallet, spend))
    await _until_one_waits_on_a_lock(ledger)
    finish.set()
    await first
    return await second


async def test_a_spend_that_waited_for_the_lock_spends_a_lot_granted_meanwhile(ledger: Ledger) -> None:
    """The lots are read after the row lock is granted: a lot that a grant committed while the spend waited
    is there to spend (read before, or in the locking statement's snapshot, it would be missing and the
    spend would run the wallet into debt beside an unspent lot)."""
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 2)

    spent = await _spend_after_the_lock_is_granted(ledger, wallet, 6, meanwhile="grant", amount=5)

    assert spent.balances[wallet].balance == 1
    account = await ledger.account(wallet)
    assert (account.balance, account.debt) == (1, 0)
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [0, 1]
    assert await ledger.breaches() == []


async def test_a_spend_that_waited_for_the_lock_skips_a_lot_emptied_meanwhile(ledger: Ledger) -> None:
    """A lot that a spend emptied while this one waited is not taken from again (with the lots of before the
    wait it would be, and its remaining would go below zero)."""
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 3)
    await ledger.grant(wallet, 3)

    spent = await _spend_after_the_lock_is_granted(ledger, wallet, 2, meanwhile="spend", amount=3)

    assert spent.balances[wallet].balance == 1
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [0, 1]
    assert await ledger.breaches() == []
