"""``check_invariants`` and the ``prepaid check`` command: clean books pass (exit 0); rows corrupted on purpose
with raw SQL are each named, by the function and by the real command run as a subprocess (exit 1). And the
database's own guarantees: CHECK constraints on both engines, and on PostgreSQL the deferred zero-sum trigger
and the append-only postings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from prepaid.db import utcnow
from prepaid.ids import new_id
from prepaid.ledger import service
from prepaid.ledger.models import Posting, Transaction
from tests.ledger.conftest import Ledger

OVERDRAFT_CHECK = "ck_ledger_account_balance_within_overdraft"
OVERDRAFT_CHECK_SQL = "kind <> 'wallet' OR balance >= -(overdraft_limit + clawback_debt)"


def prepaid_check(database_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command, in a process of its own, configured only by its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREPAID_")}
    env.update(PREPAID_DATABASE_URL=database_url, COLUMNS="250", NO_COLOR="1", TERM="dumb")
    return subprocess.run(
        [sys.executable, "-m", "prepaid", "check"],
        env=env,
        cwd=cwd,  # no stray .env file
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def busy_books(ledger: Ledger) -> dict[str, str]:
    """A ledger that has seen every kind of movement; answers the ids the corruptions aim at."""
    a, b = await ledger.wallet(overdraft_limit=5), await ledger.wallet()
    await ledger.grant(a, 20, expires_at=utcnow() + timedelta(hours=1))
    paid = await ledger.grant(a, 10, source="paid", kind="purchase", counterparty="@sales")
    spent = await ledger.spend(a, 4)
    await ledger.transfer(a, b, 3)
    held = await ledger.hold(a, 6)
    other = await ledger.hold(a, 2)
    assert held.hold and other.hold
    await ledger.capture(other.hold.id, 1)
    await ledger.reverse(spent.transaction.id)
    await ledger.clawback(b, 1, allow_debt=False)
    debtor = await ledger.wallet(overdraft_limit=5)
    await ledger.spend(debtor, 5)
    ((paid_lot, _),) = paid.transaction.lot_moves
    return {
        "wallet": a,
        "other": b,
        "debtor": debtor,
        "lot": paid_lot,
        "hold": held.hold.id,
        "spend": spent.transaction.id,
    }


@pytest.fixture
async def books(ledger: Ledger) -> AsyncIterator[dict[str, str]]:
    yield await busy_books(ledger)


async def test_clean_books_pass_the_check_and_the_command_exits_zero(
    ledger: Ledger, books: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    assert await ledger.breaches() == []

    result = prepaid_check(database_url, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "every invariant holds" in result.stdout


# ---------------------------------------------------------------- corruptions


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[[Ledger, dict[str, str]], Awaitable[None]]
    breaches: Callable[[dict[str, str]], set[tuple[str, str]]]  # (invariant, subject) that must be named


async def raw(ledger: Ledger, *statements: str, **params: str) -> None:
    """Raw SQL past the ledger's own guards: on PostgreSQL with triggers off for this transaction."""
    async with ledger.db.transaction() as session:
        if ledger.engine == "postgresql":
            await session.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            await session.execute(text(statement), params)


async def balance_off_by_one(ledger: Ledger, ids: dict[str, str]) -> None:
    await raw(ledger, "UPDATE ledger_account SET balance = balance + 1 WHERE id = :id", id=ids["wallet"])


async def lot_remaining_changed(ledger: Ledger, ids: dict[str, str]) -> None:
    await raw(ledger, "UPDATE ledger_lot SET remaining = remaining - 1 WHERE id = :id", id=ids["lot"])


async def posting_amount_changed(ledger: Ledger, ids: dict[str, str]) -> None:
    await raw(
        ledger,
        "UPDATE ledger_posting SET amount = amount + 1 WHERE transaction_id = :txn AND account_id = :id",
        txn=ids["spend"],
        id=ids["wallet"],
    )


async def unbalanced_posting_inserted(ledger: Ledger, ids: dict[str, str]) -> None:
    ids["forged"] = new_id("txn")
    async with ledger.db.transaction() as session:
        if ledger.engine == "postgresql":
            await session.execute(text("SET LOCAL session_replication_role = replica"))
        session.add(
            Transaction(
                id=ids["forged"],
                kind="grant",
                idempotency_key=f"forged-{ids['forged']}",
                request_hash="x",
                memo="",
                metadata_={},
                lot_moves=[],
                debt_change=0,
            )
        )
        await session.flush()
        session.add(Posting(transaction_id=ids["forged"], account_id=ids["other"], asset="credit", amount=5))


