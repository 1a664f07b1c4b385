"""ledger: on PostgreSQL, a wallet locked and its live lots read in one round trip

``ledger_lock_wallet(wallet_id, owner_id)`` locks the wallet's row (``FOR UPDATE``; with an owner, only that
user's wallet) and then reads the wallet's figures and its live lots in spending order. The read is a second
statement of a volatile function, so it takes a fresh snapshot after the lock was granted and sees every
movement committed before it, exactly as a second statement from the client would (docs/decisions.md,
"Ledger: the wallet and its lots in one round trip").

Revision ID: 0016_ledger_lock_wallet
Revises: 0015_order_time_indexes
Create Date: 2026-11-26 21:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016_ledger_lock_wallet"
down_revision: str | None = "0015_order_time_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOCK_WALLET_FUNCTION = """
CREATE FUNCTION ledger_lock_wallet(p_wallet_id varchar, p_owner_id varchar)
RETURNS TABLE (
    id varchar, asset varchar, balance bigint, held bigint, debt bigint, clawback_debt bigint,
    overdraft_limit bigint, frozen boolean, hold_account_id varchar, user_id varchar,
    lot_id varchar, remaining bigint, expires_at timestamptz
) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM ledger_account AS w
    WHERE w.id = p_wallet_id AND w.kind = 'wallet' AND (p_owner_id IS NULL OR w.user_id = p_owner_id)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT w.id::varchar, w.asset::varchar, w.balance, w.held, w.debt, w.clawback_debt, w.overdraft_limit,
           w.frozen, w.hold_account_id::varchar, w.user_id::varchar, l.id::varchar, l.remaining, l.expires_at
    FROM ledger_account AS w
    LEFT JOIN ledger_lot AS l ON l.wallet_id = w.id AND l.remaining > 0
    WHERE w.id = p_wallet_id
    ORDER BY l.priority, l.expires_at IS NULL, l.expires_at, l.id;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(LOCK_WALLET_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION ledger_lock_wallet(varchar, varchar)")
