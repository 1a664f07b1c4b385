"""Debt: an overdraft an admin allowed lets spends and holds go down to ``-overdraft_limit`` and no further; a
clawback with ``allow_debt`` may go beyond it and is recorded as clawback debt. Every later credit (grant,
purchase, incoming transfer) repays debt first, clawback debt first, and only the rest opens a lot. Credits
taken on overdraft that come back (a released hold, a reversed spend) cancel the debt they made, or, when a
grant repaid that debt meanwhile, come back as a ``refund`` lot.
"""

from __future__ import annotations

import pytest

from prepaid.ledger import service
from prepaid.ledger.errors import InsufficientCredits
from tests.ledger.conftest import Ledger


async def debts(ledger: Ledger, wallet: str) -> tuple[int, int]:
    account = await ledger.account(wallet)
    return account.debt, account.clawback_debt


async def test_an_overdraft_lets_spends_go_down_to_minus_the_limit_and_no_further(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    await ledger.grant(wallet, 3)

    spent = await ledger.spend(wallet, 13)

    assert spent.balances[wallet] == service.WalletBalance(wallet, "credit", -10, 0, 10)
    assert spent.transaction.debt_change == 10
    before = await ledger.snapshot()
    with pytest.raises(InsufficientCredits) as refused:
        await ledger.spend(wallet, 1)
    assert refused.value.code == "insufficient_credits"
    assert refused.value.extra["available"] == -10
    assert await ledger.snapshot() == before


async def test_a_spend_that_would_pass_the_limit_is_refused_whole(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    await ledger.grant(wallet, 2)
    before = await ledger.snapshot()

    with pytest.raises(InsufficientCredits):
        await ledger.spend(wallet, 8)

    assert await ledger.snapshot() == before


async def test_an_overdraft_lets_holds_go_down_to_minus_the_limit_and_no_further(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    await ledger.grant(wallet, 2)

    held = await ledger.hold(wallet, 7)

    assert held.balances[wallet] == service.WalletBalance(wallet, "credit", -5, 7, 5)
    before = await ledger.snapshot()
    with pytest.raises(InsufficientCredits):
        await ledger.hold(wallet, 1)
    with pytest.raises(InsufficientCredits):
        await ledger.spend(wallet, 1)
    assert await ledger.snapshot() == before


async def test_a_clawback_with_allow_debt_goes_beyond_the_limit_as_clawback_debt(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    await ledger.grant(wallet, 4)
    await ledger.spend(wallet, 9)

    clawed = await ledger.clawback(wallet, 10, allow_debt=True)

    assert clawed.balances[wallet] == service.WalletBalance(wallet, "credit", -15, 0, 15)
    assert await debts(ledger, wallet) == (15, 10)
    with pytest.raises(InsufficientCredits):
        await ledger.spend(wallet, 1)


async def test_a_clawback_without_allow_debt_never_makes_debt(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    await ledger.grant(wallet, 4)

    clawed = await ledger.clawback(wallet, 10, allow_debt=False)

    assert clawed.transaction.metadata_["taken"] == 4
    assert clawed.balances[wallet] == service.WalletBalance(wallet, "credit", 0, 0, 0)


async def test_grants_repay_clawback_debt_first_then_overdraft_debt_then_open_a_lot(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    await ledger.spend(wallet, 5)
    await ledger.clawback(wallet, 10, allow_debt=True)
    assert await debts(ledger, wallet) == (15, 10)

    first = await ledger.grant(wallet, 4)
    assert await debts(ledger, wallet) == (11, 6)
    assert first.transaction.debt_change == -4 and first.transaction.lot_moves == []
    second = await ledger.grant(wallet, 8)
    assert await debts(ledger, wallet) == (3, 0)
    assert await ledger.lots(wallet) == []

    third = await ledger.grant(wallet, 10, source="paid")

    assert await debts(ledger, wallet) == (0, 0)
    assert third.transaction.debt_change == -3
    (lot,) = await ledger.lots(wallet)
    assert (lot.amount, lot.remaining, lot.source) == (7, 7, "paid")
    assert third.balances[wallet] == service.WalletBalance(wallet, "credit", 7, 0, 0)
    assert second.balances[wallet].available == -3


async def test_a_transfer_into_an_indebted_wallet_repays_its_debt_first(ledger: Ledger) -> None:
    sender, debtor = await ledger.wallet(), await ledger.wallet(overdraft_limit=10)
    await ledger.grant(sender, 10)
    await ledger.spend(debtor, 6)

    moved = await ledger.transfer(sender, debtor, 10)

    assert moved.balances[debtor] == service.WalletBalance(debtor, "credit", 4, 0, 0)
    (lot,) = await ledger.lots(debtor)
    assert lot.remaining == 4


async def test_releasing_an_overdraft_hold_cancels_the_debt_it_made(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    await ledger.grant(wallet, 3)
    held = await ledger.hold(wallet, 8)
    assert held.hold is not None

    released = await ledger.release(held.hold.id)

    assert released.balances[wallet] == service.WalletBalance(wallet, "credit", 3, 0, 0)
    assert released.transaction.debt_change == -5
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [3]


async def test_a_partial_capture_of_an_overdraft_hold_charges_lots_before_the_overdraft(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    await ledger.grant(wallet, 3)
    held = await ledger.hold(wallet, 8)
    assert held.hold is not None

    captured = await ledger.capture(held.hold.id, 4)

    assert captured.balances[wallet] == service.WalletBalance(wallet, "credit", -1, 0, 1)
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [0]


async def test_a_hold_released_after_its_overdraft_was_repaid_comes_back_as_a_refund_lot(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    held = await ledger.hold(wallet, 6)
    assert held.hold is not None
    await ledger.grant(wallet, 6)  # repays the hold's overdraft
    assert await debts(ledger, wallet) == (0, 0)

    released = await ledger.release(held.hold.id)

    assert released.balances[wallet] == service.WalletBalance(wallet, "credit", 6, 0, 0)
    (lot,) = await ledger.lots(wallet)
    assert (lot.source, lot.remaining, lot.transaction_id) == ("refund", 6, released.transaction.id)


async def test_a_hold_released_after_part_of_its_overdraft_was_repaid_cancels_the_rest(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    held = await ledger.hold(wallet, 6)
    assert held.hold is not None
    await ledger.grant(wallet, 4)

    released = await ledger.release(held.hold.id)

    assert released.balances[wallet] == service.WalletBalance(wallet, "credit", 4, 0, 0)
    (lot,) = await ledger.lots(wallet)
    assert (lot.source, lot.remaining) == ("refund", 4)


async def test_reversing_an_overdraft_spend_cancels_its_debt(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    await ledger.grant(wallet, 2)
    spent = await ledger.spend(wallet, 7)

    reversed_ = await ledger.reverse(spent.transaction.id)

    assert reversed_.balances[wallet] == service.WalletBalance(wallet, "credit", 2, 0, 0)
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [2]


async def test_reversing_an_overdraft_spend_after_the_debt_was_repaid_gives_a_refund_lot(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    spent = await ledger.spend(wallet, 7)
    await ledger.grant(wallet, 7)

    reversed_ = await ledger.reverse(spent.transaction.id)

    assert reversed_.balances[wallet] == service.WalletBalance(wallet, "credit", 7, 0, 0)
    (lot,) = await ledger.lots(wallet)
    assert (lot.source, lot.remaining) == ("refund", 7)


async def test_reversing_a_grant_that_repaid_debt_owes_that_debt_again(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=5)
    await ledger.spend(wallet, 5)
    granted = await ledger.grant(wallet, 8)
    assert granted.balances[wallet].available == 3

    reversed_ = await ledger.reverse(granted.transaction.id)

    assert reversed_.balances[wallet] == service.WalletBalance(wallet, "credit", -5, 0, 5)
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [0]


async def test_reversing_a_negative_adjustment_cancels_the_clawback_debt_it_made(ledger: Ledger) -> None:
    wallet = await ledger.wallet(overdraft_limit=10)
    await ledger.spend(wallet, 10)
    taken = await ledger.run(
        service.adjust, wallet_id=wallet, amount=-4, memo="correction", actor_user_id=None
    )
    assert await debts(ledger, wallet) == (14, 4)

    await ledger.reverse(taken.transaction.id)

    assert await debts(ledger, wallet) == (10, 0)
    assert (await ledger.balance(wallet)).available == -10
