"""Ledger tests: every movement goes through ``ledger.service`` in a real database transaction of its own (as a
route, the CLI or a job would run it), on SQLite and on PostgreSQL.

The ``ledger`` fixture makes wallets the way the server does (a user and its default wallet), runs movements
one transaction each, reads balances, lots and holds back, and snapshots every ledger row so a test can show
that a refused movement changed nothing. After every test the books must pass ``check_invariants``, unless
the test is marked ``corrupts_ledger`` because it breaks rows on purpose.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from prepaid.auth import service as auth_service
from prepaid.db import Base, Database, create_engine, utcnow
from prepaid.ledger import service
from prepaid.ledger.models import Account, Hold, HoldAllocation, Lot, Posting, Transaction
from prepaid.models import load_all_models
from prepaid.money import CREDIT
from tests.conftest import _truncate_all


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "corrupts_ledger: breaks ledger rows on purpose; skips the final check"
    )


def new_key(prefix: str = "k") -> str:
    return f"{prefix}-{secrets.token_hex(8)}"


def in_hours(hours: float) -> datetime:
    return utcnow() + timedelta(hours=hours)


LEDGER_TABLES: list[Any] = [Account, Transaction, Posting, Lot, Hold, HoldAllocation]


class Ledger:
    """Movements and reads on one test database, each in its own transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def engine(self) -> str:
        return self.db.engine.dialect.name

    # ------------------------------------------------------------ set-up

    async def wallet(
        self,
        *,
        overdraft_limit: int = 0,
        frozen: bool = False,
        asset: str = CREDIT,
        user_id: str | None = None,
    ) -> str:
        """A new customer's default wallet (or, with ``asset`` or ``user_id``, another wallet of a customer)."""
        async with self.db.transaction() as session:
            if user_id is None:
                user = await auth_service.create_user(
                    session, email=f"ledger-{secrets.token_hex(5)}@example.com", password=None, name="Ledger"
                )
                wallet = await service.default_wallet(session, user_id=user.id)
                if asset != CREDIT:
                    wallet = await service.open_wallet(session, user_id=user.id, name=asset, asset=asset)
            else:
                wallet = await service.open_wallet(session, user_id=user_id, name="extra", asset=asset)
            wallet.overdraft_limit = overdraft_limit
            wallet.frozen = frozen
            return wallet.id

    async def set_wallet(self, wallet_id: str, **values: Any) -> None:
        """An admin's change to a wallet (frozen, overdraft limit), outside any movement."""
        async with self.db.transaction() as session:
            wallet = await service.get_wallet(session, wallet_id)
            for name, value in values.items():
                setattr(wallet, name, value)

    # ------------------------------------------------------------ movements

    async def run(
        self, operation: Callable[..., Awaitable[service.Movement]], **kwargs: Any
    ) -> service.Movement:
        kwargs.setdefault("idempotency_key", new_key(operation.__name__))
        async with self.db.transaction() as session:
            return await operation(session, **kwargs)

    async def grant(self, wallet_id: str, amount: int, **kwargs: Any) -> service.Movement:
        return await self.run(service.grant, wallet_id=wallet_id, amount=amount, **kwargs)

    async def spend(self, wallet_id: str, amount: int, **kwargs: Any) -> service.Movement:
        return await self.run(service.spend, wallet_id=wallet_id, amount=amount, **kwargs)

    async def clawback(
        self, wallet_id: str, amount: int, *, allow_debt: bool, **kwargs: Any
    ) -> service.Movement:
        return await self.run(
            service.clawback, wallet_id=wallet_id, amount=amount, allow_debt=allow_debt, **kwargs
        )

    async def hold(self, wallet_id: str, amount: int, **kwargs: Any) -> service.Movement:
        kwargs.setdefault("expires_at", in_hours(1))
        return await self.run(service.hold, wallet_id=wallet_id, amount=amount, **kwargs)

    async def capture(self, hold_id: str, amount: int, **kwargs: Any) -> service.Movement:
        return await self.run(service.capture, hold_id=hold_id, amount=amount, **kwargs)

    async def release(self, hold_id: str, **kwargs: Any) -> service.Movement:
        return await self.run(service.release, hold_id=hold_id, **kwargs)

    async def transfer(
        self, from_wallet_id: str, to_wallet_id: str, amount: int, **kwargs: Any
    ) -> service.Movement:
        return await self.run(
            service.transfer,
            from_wallet_id=from_wallet_id,
            to_wallet_id=to_wallet_id,
            amount=amount,
            **kwargs,
        )

    async def reverse(self, transaction_id: str, **kwargs: Any) -> service.Movement:
        return await self.run(service.reverse, transaction_id=transaction_id, **kwargs)

    async def sweep(self, now: datetime | None = None) -> int:
        async with self.db.transaction() as session:
            return await service.sweep_expired_lots(session, now=now or utcnow())

    async def expire_holds(self, now: datetime | None = None) -> int:
        async with self.db.transaction() as session:
            return await service.expire_due_holds(session, now=now or utcnow())

    # ------------------------------------------------------------ reads

    async def balance(self, wallet_id: str) -> service.WalletBalance:
        async with self.db.transaction(write=False) as session:
            wallet = await service.get_wallet(session, wallet_id)
            return service.WalletBalance(wallet.id, wallet.asset, wallet.balance, wallet.held, wallet.debt)

    async def account(self, wallet_id: str) -> Account:
        async with self.db.transaction(write=False) as session:
            return await service.get_wallet(session, wallet_id)

    async def lots(self, wallet_id: str) -> list[Lot]:
        async with self.db.transaction(write=False) as session:
            return list(await session.scalars(select(Lot).where(Lot.wallet_id == wallet_id).order_by(Lot.id)))

    async def lot(self, lot_id: str) -> Lot:
        async with self.db.transaction(write=False) as session:
            lot = await session.get(Lot, lot_id)
            assert lot is not None
            return lot

    async def get_hold(self, hold_id: str) -> Hold:
        async with self.db.transaction(write=False) as session:
            return await service.get_hold(session, hold_id)

    async def transactions(self, **where: Any) -> list[Transaction]:
        async with self.db.transaction(write=False) as session:
            stmt = select(Transaction).filter_by(**where).order_by(Transaction.id)
            return list(await session.scalars(stmt))

    async def postings(self, transaction_id: str) -> list[tuple[str, int]]:
        async with self.db.transaction(write=False) as session:
            return [(p.account_id, p.amount) for p in await service.postings_of(session, transaction_id)]

    async def account_sum(self, account_id: str) -> int:
        """What the postings of an account (a system account, say) add up to."""
        async with self.db.transaction(write=False) as session:
            rows = await session.scalars(select(Posting.amount).where(Posting.account_id == account_id))
            return sum(rows)

    async def breaches(self) -> list[service.Breach]:
        async with self.db.transaction(write=False) as session:
            return await service.check_invariants(session)

    async def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every ledger row, so a test can show that a refused movement left the database as it was."""
        tables: dict[str, list[tuple[Any, ...]]] = {}
        async with self.db.transaction(write=False) as session:
            for model in LEDGER_TABLES:
                table = model.__table__
                rows = await session.execute(select(table).order_by(*table.primary_key.columns))
                tables[table.name] = [tuple(row) for row in rows]
        return tables

    async def expire_lot(self, lot_id: str, *, at: datetime | None = None) -> None:
        """Moves a lot's expiry into the past (as time passing would), without sweeping it."""
        async with self.db.transaction() as session:
            await session.execute(
                update(Lot).where(Lot.id == lot_id).values(expires_at=at or utcnow() - timedelta(seconds=1))
            )

    async def sql(self, statement: str, **params: Any) -> None:
        async with self.db.transaction() as session:
            await session.execute(text(statement), params)