async def held_without_pending_hold(ledger: Ledger, ids: dict[str, str]) -> None:
    await raw(
        ledger,
        "UPDATE ledger_hold SET status = 'released', resolve_transaction_id = hold_transaction_id WHERE id = :id",
        id=ids["hold"],
    )


async def hold_allocation_missing(ledger: Ledger, ids: dict[str, str]) -> None:
    await raw(ledger, "DELETE FROM ledger_hold_allocation WHERE hold_id = :id", id=ids["hold"])


async def overdraft_exceeded(ledger: Ledger, ids: dict[str, str]) -> None:
    """The CHECK constraint forbids this state, so it is switched off first (and put back by the fixture)."""
    if ledger.engine == "postgresql":
        await raw(ledger, f"ALTER TABLE ledger_account DROP CONSTRAINT {OVERDRAFT_CHECK}")
        await raw(ledger, "UPDATE ledger_account SET overdraft_limit = 2 WHERE id = :id", id=ids["debtor"])
        return
    async with ledger.db.engine.connect() as connection:
        await connection.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        try:
            await connection.execute(
                text("UPDATE ledger_account SET overdraft_limit = 2 WHERE id = :id"), {"id": ids["debtor"]}
            )
            await connection.commit()
        finally:
            await connection.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")


CORRUPTIONS = [
    Corruption(
        "wallet balance off by one",
        balance_off_by_one,
        lambda ids: {("wallet_balance", ids["wallet"]), ("wallet_lots", ids["wallet"])},
    ),
    Corruption("lot remaining changed", lot_remaining_changed, lambda ids: {("wallet_lots", ids["wallet"])}),
    Corruption(
        "posting amount changed",
        posting_amount_changed,
        lambda ids: {("zero_sum", ids["spend"]), ("wallet_balance", ids["wallet"])},
    ),
    Corruption(
        "unbalanced posting inserted",
        unbalanced_posting_inserted,
        lambda ids: {
            ("zero_sum", ids["forged"]),
            ("two_postings", ids["forged"]),
            ("wallet_balance", ids["other"]),
        },
    ),
    Corruption(
        "held does not match pending holds", held_without_pending_hold, lambda ids: {("holds", ids["wallet"])}
    ),
    Corruption("hold allocation missing", hold_allocation_missing, lambda ids: {("hold_state", ids["hold"])}),
    Corruption("overdraft exceeded", overdraft_exceeded, lambda ids: {("overdraft", ids["debtor"])}),
]


@pytest.fixture
async def restore_overdraft_check(ledger: Ledger) -> AsyncIterator[None]:
    """On PostgreSQL the overdraft test drops a CHECK constraint of the shared test database: put it back."""
    yield
    if ledger.engine != "postgresql":
        return
    async with ledger.db.transaction() as session:
        present = await session.scalar(
            text("SELECT count(*) FROM pg_constraint WHERE conname = :name"), {"name": OVERDRAFT_CHECK}
        )
        if not present:
            await session.execute(
                text("UPDATE ledger_account SET overdraft_limit = debt WHERE kind = 'wallet'")
            )
            await session.execute(
                text(
                    f"ALTER TABLE ledger_account ADD CONSTRAINT {OVERDRAFT_CHECK} CHECK ({OVERDRAFT_CHECK_SQL})"
                )
            )


@pytest.mark.corrupts_ledger
@pytest.mark.usefixtures("restore_overdraft_check")
@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=[c.name.replace(" ", "_") for c in CORRUPTIONS])
async def test_each_corruption_is_named_by_check_invariants_and_nothing_else_is(
    ledger: Ledger, books: dict[str, str], corruption: Corruption
) -> None:
    assert await ledger.breaches() == []

    await corruption.apply(ledger, books)

    found = {(breach.invariant, breach.subject) for breach in await ledger.breaches()}
    assert found == corruption.breaches(books)


