"""Random sequences of movements against a plain in-memory model of the ledger (hypothesis stateful testing).

The model is a few dictionaries and the rules of DESIGN section 3 written out longhand: lots spent in order
(priority, then soonest expiry with never-expiring lots last, then oldest), debt repaid first (clawback debt
first), overdraft down to ``-overdraft_limit``, holds that take credits out of their lots and give them back,
expired lots swept by the job (with a fake ``now``) or by the next movement on the wallet (for lots whose
``expires_at`` was moved into the past with SQL). After every step each wallet's available, held, debt and
clawback debt, every lot's remaining, every hold's status and the system accounts agree with the model, and
``check_invariants`` is empty.

Every example runs on a database of its own (a copy of the migrated SQLite template, or the PostgreSQL test
database emptied) in an event loop of its own: hypothesis drives the steps synchronously.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, update

from prepaid.db import Database, open_database, utcnow
from prepaid.ledger import service
from prepaid.ledger.errors import HoldNotPending, InsufficientCredits
from prepaid.ledger.models import Account, Hold, Lot, Posting
from tests.ledger.conftest import Ledger, _empty_postgres, seed_system_accounts

T = TypeVar("T")

# Lots "expired" with SQL get this expiry: in the past for the clock of every movement.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
SOURCES = ("promotional", "paid", "refund", "adjustment")


# ---------------------------------------------------------------- the model


@dataclass
class MLot:
    id: str
    wallet: str
    source: str
    priority: int
    expires_at: datetime | None
    remaining: int

    def key(self) -> tuple[Any, ...]:
        never = self.expires_at is None
        return (self.priority, never, self.expires_at or LONG_AGO, self.id)


@dataclass
class MWallet:
    id: str
    overdraft_limit: int
    available: int = 0
    held: int = 0
    debt: int = 0
    clawback_debt: int = 0


@dataclass
class MHold:
    id: str
    wallet: str
    amount: int
    expires_at: datetime
    allocations: list[tuple[str | None, int]]
    status: str = "pending"
    captured: int = 0


@dataclass
class NewLot:
    """A lot the model expects a movement to open; its id is learnt from the database."""

    wallet: str
    source: str
    priority: int
    expires_at: datetime | None
    amount: int

    def key(self) -> tuple[Any, ...]:
        return (self.wallet, self.source, self.priority, self.expires_at or LONG_AGO, self.amount)


@dataclass
class Model:
    wallets: dict[str, MWallet] = field(default_factory=dict)
    lots: dict[str, MLot] = field(default_factory=dict)
    holds: dict[str, MHold] = field(default_factory=dict)
    system: dict[str, int] = field(default_factory=dict)  # system account id -> sum of its postings

    def copy(self) -> Model:
        return Model(
            {k: MWallet(**vars(v)) for k, v in self.wallets.items()},
            {k: MLot(**vars(v)) for k, v in self.lots.items()},
            {k: MHold(**{**vars(v), "allocations": list(v.allocations)}) for k, v in self.holds.items()},
            dict(self.system),
        )

    def post(self, account: str, amount: int) -> None:
        self.system[account] = self.system.get(account, 0) + amount

    def live_lots(self, wallet: str) -> list[MLot]:
        return sorted(
            (lot for lot in self.lots.values() if lot.wallet == wallet and lot.remaining), key=MLot.key
        )

    def sweep(self, wallet: str, now: datetime) -> int:
        swept = 0
        for lot in self.live_lots(wallet):
            if lot.expires_at is not None and lot.expires_at <= now:
                self.wallets[wallet].available -= lot.remaining
                self.post("sys_expired", lot.remaining)
                lot.remaining = 0
                swept += 1
        return swept

    def take(self, wallet: str, amount: int) -> tuple[list[tuple[MLot, int]], int]:
        taken = []
        for lot in self.live_lots(wallet):
            if amount == 0:
                break
            part = min(lot.remaining, amount)
            lot.remaining -= part
            amount -= part
            taken.append((lot, part))
        return taken, amount

    def repay(self, wallet: MWallet, amount: int) -> int:
        repaid = min(amount, wallet.debt)
        wallet.debt -= repaid
        wallet.clawback_debt -= min(repaid, wallet.clawback_debt)
        return repaid

    def cancel_overdraft(self, wallet: MWallet, amount: int, new_lots: list[NewLot]) -> None:
        cancelled = min(amount, wallet.debt)
        wallet.debt -= cancelled
        wallet.clawback_debt = min(wallet.clawback_debt, wallet.debt)
        if amount > cancelled:
            new_lots.append(
                NewLot(wallet.id, "refund", service.DEFAULT_PRIORITY["refund"], None, amount - cancelled)
            )

    def resolve(self, hold: MHold, capture: int, status: str, new_lots: list[NewLot]) -> None:
        wallet = self.wallets[hold.wallet]
        left, overdraft_back = capture, 0
        for lot_id, amount in hold.allocations:
            charged = min(amount, left)
            left -= charged
            back = amount - charged
            if back and lot_id is None:
                overdraft_back += back
            elif back:
                self.lots[lot_id].remaining += back  # type: ignore[index]
        self.cancel_overdraft(wallet, overdraft_back, new_lots)
        wallet.held -= hold.amount
        wallet.available += hold.amount - capture
        self.post("sys_usage", capture)
        hold.status, hold.captured = status, capture


# ---------------------------------------------------------------- the machine


class LedgerMachine(RuleBasedStateMachine):
    """Configured by the test (``open_db``) before hypothesis runs it."""

    open_db: Callable[[], Awaitable[Database]]

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.db = self.run(self.open_db())
        self.ledger = Ledger(self.db)
        self.model = Model()
        self.clock = utcnow()  # the fake "now" the jobs are given; only moves forward

    def run(self, coroutine: Awaitable[T]) -> T:
        return self.runner.run(coroutine)  # type: ignore[arg-type]

    def teardown(self) -> None:
        try:
            self.run(self.db.dispose())
        finally:
            self.runner.close()

    # ------------------------------------------------------------ helpers

    def wallet_id(self, index: int) -> str:
        ids = sorted(self.model.wallets)
        return ids[index % len(ids)]

    def hold_id(self, index: int, resolved: bool) -> str:
        """A pending hold, or (``resolved``, or when none is pending) any hold."""
        pending = sorted(h.id for h in self.model.holds.values() if h.status == "pending")
        choices = sorted(self.model.holds) if resolved or not pending else pending
        return choices[index % len(choices)]

    def attempt(self, call: Awaitable[service.Movement], trial: Model, error: type[Exception] | None) -> Any:
        """Runs the movement; the model's prediction (``error`` or success) must come true. On success the
        trial model becomes the model."""
        if error is not None:
            with pytest.raises(error):
                self.run(call)
            return None
        movement = self.run(call)
        self.model = trial
        return movement

    def adopt(self, expected: list[NewLot]) -> None:
        """The lots the last step opened must be exactly the ones the model expected; learn their ids."""
        known = set(self.model.lots)
        found = [lot for lot in self.run(self.all_lots()) if lot.id not in known]
        opened = [
            NewLot(lot.wallet_id, lot.source, lot.priority, lot.expires_at, lot.amount) for lot in found
        ]
        assert sorted(map(NewLot.key, expected)) == sorted(map(NewLot.key, opened))
        for lot in found:
            assert lot.remaining == lot.amount
            self.model.lots[lot.id] = MLot(
                lot.id, lot.wallet_id, lot.source, lot.priority, lot.expires_at, lot.amount
            )

    async def all_lots(self) -> list[Lot]:
        async with self.db.transaction(write=False) as session:
            return list(await session.scalars(select(Lot).where(Lot.wallet_id.in_(list(self.model.wallets)))))

    def check_answer(self, movement: service.Movement) -> None:
        for wallet_id, answered in movement.balances.items():
            wallet = self.model.wallets[wallet_id]
            assert (answered.available, answered.held, answered.debt) == (
                wallet.available,
                wallet.held,
                wallet.debt,
            )

    # ------------------------------------------------------------ rules

    @initialize(
        wallets=st.lists(
            st.tuples(st.sampled_from([0, 10, 20]), st.sampled_from([0, 5, 30])), min_size=2, max_size=3
        )
    )
    def open_wallets(self, wallets: list[tuple[int, int]]) -> None:
        for limit, credits in wallets:
            wallet_id = self.run(self.ledger.wallet(overdraft_limit=limit))
            self.model.wallets[wallet_id] = MWallet(wallet_id, limit)
            if credits:
                self.grant_to(wallet_id, credits, "paid", None, None)

    @rule(
        index=st.integers(0, 2),
        amount=st.integers(1, 30),
        source=st.sampled_from(SOURCES),
        priority=st.none() | st.integers(0, 50),
        expires_in=st.none() | st.integers(1, 72),
    )
    def grant(
        self, index: int, amount: int, source: str, priority: int | None, expires_in: int | None
    ) -> None:
        self.grant_to(self.wallet_id(index), amount, source, priority, expires_in)

    def grant_to(
        self, wallet_id: str, amount: int, source: str, priority: int | None, expires_in: int | None
    ) -> None:
        expires_at = self.clock + timedelta(hours=expires_in) if expires_in else None
        trial = self.model.copy()
        wallet = trial.wallets[wallet_id]
        repaid = trial.repay(wallet, amount)
        wallet.available += amount
        trial.post("sys_promotions", -amount)
        new = [
            NewLot(
                wallet_id,
                source,
                service.DEFAULT_PRIORITY[source] if priority is None else priority,
                expires_at,
                amount - repaid,
            )
        ]
        movement = self.attempt(
            self.ledger.grant(wallet_id, amount, source=source, priority=priority, expires_at=expires_at),
            trial,
            None,
        )
        self.adopt(new if amount > repaid else [])
        self.check_answer(movement)

    @rule(index=st.integers(0, 2), amount=st.integers(1, 15))
    def spend(self, index: int, amount: int) -> None:
        wallet_id = self.wallet_id(index)
        trial = self.model.copy()
        wallet = trial.wallets[wallet_id]
        trial.sweep(wallet_id, utcnow())
        error = InsufficientCredits if wallet.available - amount < -wallet.overdraft_limit else None
        if error is None:
            _taken, shortfall = trial.take(wallet_id, amount)
            wallet.debt += shortfall
            wallet.available -= amount
            trial.post("sys_usage", amount)
        movement = self.attempt(self.ledger.spend(wallet_id, amount), trial, error)
        if movement:
            self.check_answer(movement)

    @rule(index=st.integers(0, 2), amount=st.integers(1, 15), expires_in=st.integers(1, 48))
    def hold(self, index: int, amount: int, expires_in: int) -> None:
        wallet_id = self.wallet_id(index)
        expires_at = self.clock + timedelta(hours=expires_in)
        trial = self.model.copy()
        wallet = trial.wallets[wallet_id]
        trial.sweep(wallet_id, utcnow())
        error = InsufficientCredits if wallet.available - amount < -wallet.overdraft_limit else None
        allocations: list[tuple[str | None, int]] = []
        if error is None:
            taken, shortfall = trial.take(wallet_id, amount)
            allocations = [(lot.id, part) for lot, part in taken] + ([(None, shortfall)] if shortfall else [])
            wallet.debt += shortfall
            wallet.available -= amount
            wallet.held += amount
        movement = self.attempt(self.ledger.hold(wallet_id, amount, expires_at=expires_at), trial, error)
        if movement:
            assert movement.hold is not None
            self.model.holds[movement.hold.id] = MHold(
                movement.hold.id, wallet_id, amount, expires_at, allocations
            )
            self.check_answer(movement)

    @precondition(lambda self: self.model.holds)
    @rule(
        index=st.integers(0, 100),
        resolved=st.sampled_from([False, False, False, True]),
        percent=st.integers(0, 100),
    )
    def capture(self, index: int, resolved: bool, percent: int) -> None:
        hold_id = self.hold_id(index, resolved)
        hold = self.model.holds[hold_id]
        amount = hold.amount * percent // 100
        trial = self.model.copy()
        new: list[NewLot] = []
        error = HoldNotPending if hold.status != "pending" else None
        if error is None:
            trial.resolve(trial.holds[hold_id], amount, "captured", new)
        movement = self.attempt(self.ledger.capture(hold_id, amount), trial, error)
        if movement:
            self.adopt(new)
            self.check_answer(movement)

    @precondition(lambda self: self.model.holds)
    @rule(index=st.integers(0, 100), resolved=st.sampled_from([False, False, False, True]))
    def release(self, index: int, resolved: bool) -> None:
        hold_id = self.hold_id(index, resolved)
        trial = self.model.copy()
        new: list[NewLot] = []
        error = HoldNotPending if self.model.holds[hold_id].status != "pending" else None
        if error is None:
            trial.resolve(trial.holds[hold_id], 0, "released", new)
        movement = self.attempt(self.ledger.release(hold_id), trial, error)
        if movement:
            self.adopt(new)
            self.check_answer(movement)

    @rule(source=st.integers(0, 2), step=st.integers(1, 2), amount=st.integers(1, 12))
    def transfer(self, source: int, step: int, amount: int) -> None:
        ids = sorted(self.model.wallets)
        from_id, to_id = ids[source % len(ids)], ids[(source + step) % len(ids)]
        if from_id == to_id:
            return
        trial = self.model.copy()
        sender, receiver = trial.wallets[from_id], trial.wallets[to_id]
        trial.sweep(from_id, utcnow())
        error = InsufficientCredits if sender.available < amount else None
        new: list[NewLot] = []
        if error is None:
            taken, shortfall = trial.take(from_id, amount)
            assert shortfall == 0
            to_place = amount - trial.repay(receiver, amount)
            for lot, part in taken:
                placed = min(part, to_place)
                if placed:
                    new.append(NewLot(to_id, lot.source, lot.priority, lot.expires_at, placed))
                to_place -= placed
            sender.available -= amount
            receiver.available += amount
        movement = self.attempt(self.ledger.transfer(from_id, to_id, amount), trial, error)
        if movement:
            self.adopt(new)
            self.check_answer(movement)

    @rule(index=st.integers(0, 2), amount=st.integers(1, 10), allow_debt=st.sampled_from([True, True, False]))
    def clawback(self, index: int, amount: int, allow_debt: bool) -> None:
        wallet_id = self.wallet_id(index)
        trial = self.model.copy()
        wallet = trial.wallets[wallet_id]
        trial.sweep(wallet_id, utcnow())
        take = amount if allow_debt else max(0, min(amount, wallet.available))
        _taken, shortfall = trial.take(wallet_id, take)
        wallet.debt += shortfall
        wallet.clawback_debt += shortfall
        wallet.available -= take
        trial.post("sys_refunds", take)
        movement = self.attempt(self.ledger.clawback(wallet_id, amount, allow_debt=allow_debt), trial, None)
        assert movement.transaction.metadata_["taken"] == take
        self.check_answer(movement)

    @precondition(lambda self: any(lot.expires_at is not None for lot in self.model.lots.values()))
    @rule(index=st.integers(0, 100))
    def lot_expires_unswept(self, index: int) -> None:
        """Time passes for one lot (its expiry moves into the past with SQL); nothing sweeps it yet."""
        expiring = sorted(lot_id for lot_id, lot in self.model.lots.items() if lot.expires_at is not None)
        lot_id = expiring[index % len(expiring)]
        self.run(self.set_expiry(lot_id, LONG_AGO))
        self.model.lots[lot_id].expires_at = LONG_AGO

    async def set_expiry(self, lot_id: str, expires_at: datetime) -> None:
        async with self.db.transaction() as session:
            await session.execute(update(Lot).where(Lot.id == lot_id).values(expires_at=expires_at))

    @rule(hours=st.integers(0, 80))
    def sweep_job(self, hours: int) -> None:
        self.clock += timedelta(hours=hours)
        expected = sum(self.model.sweep(wallet_id, self.clock) for wallet_id in sorted(self.model.wallets))
        assert self.run(self.ledger.sweep(now=self.clock)) == expected

    @rule(hours=st.integers(0, 50))
    def hold_expiry_job(self, hours: int) -> None:
        self.clock += timedelta(hours=hours)
        due = sorted(
            (hold.wallet, hold.id)
            for hold in self.model.holds.values()
            if hold.status == "pending" and hold.expires_at <= self.clock
        )
        new: list[NewLot] = []
        for _wallet, hold_id in due:
            self.model.resolve(self.model.holds[hold_id], 0, "expired", new)
        assert self.run(self.ledger.expire_holds(now=self.clock)) == len(due)
        self.adopt(new)

    # ------------------------------------------------------------ after every step

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        state = self.run(self.read_state())
        model = self.model
        assert state["wallets"] == {
            w.id: (w.available, w.held, w.debt, w.clawback_debt) for w in model.wallets.values()
        }
        assert state["lots"] == {lot.id: lot.remaining for lot in model.lots.values()}
        assert state["holds"] == {h.id: (h.status, h.captured) for h in model.holds.values()}
        assert state["system"] == {k: v for k, v in model.system.items() if v}
        assert state["breaches"] == []

    async def read_state(self) -> dict[str, Any]:
        wallet_ids = list(self.model.wallets)
        async with self.db.transaction(write=False) as session:
            wallets = await session.scalars(select(Account).where(Account.id.in_(wallet_ids)))
            lots = await session.execute(select(Lot.id, Lot.remaining).where(Lot.wallet_id.in_(wallet_ids)))
            holds = await session.execute(
                select(Hold.id, Hold.status, Hold.captured).where(Hold.wallet_id.in_(wallet_ids))
            )
            system = await session.execute(
                select(Posting.account_id, Posting.amount).where(Posting.account_id.like("sys_%"))
            )
            sums: dict[str, int] = {}
            for account_id, amount in system:
                sums[account_id] = sums.get(account_id, 0) + amount
            return {
                "wallets": {w.id: (w.balance, w.held, w.debt, w.clawback_debt) for w in wallets},
                "lots": {lot_id: remaining for lot_id, remaining in lots},
                "holds": {hold_id: (status, captured) for hold_id, status, captured in holds},
                "system": {k: v for k, v in sums.items() if v},
                "breaches": await service.check_invariants(session),
            }


# ---------------------------------------------------------------- the test

RUNS = {
    "sqlite": settings(max_examples=30, stateful_step_count=30),
    "postgresql": settings(max_examples=15, stateful_step_count=20),
}


def test_random_movements_always_agree_with_the_model_and_the_books_balance(
    engine_name: str, request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path
) -> None:
    examples = iter(range(1_000_000))
    postgres_url: str = request.getfixturevalue("postgres_url") if engine_name == "postgresql" else ""

    async def open_db() -> Database:
        if engine_name == "sqlite":
            path = tmp_path / f"example-{next(examples)}.db"
            shutil.copy(sqlite_template, path)
            url = f"sqlite+aiosqlite:///{path}"
        else:
            url = postgres_url
            await _empty_postgres(url)
        db = open_database(url)
        await seed_system_accounts(db)
        return db

    machine = type("LedgerMachine", (LedgerMachine,), {"open_db": staticmethod(open_db)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            RUNS[engine_name],
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