async def seed_system_accounts(db: Database) -> None:
    """The migration seeds the system accounts; the shared PostgreSQL database is emptied between tests by
    ``TRUNCATE`` of every table, which takes them too. Put back whichever are missing."""
    async with db.transaction() as session:
        present = set(await session.scalars(select(Account.id).where(Account.kind == "system")))
        for code, account_id in service.SYSTEM_ACCOUNTS.items():
            if account_id not in present:
                session.add(
                    Account(
                        id=account_id,
                        kind="system",
                        code=code,
                        name=code,
                        asset=CREDIT,
                        balance=0,
                        held=0,
                        debt=0,
                        clawback_debt=0,
                        overdraft_limit=0,
                        is_default=False,
                        frozen=False,
                    )
                )


async def _empty_postgres(url: str) -> None:
    """Empties the shared PostgreSQL test database with ``DELETE``, several times faster than the ``TRUNCATE``
    of ``tests/conftest.py`` on tables this small, keeping what the migration wrote (the system accounts and
    the credit scale). Postings are append-only by trigger, so triggers are off for this transaction (it needs
    the superuser the test server runs as; anyone else gets the ``TRUNCATE``)."""
    load_all_models()
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            for table in reversed(Base.metadata.sorted_tables):
                if table.name == "ledger_meta":
                    continue
                where = " WHERE kind <> 'system'" if table.name == "ledger_account" else ""
                await connection.execute(text(f'DELETE FROM "{table.name}"{where}'))  # noqa: S608 (model tables)
    except DBAPIError:
        await _truncate_all(url)
    finally:
        await engine.dispose()


@pytest.fixture
async def database_url(
    engine_name: str, request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[str]:
    """The shared fixture's databases: a copy of the migrated SQLite template, or the session's PostgreSQL
    database emptied (see ``_empty_postgres``)."""
    if engine_name == "sqlite":
        path = tmp_path / "prepaid.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    url: str = request.getfixturevalue("postgres_url")
    await _empty_postgres(url)
    yield url


@pytest.fixture
async def ledger(db: Database, request: pytest.FixtureRequest) -> AsyncIterator[Ledger]:
    await seed_system_accounts(db)
    helper = Ledger(db)
    yield helper
    if request.node.get_closest_marker("corrupts_ledger") is None:
        assert await helper.breaches() == [], "the books do not balance after this test"