@pytest.mark.corrupts_ledger
@pytest.mark.usefixtures("restore_overdraft_check")
async def test_prepaid_check_exits_one_and_names_every_corruption(
    ledger: Ledger, database_url: str, tmp_path: Path
) -> None:
    expected: set[tuple[str, str]] = set()
    for corruption in CORRUPTIONS:
        ids = await busy_books(ledger)  # wallets of its own, so no breach hides another
        await corruption.apply(ledger, ids)
        expected |= corruption.breaches(ids)
    assert {(breach.invariant, breach.subject) for breach in await ledger.breaches()} == expected

    result = prepaid_check(database_url, tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{len(expected)} ledger invariant breach(es)" in result.stdout
    lines = result.stdout.splitlines()
    for invariant, subject in expected:
        assert any(invariant in line and subject in line for line in lines), (
            invariant,
            subject,
            result.stdout,
        )


@pytest.mark.corrupts_ledger
@pytest.mark.parametrize("engine_name", ["sqlite"])  # PRAGMA ignore_check_constraints lets the row in
async def test_a_lot_above_its_amount_is_named(ledger: Ledger, books: dict[str, str]) -> None:
    """The CHECK constraint forbids it; ``check_invariants`` must still see it in a database without one."""
    async with ledger.db.engine.connect() as connection:
        await connection.exec_driver_sql("PRAGMA ignore_check_constraints = ON")
        try:
            await connection.execute(
                text("UPDATE ledger_lot SET remaining = amount + 1 WHERE id = :id"), {"id": books["lot"]}
            )
            await connection.commit()
        finally:
            await connection.exec_driver_sql("PRAGMA ignore_check_constraints = OFF")

    found = {(breach.invariant, breach.subject) for breach in await ledger.breaches()}

    assert ("lot_remaining", books["lot"]) in found


# ---------------------------------------------------------------- the database's own guarantees


@pytest.mark.parametrize(
    ("statement", "target"),
    [
        ("UPDATE ledger_lot SET remaining = -1 WHERE id = :lot", "lot"),
        ("UPDATE ledger_lot SET remaining = amount + 1 WHERE id = :lot", "lot"),
        (
            "UPDATE ledger_account SET balance = -(overdraft_limit + clawback_debt) - 1 WHERE id = :wallet",
            "wallet",
        ),
        ("UPDATE ledger_account SET held = -1 WHERE id = :wallet", "wallet"),
        ("UPDATE ledger_account SET clawback_debt = debt + 1 WHERE id = :wallet", "wallet"),
        ("UPDATE ledger_hold SET captured = amount + 1 WHERE id = :hold", "hold"),
    ],
    ids=[
        "lot_negative",
        "lot_above_amount",
        "below_overdraft",
        "held_negative",
        "clawback_above_debt",
        "capture",
    ],
)
async def test_check_constraints_refuse_impossible_rows(
    ledger: Ledger, books: dict[str, str], statement: str, target: str
) -> None:
    before = await ledger.snapshot()

    with pytest.raises(IntegrityError):
        await ledger.sql(statement, **{target: books[target]})

    assert await ledger.snapshot() == before


@pytest.mark.parametrize("engine_name", ["postgresql"])
async def test_the_zero_sum_trigger_rejects_an_unbalanced_transaction_at_commit(
    ledger: Ledger, books: dict[str, str]
) -> None:
    transaction_id = new_id("txn")
    before = await ledger.snapshot()

    with pytest.raises(IntegrityError, match="does not balance"):
        async with ledger.db.transaction() as session:
            session.add(
                Transaction(
                    id=transaction_id,
                    kind="grant",
                    idempotency_key=f"unbalanced-{transaction_id}",
                    request_hash="x",
                    memo="",
                    metadata_={},
                    lot_moves=[],
                    debt_change=0,
                )
            )
            await session.flush()
            session.add_all(
                [
                    Posting(
                        transaction_id=transaction_id, account_id="sys_promotions", asset="credit", amount=-5
                    ),
                    Posting(
                        transaction_id=transaction_id, account_id=books["other"], asset="credit", amount=4
                    ),
                ]
            )
            await session.flush()  # accepted here: the trigger is deferred to the commit

    assert await ledger.snapshot() == before
    async with ledger.db.transaction(write=False) as session:
        assert await session.scalar(select(func.count()).where(Posting.transaction_id == transaction_id)) == 0
        assert await session.get(Transaction, transaction_id) is None


@pytest.mark.parametrize("engine_name", ["postgresql"])
@pytest.mark.parametrize(
    "statement", ["UPDATE ledger_posting SET amount = amount + 1", "DELETE FROM ledger_posting"]
)
async def test_postings_are_append_only(ledger: Ledger, books: dict[str, str], statement: str) -> None:
    before = await ledger.snapshot()

    with pytest.raises(DBAPIError, match="append-only"):
        await ledger.sql(f"{statement} WHERE transaction_id = :txn", txn=books["spend"])

    assert await ledger.snapshot() == before


async def test_check_invariants_reads_without_writing(ledger: Ledger, books: dict[str, str]) -> None:
    before = await ledger.snapshot()

    async with ledger.db.transaction(write=False) as session:
        assert await service.check_invariants(session) == []
        assert not session.new and not session.dirty

    assert await ledger.snapshot() == before
