"""The hot path of ``ledger.service`` (spends, holds, clawbacks, captures and releases written as Core statements;
on PostgreSQL one data-modifying statement that checks the idempotency key itself): the answers it gives where
the key is looked up late, the session it leaves consistent, and the rows it writes."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from prepaid.errors import IdempotencyError
from prepaid.ledger import service
from prepaid.ledger.errors import CaptureExceedsHold, HoldNotPending, InsufficientCredits, WalletFrozen
from prepaid.ledger.models import Account, Hold, HoldAllocation, Lot, Posting
from tests.ledger.conftest import Ledger, in_hours, new_key


async def test_a_replayed_spend_answers_its_movement_even_when_it_would_now_be_refused(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 5)
    key = new_key()
    first = await ledger.spend(wallet, 5, idempotency_key=key)

    empty_again = await ledger.spend(wallet, 5, idempotency_key=key)  # no credits left: still the replay
    await ledger.set_wallet(wallet, frozen=True)
    frozen_again = await ledger.spend(wallet, 5, idempotency_key=key)

    assert empty_again.replayed and frozen_again.replayed
    assert empty_again.transaction.id == first.transaction.id == frozen_again.transaction.id
    with pytest.raises(WalletFrozen):
        await ledger.spend(wallet, 1)
    await ledger.set_wallet(wallet, frozen=False)
    with pytest.raises(InsufficientCredits):
        await ledger.spend(wallet, 1)
    assert len(await ledger.transactions(idempotency_key=key)) == 1


async def test_a_replayed_capture_answers_its_movement_though_the_hold_is_resolved(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    hold_id = (await ledger.hold(wallet, 6)).hold.id  # type: ignore[union-attr]
    key = new_key()
    first = await ledger.capture(hold_id, 4, idempotency_key=key)

    again = await ledger.capture(hold_id, 4, idempotency_key=key)

    assert again.replayed and again.transaction.id == first.transaction.id
    assert again.hold is not None and again.hold.status == "captured" and again.hold.captured == 4
    with pytest.raises(HoldNotPending):
        await ledger.capture(hold_id, 4)
    with pytest.raises(IdempotencyError):
        await ledger.capture(hold_id, 5, idempotency_key=key)
    assert (await ledger.balance(wallet)).available == 6


async def test_a_capture_over_the_hold_with_a_new_key_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    hold_id = (await ledger.hold(wallet, 6)).hold.id  # type: ignore[union-attr]
    before = await ledger.snapshot()

    with pytest.raises(CaptureExceedsHold):
        await ledger.capture(hold_id, 7)

    assert await ledger.snapshot() == before


async def test_one_key_sent_at_once_for_spends_on_two_wallets_makes_one_movement(ledger: Ledger) -> None:
    first, second = await ledger.wallet(), await ledger.wallet()
    await ledger.grant(first, 10)
    await ledger.grant(second, 10)
    key = new_key("shared")

    outcomes = await asyncio.gather(
        ledger.spend(first, 3, idempotency_key=key),
        ledger.spend(second, 3, idempotency_key=key),
        return_exceptions=True,
    )

    made = [o for o in outcomes if isinstance(o, service.Movement)]
    refused = [o for o in outcomes if isinstance(o, IdempotencyError)]
    assert len(made) == 1 and len(refused) == 1, outcomes
    assert len(await ledger.transactions(idempotency_key=key)) == 1
    moved = made[0].transaction.lot_moves
    assert sorted([(await ledger.balance(w)).available for w in (first, second)]) == [7, 10]
    assert len(moved) == 1


async def test_a_spend_across_several_lots_takes_them_in_order_and_writes_every_posting(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    promo = (await ledger.grant(wallet, 3, source="promotional")).transaction.lot_moves[0][0]
    paid = (await ledger.grant(wallet, 4, source="paid")).transaction.lot_moves[0][0]
    soon = (
        await ledger.grant(wallet, 2, source="promotional", expires_at=in_hours(1))
    ).transaction.lot_moves[0][0]

    movement = await ledger.spend(wallet, 6)

    assert movement.transaction.lot_moves == [[soon, -2], [promo, -3], [paid, -1]]
    assert [(lot.id, lot.remaining) for lot in await ledger.lots(wallet)] == [
        (promo, 0),
        (paid, 3),
        (soon, 0),
    ]
    assert await ledger.postings(movement.transaction.id) == [(wallet, -6), ("sys_usage", 6)]


async def test_a_hold_on_overdraft_records_its_allocations_in_the_order_taken(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    lot_id = (await ledger.grant(wallet, 2)).transaction.lot_moves[0][0]

    movement = await ledger.hold(wallet, 6)

    assert movement.hold is not None
    async with ledger.db.transaction(write=False) as session:
        allocations = list(
            await session.execute(
                select(HoldAllocation.lot_id, HoldAllocation.amount)
                .where(HoldAllocation.hold_id == movement.hold.id)
                .order_by(HoldAllocation.id)
            )
        )
    assert [tuple(row) for row in allocations] == [(lot_id, 2), (None, 4)]
    assert movement.balances[wallet] == service.WalletBalance(wallet, "credit", -4, 6, 4)
    released = await ledger.release(movement.hold.id)
    assert released.balances[wallet] == service.WalletBalance(wallet, "credit", 2, 0, 0)


async def test_a_movement_leaves_the_objects_its_session_holds_up_to_date(ledger: Ledger) -> None:
    wallet_id = await ledger.wallet()
    lot_id = (await ledger.grant(wallet_id, 10)).transaction.lot_moves[0][0]

    async with ledger.db.transaction() as session:
        wallet = await service.get_wallet(session, wallet_id)
        lot = await session.get(Lot, lot_id)
        assert lot is not None
        movement = await service.hold(
            session, wallet_id=wallet_id, amount=4, expires_at=in_hours(1), idempotency_key=new_key()
        )
        assert (wallet.balance, wallet.held, lot.remaining) == (6, 4, 6)
        assert movement.hold is not None
        hold = await session.get(Hold, movement.hold.id)
        assert hold is movement.hold
        captured = await service.capture(session, hold_id=hold.id, amount=1, idempotency_key=new_key())
        assert captured.hold is hold and (hold.status, hold.captured) == ("captured", 1)
        assert (wallet.balance, wallet.held, lot.remaining) == (9, 0, 9)
        # What the session reads back through the ORM is what the database holds.
        fresh = await session.scalar(
            select(Account).where(Account.id == wallet_id).execution_options(populate_existing=True)
        )
        assert fresh is wallet and (wallet.balance, wallet.held) == (9, 0)
        postings = await service.postings_by_transaction(session, transaction_ids=[captured.transaction.id])
        stored = list(
            await session.scalars(
                select(Posting).where(Posting.transaction_id == captured.transaction.id).order_by(Posting.id)
            )
        )
        assert [(p.id, p.account_id, p.amount) for p in postings[captured.transaction.id]] == [
            (p.id, p.account_id, p.amount) for p in stored
        ]


async def test_postings_written_in_a_rolled_back_savepoint_are_not_answered_from_memory(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet()
    await ledger.grant(wallet_id, 10)

    async with ledger.db.transaction() as session:
        savepoint = await session.begin_nested()
        movement = await service.spend(session, wallet_id=wallet_id, amount=2, idempotency_key=new_key())
        await savepoint.rollback()
        found = await service.postings_by_transaction(session, transaction_ids=[movement.transaction.id])

    assert found == {movement.transaction.id: []}
    assert (await ledger.balance(wallet_id)).available == 10


async def test_a_capture_finds_the_wallet_of_a_hold_the_session_holds_expired_and_reloads_what_is_expired(
    ledger: Ledger,
) -> None:
    wallet_id = await ledger.wallet()
    await ledger.grant(wallet_id, 10)
    hold_id = (await ledger.hold(wallet_id, 4)).hold.id  # type: ignore[union-attr]

    async with ledger.db.transaction() as session:
        hold = await service.get_hold(session, hold_id)
        wallet = await service.get_wallet(session, wallet_id)
        lot = (await session.scalars(select(Lot).where(Lot.wallet_id == wallet_id))).one()
        for instance in (hold, wallet, lot):
            session.expire(instance)
        captured = await service.capture(session, hold_id=hold_id, amount=3, idempotency_key=new_key())
        # Expired objects are reloaded, not left half-known: every attribute reads without a query.
        assert captured.hold is hold and (hold.status, hold.captured, hold.amount) == ("captured", 3, 4)
        assert (wallet.balance, wallet.held, wallet.is_default) == (7, 0, True)
        assert (lot.remaining, lot.amount) == (7, 10)

    assert await ledger.balance(wallet_id) == service.WalletBalance(wallet_id, "credit", 7, 0, 0)
