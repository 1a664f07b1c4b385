"""Each movement of ``ledger.service`` on its own: the postings it writes, the lots it moves, the balances it
answers, its idempotency key, its reversal, and its refusals, which leave every ledger row as it was."""

from __future__ import annotations

from datetime import timedelta

import pytest

from prepaid.db import utcnow
from prepaid.errors import IdempotencyError, InvalidRequest, NotFound
from prepaid.ledger import service
from prepaid.ledger.errors import (
    AssetMismatch,
    CaptureExceedsHold,
    HoldNotPending,
    InsufficientCredits,
    WalletFrozen,
)
from tests.ledger.conftest import Ledger, in_hours, new_key

# ---------------------------------------------------------------- credits in and out


async def test_grant_posts_from_promotions_and_opens_a_lot_with_its_source_priority_and_expiry(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    expires = in_hours(48)

    movement = await ledger.grant(wallet, 25, source="promotional", priority=5, expires_at=expires)

    assert movement.transaction.kind == "grant"
    assert sorted(await ledger.postings(movement.transaction.id)) == sorted(
        [("sys_promotions", -25), (wallet, 25)]
    )
    assert movement.balances[wallet].available == 25
    (lot,) = await ledger.lots(wallet)
    assert (lot.source, lot.priority, lot.amount, lot.remaining) == ("promotional", 5, 25, 25)
    assert lot.expires_at == expires
    assert lot.transaction_id == movement.transaction.id


async def test_purchase_comes_from_sales_as_a_paid_lot_with_the_default_paid_priority(ledger: Ledger) -> None:
    wallet = await ledger.wallet()

    movement = await ledger.grant(wallet, 100, source="paid", kind="purchase", counterparty="@sales")

    assert movement.transaction.kind == "purchase"
    assert await ledger.account_sum("sys_sales") == -100
    (lot,) = await ledger.lots(wallet)
    assert (lot.source, lot.priority, lot.expires_at) == ("paid", service.DEFAULT_PRIORITY["paid"], None)


async def test_spend_posts_to_usage_takes_from_lots_and_answers_the_balance_after(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)

    movement = await ledger.spend(wallet, 4, reference=("usage", "evt_1"))

    assert movement.transaction.kind == "spend"
    assert (movement.transaction.reference_type, movement.transaction.reference_id) == ("usage", "evt_1")
    assert sorted(await ledger.postings(movement.transaction.id)) == sorted([(wallet, -4), ("sys_usage", 4)])
    assert movement.balances[wallet] == service.WalletBalance(wallet, "credit", 6, 0, 0)
    (lot,) = await ledger.lots(wallet)
    assert lot.remaining == 6
    assert movement.transaction.lot_moves == [[lot.id, -4]]
    assert await ledger.balance(wallet) == movement.balances[wallet]


async def test_spend_of_exactly_the_balance_is_allowed_and_one_more_is_refused(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 3)

    await ledger.spend(wallet, 3)

    with pytest.raises(InsufficientCredits) as refused:
        await ledger.spend(wallet, 1)
    assert refused.value.code == "insufficient_credits"
    assert refused.value.extra == {"available": 0, "asset": "credit", "wallet_id": wallet}


@pytest.mark.parametrize("amount", [0, -5])
async def test_movements_refuse_amounts_that_are_not_positive(ledger: Ledger, amount: int) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    before = await ledger.snapshot()

    for call in (ledger.grant(wallet, amount), ledger.spend(wallet, amount), ledger.hold(wallet, amount)):
        with pytest.raises(InvalidRequest) as refused:
            await call
        assert refused.value.code == "invalid_amount"

    assert await ledger.snapshot() == before


async def test_adjustments_add_an_adjustment_lot_or_take_credits_back_even_into_debt(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    added = await ledger.run(service.adjust, wallet_id=wallet, amount=5, memo="goodwill", actor_user_id=None)
    assert added.transaction.kind == "adjustment"
    (lot,) = await ledger.lots(wallet)
    assert (lot.source, lot.remaining) == ("adjustment", 5)

    taken = await ledger.run(
        service.adjust, wallet_id=wallet, amount=-8, memo="correction", actor_user_id=None
    )

    assert taken.balances[wallet] == service.WalletBalance(wallet, "credit", -3, 0, 3)
    account = await ledger.account(wallet)
    assert account.clawback_debt == 3
    assert await ledger.account_sum("sys_adjustments") == 3


async def test_clawback_without_debt_takes_only_what_is_available_and_says_how_much(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 4)

    movement = await ledger.clawback(wallet, 10, allow_debt=False)

    assert movement.transaction.metadata_["requested"] == 10
    assert movement.transaction.metadata_["taken"] == 4
    assert movement.balances[wallet] == service.WalletBalance(wallet, "credit", 0, 0, 0)
    assert await ledger.account_sum("sys_refunds") == 4


async def test_clawback_of_an_empty_wallet_records_its_key_and_answers_the_same_when_retried(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    key = new_key()

    first = await ledger.clawback(wallet, 10, allow_debt=False, idempotency_key=key)
    again = await ledger.clawback(wallet, 10, allow_debt=False, idempotency_key=key)

    assert first.transaction.metadata_["taken"] == 0
    assert await ledger.postings(first.transaction.id) == []
    assert again.replayed and again.transaction.id == first.transaction.id


# ---------------------------------------------------------------- holds


async def test_hold_moves_credits_from_available_to_held_out_of_their_lots(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)

    movement = await ledger.hold(wallet, 7)

    assert movement.hold is not None and movement.hold.status == "pending"
    assert movement.balances[wallet] == service.WalletBalance(wallet, "credit", 3, 7, 0)
    assert movement.balances[wallet].balance == 10
    account = await ledger.account(wallet)
    assert sorted(await ledger.postings(movement.transaction.id)) == sorted(
        [(wallet, -7), (account.hold_account_id, 7)]
    )
    (lot,) = await ledger.lots(wallet)
    assert lot.remaining == 3


async def test_partial_capture_charges_the_amount_and_returns_the_rest_to_the_same_lot(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    held = await ledger.hold(wallet, 8)
    assert held.hold is not None

    captured = await ledger.capture(held.hold.id, 5)

    assert captured.transaction.kind == "capture"
    assert captured.hold is not None
    assert (captured.hold.status, captured.hold.captured) == ("captured", 5)
    assert captured.balances[wallet] == service.WalletBalance(wallet, "credit", 5, 0, 0)
    (lot,) = await ledger.lots(wallet)
    assert lot.remaining == 5
    account = await ledger.account(wallet)
    assert sorted(await ledger.postings(captured.transaction.id)) == sorted(
        [(account.hold_account_id, -8), ("sys_usage", 5), (wallet, 3)]
    )
    assert await ledger.account_sum("sys_usage") == 5


async def test_capture_of_the_whole_hold_and_of_nothing_both_resolve_it(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    whole = await ledger.hold(wallet, 4)
    nothing = await ledger.hold(wallet, 3)
    assert whole.hold and nothing.hold

    await ledger.capture(whole.hold.id, 4)
    none_captured = await ledger.capture(nothing.hold.id, 0)

    assert none_captured.hold is not None and none_captured.hold.status == "captured"
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 6, 0, 0)


async def test_release_returns_held_credits_to_the_lots_they_came_from(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    promo = await ledger.grant(wallet, 3, source="promotional")
    paid = await ledger.grant(wallet, 10, source="paid")
    held = await ledger.hold(wallet, 6)
    assert held.hold is not None

    released = await ledger.release(held.hold.id)

    assert released.transaction.kind == "release"
    assert released.hold is not None and released.hold.status == "released"
    remaining = {lot.transaction_id: lot.remaining for lot in await ledger.lots(wallet)}
    assert remaining == {promo.transaction.id: 3, paid.transaction.id: 10}
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 13, 0, 0)


async def test_expired_pending_holds_are_released_by_the_job_as_expired(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    due = await ledger.hold(wallet, 4, expires_at=in_hours(1))
    later = await ledger.hold(wallet, 2, expires_at=in_hours(3))
    assert due.hold and later.hold

    assert await ledger.expire_holds(now=utcnow() + timedelta(hours=2)) == 1
    assert await ledger.expire_holds(now=utcnow() + timedelta(hours=2)) == 0

    assert (await ledger.get_hold(due.hold.id)).status == "expired"
    assert (await ledger.get_hold(later.hold.id)).status == "pending"
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 8, 2, 0)


async def test_a_hold_must_expire_in_the_future(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    before = await ledger.snapshot()

    with pytest.raises(InvalidRequest) as refused:
        await ledger.hold(wallet, 1, expires_at=utcnow() - timedelta(seconds=1))

    assert refused.value.code == "invalid_expiry"
    assert await ledger.snapshot() == before


# ---------------------------------------------------------------- transfers


async def test_transfer_moves_lots_keeping_source_priority_and_expiry(ledger: Ledger) -> None:
    a, b = await ledger.wallet(), await ledger.wallet()
    expires = in_hours(10)
    await ledger.grant(a, 4, source="promotional", expires_at=expires)
    await ledger.grant(a, 10, source="paid")

    movement = await ledger.transfer(a, b, 6)

    assert movement.transaction.kind == "transfer"
    assert sorted(await ledger.postings(movement.transaction.id)) == sorted([(a, -6), (b, 6)])
    assert movement.balances[a].available == 8 and movement.balances[b].available == 6
    copied = sorted((lot.source, lot.priority, lot.expires_at, lot.remaining) for lot in await ledger.lots(b))
    assert copied == sorted(
        [("promotional", 10, expires, 4), ("paid", service.DEFAULT_PRIORITY["paid"], None, 2)]
    )
    assert sorted(lot.remaining for lot in await ledger.lots(a)) == [0, 8]


async def test_transfer_never_uses_the_overdraft_of_the_sending_wallet(ledger: Ledger) -> None:
    a, b = await ledger.wallet(overdraft_limit=100), await ledger.wallet()
    await ledger.grant(a, 5)
    before = await ledger.snapshot()

    with pytest.raises(InsufficientCredits):
        await ledger.transfer(a, b, 6)

    assert await ledger.snapshot() == before


async def test_transfer_to_the_same_wallet_is_refused(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 5)

    with pytest.raises(InvalidRequest) as refused:
        await ledger.transfer(wallet, wallet, 1)

    assert refused.value.code == "same_wallet"


# ---------------------------------------------------------------- idempotency


async def test_a_repeated_key_answers_the_first_transaction_and_moves_nothing_more(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    key = new_key()

    first = await ledger.spend(wallet, 3, idempotency_key=key)
    again = await ledger.spend(wallet, 3, idempotency_key=key)

    assert not first.replayed and again.replayed
    assert again.transaction.id == first.transaction.id
    assert again.balances[wallet].available == 7
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 7, 0, 0)


async def test_a_repeated_hold_key_answers_the_same_hold(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    key = new_key()

    first = await ledger.hold(wallet, 3, idempotency_key=key)
    again = await ledger.hold(wallet, 3, idempotency_key=key)

    assert first.hold and again.hold and again.hold.id == first.hold.id
    assert (await ledger.balance(wallet)).held == 3


@pytest.mark.parametrize(
    "second",
    [
        {"amount": 4},
        {"reference": ("usage", "other")},
        {"counterparty": "@vendor_payouts"},
    ],
    ids=["amount", "reference", "counterparty"],
)
async def test_a_key_reused_with_different_parameters_is_refused_and_changes_nothing(
    ledger: Ledger, second: dict[str, object]
) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    key = new_key()
    await ledger.spend(wallet, 3, idempotency_key=key)
    before = await ledger.snapshot()

    with pytest.raises(IdempotencyError) as refused:
        await ledger.spend(wallet, **{"amount": 3, **second}, idempotency_key=key)  # type: ignore[arg-type]

    assert (refused.value.type, refused.value.code) == ("idempotency_error", "idempotency_key_reused")
    assert await ledger.snapshot() == before


async def test_a_key_used_for_a_spend_cannot_be_reused_for_a_grant(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    key = new_key()
    await ledger.spend(wallet, 3, idempotency_key=key)
    before = await ledger.snapshot()

    with pytest.raises(IdempotencyError):
        await ledger.grant(wallet, 3, idempotency_key=key)

    assert await ledger.snapshot() == before


# ---------------------------------------------------------------- refusals change nothing


async def test_a_frozen_wallet_refuses_spends_holds_and_transfers_and_changes_nothing(ledger: Ledger) -> None:
    wallet, other = await ledger.wallet(), await ledger.wallet()
    await ledger.grant(wallet, 10)
    await ledger.grant(other, 10)
    await ledger.set_wallet(wallet, frozen=True)
    before = await ledger.snapshot()

    for call in (
        ledger.spend(wallet, 1),
        ledger.hold(wallet, 1),
        ledger.transfer(wallet, other, 1),
        ledger.transfer(other, wallet, 1),
    ):
        with pytest.raises(WalletFrozen) as refused:
            await call
        assert refused.value.code == "wallet_frozen"

    assert await ledger.snapshot() == before


async def test_capturing_or_releasing_a_resolved_hold_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    held = await ledger.hold(wallet, 5)
    assert held.hold is not None
    await ledger.release(held.hold.id)
    before = await ledger.snapshot()

    for call in (
        ledger.capture(held.hold.id, 5),
        ledger.release(held.hold.id),
        ledger.capture(held.hold.id, 0),
    ):
        with pytest.raises(HoldNotPending) as refused:
            await call
        assert refused.value.code == "hold_not_pending"

    assert await ledger.snapshot() == before


async def test_capturing_more_than_the_hold_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    held = await ledger.hold(wallet, 5)
    assert held.hold is not None
    before = await ledger.snapshot()

    with pytest.raises(CaptureExceedsHold) as refused:
        await ledger.capture(held.hold.id, 6)

    assert refused.value.code == "capture_exceeds_hold"
    assert await ledger.snapshot() == before
    assert (await ledger.get_hold(held.hold.id)).status == "pending"


async def test_a_transfer_between_wallets_of_different_assets_is_refused_and_changes_nothing(
    ledger: Ledger,
) -> None:
    credits = await ledger.wallet()
    account = await ledger.account(credits)
    assert account.user_id is not None
    dollars = await ledger.wallet(asset="usd", user_id=account.user_id)
    await ledger.grant(credits, 10)
    await ledger.grant(dollars, 10)
    before = await ledger.snapshot()

    for source, target in ((credits, dollars), (dollars, credits)):
        with pytest.raises(AssetMismatch) as refused:
            await ledger.transfer(source, target, 1)
        assert refused.value.code == "asset_mismatch"

    assert await ledger.snapshot() == before


async def test_insufficient_credits_leaves_expired_lots_unswept_and_everything_as_it_was(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    expiring = await ledger.grant(wallet, 5)
    await ledger.grant(wallet, 2, source="paid")
    ((lot_id, _),) = expiring.transaction.lot_moves
    await ledger.expire_lot(lot_id)
    before = await ledger.snapshot()

    with pytest.raises(InsufficientCredits) as refused:
        await ledger.spend(wallet, 3)

    assert refused.value.extra["available"] == 2  # what is spendable, the expired lot left out
    assert await ledger.snapshot() == before


async def test_movements_on_an_unknown_wallet_or_hold_are_not_found(ledger: Ledger) -> None:
    with pytest.raises(NotFound):
        await ledger.spend("wal_nope", 1)
    with pytest.raises(NotFound):
        await ledger.capture("hold_nope", 1)


# ---------------------------------------------------------------- reversals


async def test_reversing_a_spend_puts_the_credits_back_into_the_same_lots(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    promo = await ledger.grant(wallet, 3, source="promotional")
    paid = await ledger.grant(wallet, 10, source="paid")
    spent = await ledger.spend(wallet, 5)
    assert {lot.transaction_id: lot.remaining for lot in await ledger.lots(wallet)} == {
        promo.transaction.id: 0,
        paid.transaction.id: 8,
    }

    reversal = await ledger.reverse(spent.transaction.id)

    assert reversal.transaction.kind == "reversal"
    assert reversal.transaction.reverses_id == spent.transaction.id
    assert sorted(await ledger.postings(reversal.transaction.id)) == sorted([(wallet, 5), ("sys_usage", -5)])
    assert {lot.transaction_id: lot.remaining for lot in await ledger.lots(wallet)} == {
        promo.transaction.id: 3,
        paid.transaction.id: 10,
    }
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 13, 0, 0)


async def test_reversing_an_unspent_grant_takes_its_lot_back_whole(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    granted = await ledger.grant(wallet, 10)

    await ledger.reverse(granted.transaction.id)

    (lot,) = await ledger.lots(wallet)
    assert lot.remaining == 0
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 0, 0, 0)
    assert await ledger.account_sum("sys_promotions") == 0


async def test_reversing_a_partly_spent_grant_makes_the_spent_part_clawback_debt(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    granted = await ledger.grant(wallet, 10)
    await ledger.spend(wallet, 7)

    await ledger.reverse(granted.transaction.id)

    (lot,) = await ledger.lots(wallet)
    assert lot.remaining == 0
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", -7, 0, 7)
    assert (await ledger.account(wallet)).clawback_debt == 7


async def test_reversing_a_partly_spent_grant_takes_the_spent_part_from_other_lots_first(
    ledger: Ledger,
) -> None:
    wallet = await ledger.wallet()
    granted = await ledger.grant(wallet, 10, source="promotional")
    paid = await ledger.grant(wallet, 20, source="paid")
    await ledger.spend(wallet, 7)  # all from the promotional lot

    await ledger.reverse(granted.transaction.id)

    remaining = {lot.transaction_id: lot.remaining for lot in await ledger.lots(wallet)}
    assert remaining == {granted.transaction.id: 0, paid.transaction.id: 13}
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 13, 0, 0)


async def test_a_transaction_is_reversed_at_most_once(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10)
    spent = await ledger.spend(wallet, 4)
    key = new_key()
    first = await ledger.reverse(spent.transaction.id, idempotency_key=key)
    before = await ledger.snapshot()

    again = await ledger.reverse(spent.transaction.id, idempotency_key=key)
    with pytest.raises(InvalidRequest) as refused:
        await ledger.reverse(spent.transaction.id)

    assert again.replayed and again.transaction.id == first.transaction.id
    assert refused.value.code == "already_reversed"
    assert await ledger.snapshot() == before
    assert (await ledger.balance(wallet)).available == 10


async def test_holds_captures_transfers_and_reversals_are_not_reversible(ledger: Ledger) -> None:
    a, b = await ledger.wallet(), await ledger.wallet()
    await ledger.grant(a, 10)
    held = await ledger.hold(a, 2)
    assert held.hold is not None
    captured = await ledger.capture(held.hold.id, 1)
    moved = await ledger.transfer(a, b, 1)
    spent = await ledger.spend(a, 1)
    reversal = await ledger.reverse(spent.transaction.id)
    before = await ledger.snapshot()

    for transaction in (held.transaction, captured.transaction, moved.transaction, reversal.transaction):
        with pytest.raises(InvalidRequest) as refused:
            await ledger.reverse(transaction.id)
        assert refused.value.code == "not_reversible"

    assert await ledger.snapshot() == before
