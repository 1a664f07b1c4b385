"""Which lot pays: priority (lower first; promotional before paid by default), then soonest expiry (lots that
never expire last), then oldest. Expired lots are swept into ``@expired`` (exactly their unspent part) by the
job, or by the next movement on the wallet, so expired credits are never spent.

A pending hold survives the expiry of the lots it took from: its credits left those lots when it was made, so
the sweep does not touch them, and they stay reserved and capturable. Released (or left over from a partial
capture) after the expiry, they go back to their expired lot, cannot be spent, and the next sweep takes them.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from prepaid.db import utcnow
from prepaid.errors import InvalidRequest
from prepaid.ledger import service
from prepaid.ledger.errors import InsufficientCredits
from tests.ledger.conftest import Ledger, in_hours


async def spent_lots(ledger: Ledger, wallet: str, amount: int) -> list[tuple[str, int]]:
    """Spends ``amount`` and answers which lots (by the transaction that opened them) paid, in order."""
    movement = await ledger.spend(wallet, amount)
    opened_by = {lot.id: lot.transaction_id for lot in await ledger.lots(wallet)}
    return [(opened_by[lot_id], -moved) for lot_id, moved in movement.transaction.lot_moves]


async def test_promotional_credits_expiring_soonest_are_spent_first_by_default(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    paid = await ledger.grant(wallet, 5, source="paid", kind="purchase", counterparty="@sales")
    promo_late = await ledger.grant(wallet, 5, source="promotional", expires_at=in_hours(24 * 30))
    promo_never = await ledger.grant(wallet, 5, source="promotional")
    promo_soon = await ledger.grant(wallet, 5, source="promotional", expires_at=in_hours(24 * 2))
    refund = await ledger.grant(wallet, 5, source="refund")
    adjustment = await ledger.grant(wallet, 5, source="adjustment")

    order = [lot for lot, _amount in await spent_lots(ledger, wallet, 30)]

    assert order == [
        promo_soon.transaction.id,
        promo_late.transaction.id,
        promo_never.transaction.id,
        adjustment.transaction.id,
        refund.transaction.id,
        paid.transaction.id,
    ]


async def test_a_spend_across_lots_empties_each_before_touching_the_next(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    first = await ledger.grant(wallet, 3, expires_at=in_hours(1))
    second = await ledger.grant(wallet, 4, expires_at=in_hours(2))
    third = await ledger.grant(wallet, 5, expires_at=in_hours(3))

    assert await spent_lots(ledger, wallet, 8) == [
        (first.transaction.id, 3),
        (second.transaction.id, 4),
        (third.transaction.id, 1),
    ]
    assert [lot.remaining for lot in await ledger.lots(wallet)] == [0, 0, 4]


async def test_an_explicit_priority_comes_before_expiry_and_source(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    promo_soon = await ledger.grant(wallet, 2, source="promotional", expires_at=in_hours(1))
    paid_first = await ledger.grant(wallet, 2, source="paid", priority=1)

    order = [lot for lot, _amount in await spent_lots(ledger, wallet, 4)]

    assert order == [paid_first.transaction.id, promo_soon.transaction.id]


async def test_at_equal_priority_and_expiry_the_oldest_lot_is_spent_first(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    expires = in_hours(5)
    lots = [await ledger.grant(wallet, 1, expires_at=expires) for _ in range(4)]
    never = [await ledger.grant(wallet, 1) for _ in range(3)]

    order = [lot for lot, _amount in await spent_lots(ledger, wallet, 7)]

    assert order == [m.transaction.id for m in lots + never]


async def test_holds_take_lots_in_the_same_order_as_spends(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    paid = await ledger.grant(wallet, 5, source="paid")
    promo = await ledger.grant(wallet, 5, source="promotional", expires_at=in_hours(2))

    held = await ledger.hold(wallet, 7)

    opened_by = {lot.id: lot.transaction_id for lot in await ledger.lots(wallet)}
    assert [(opened_by[lot], -moved) for lot, moved in held.transaction.lot_moves] == [
        (promo.transaction.id, 5),
        (paid.transaction.id, 2),
    ]


async def test_a_grant_must_expire_in_the_future(ledger: Ledger) -> None:
    wallet = await ledger.wallet()

    with pytest.raises(InvalidRequest) as refused:
        await ledger.grant(wallet, 5, expires_at=utcnow() - timedelta(minutes=1))

    assert refused.value.code == "invalid_expiry"
    assert await ledger.lots(wallet) == []


# ---------------------------------------------------------------- expiry


async def test_the_sweep_moves_exactly_the_unspent_part_of_expired_lots_into_expired(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    expiring = await ledger.grant(wallet, 10, expires_at=in_hours(1))
    await ledger.grant(wallet, 4, source="paid", expires_at=in_hours(48))
    await ledger.spend(wallet, 3)

    swept = await ledger.sweep(now=utcnow() + timedelta(hours=2))

    assert swept == 1
    assert await ledger.account_sum("sys_expired") == 7
    (expire,) = await ledger.transactions(kind="expire")
    ((lot_id, _),) = expiring.transaction.lot_moves
    assert (expire.reference_type, expire.reference_id) == ("lot", lot_id)
    assert sorted(await ledger.postings(expire.id)) == sorted([(wallet, -7), ("sys_expired", 7)])
    assert (await ledger.lot(lot_id)).remaining == 0
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 4, 0, 0)
    assert await ledger.sweep(now=utcnow() + timedelta(hours=2)) == 0


async def test_the_sweep_leaves_lots_that_have_not_expired_yet(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 10, expires_at=in_hours(3))
    await ledger.grant(wallet, 10)

    assert await ledger.sweep(now=utcnow() + timedelta(hours=2)) == 0

    assert (await ledger.balance(wallet)).available == 20
    assert await ledger.account_sum("sys_expired") == 0


async def test_a_spend_sweeps_expired_lots_first_and_never_spends_them(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    expiring = await ledger.grant(wallet, 10, expires_at=in_hours(1))
    paid = await ledger.grant(wallet, 10, source="paid")
    ((lot_id, _),) = expiring.transaction.lot_moves
    await ledger.expire_lot(lot_id)

    assert await spent_lots(ledger, wallet, 4) == [(paid.transaction.id, 4)]

    assert await ledger.account_sum("sys_expired") == 10
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 6, 0, 0)
    assert await ledger.sweep() == 0


async def test_credits_moved_by_a_transfer_expire_on_their_original_schedule(ledger: Ledger) -> None:
    a, b = await ledger.wallet(), await ledger.wallet()
    await ledger.grant(a, 6, expires_at=in_hours(1))
    await ledger.transfer(a, b, 6)

    assert await ledger.sweep(now=utcnow() + timedelta(hours=2)) == 1

    assert await ledger.balance(b) == service.WalletBalance(b, "credit", 0, 0, 0)
    assert await ledger.account_sum("sys_expired") == 6


async def test_a_pending_hold_keeps_its_credits_reserved_after_their_lot_expires(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    expiring = await ledger.grant(wallet, 10, expires_at=in_hours(1))
    held = await ledger.hold(wallet, 6)
    assert held.hold is not None
    ((lot_id, _),) = expiring.transaction.lot_moves
    await ledger.expire_lot(lot_id)

    assert await ledger.sweep() == 1

    assert await ledger.account_sum("sys_expired") == 4  # only what the hold did not take
    assert (await ledger.get_hold(held.hold.id)).status == "pending"
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 0, 6, 0)
    captured = await ledger.capture(held.hold.id, 6)
    assert captured.balances[wallet] == service.WalletBalance(wallet, "credit", 0, 0, 0)
    assert await ledger.account_sum("sys_usage") == 6
    assert await ledger.account_sum("sys_expired") == 4


async def test_credits_released_after_their_lot_expired_cannot_be_spent_and_are_swept_next(
    ledger: Ledger,
) -> None:
    a, b = await ledger.wallet(), await ledger.wallet()
    expiring = await ledger.grant(a, 10, expires_at=in_hours(1))
    held = await ledger.hold(a, 6)
    assert held.hold is not None
    ((lot_id, _),) = expiring.transaction.lot_moves
    await ledger.expire_lot(lot_id)
    await ledger.sweep()

    await ledger.release(held.hold.id)

    assert (await ledger.lot(lot_id)).remaining == 6  # back in the lot they came from
    before = await ledger.snapshot()
    for call in (ledger.spend(a, 1), ledger.hold(a, 1), ledger.transfer(a, b, 1)):
        with pytest.raises(InsufficientCredits) as refused:
            await call
        assert refused.value.extra["available"] == 0
    assert await ledger.snapshot() == before
    assert await ledger.sweep() == 1
    assert await ledger.account_sum("sys_expired") == 10
    assert await ledger.balance(a) == service.WalletBalance(a, "credit", 0, 0, 0)


async def test_what_a_partial_capture_leaves_of_an_expired_lot_is_swept_not_spent(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    expiring = await ledger.grant(wallet, 8, expires_at=in_hours(1))
    paid = await ledger.grant(wallet, 5, source="paid")
    held = await ledger.hold(wallet, 8)
    assert held.hold is not None
    ((lot_id, _),) = expiring.transaction.lot_moves
    await ledger.expire_lot(lot_id)

    await ledger.capture(held.hold.id, 3)

    assert await spent_lots(ledger, wallet, 5) == [(paid.transaction.id, 5)]
    assert await ledger.account_sum("sys_expired") == 5  # swept by that spend
    assert await ledger.account_sum("sys_usage") == 8
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 0, 0, 0)


async def test_a_hold_expiring_after_its_lot_returns_the_credits_to_be_swept(ledger: Ledger) -> None:
    wallet = await ledger.wallet()
    await ledger.grant(wallet, 5, expires_at=in_hours(1))
    held = await ledger.hold(wallet, 5, expires_at=in_hours(2))
    assert held.hold is not None
    later = utcnow() + timedelta(hours=3)

    assert await ledger.sweep(now=later) == 0  # the hold has everything
    assert await ledger.expire_holds(now=later) == 1
    assert await ledger.sweep(now=later) == 1

    assert (await ledger.get_hold(held.hold.id)).status == "expired"
    assert await ledger.account_sum("sys_expired") == 5
    assert await ledger.balance(wallet) == service.WalletBalance(wallet, "credit", 0, 0, 0)
