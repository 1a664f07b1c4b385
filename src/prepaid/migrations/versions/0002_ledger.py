"""ledger: accounts, transactions and postings, lots, holds; system accounts; the zero-sum trigger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 07:36:45.371894
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_ledger_meta")),
    )
    op.create_table(
        "ledger_transaction",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("reference_type", sa.String(length=32), nullable=True),
        sa.Column("reference_id", sa.String(length=64), nullable=True),
        sa.Column("reverses_id", sa.String(length=32), nullable=True),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("actor_user_id", sa.String(length=32), nullable=True),
        sa.Column("lot_moves", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("debt_change", sa.BigInteger(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('purchase', 'grant', 'spend', 'hold', 'capture', 'release', 'transfer', 'refund', 'clawback', 'expire', 'adjustment', 'reversal')",
            name=op.f("ck_ledger_transaction_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["reverses_id"],
            ["ledger_transaction.id"],
            name=op.f("fk_ledger_transaction_reverses_id_ledger_transaction"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_transaction")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_transaction_idempotency_key")),
    )
    with op.batch_alter_table("ledger_transaction", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_transaction_created_at"), ["created_at"], unique=False)
        batch_op.create_index(
            "ix_ledger_transaction_reference", ["reference_type", "reference_id"], unique=False
        )

    op.create_table(
        "ledger_account",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("hold_account_id", sa.String(length=32), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("debt", sa.BigInteger(), nullable=False),
        sa.Column("clawback_debt", sa.BigInteger(), nullable=False),
        sa.Column("overdraft_limit", sa.BigInteger(), nullable=False),
        sa.Column("low_balance_threshold", sa.BigInteger(), nullable=True),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("frozen", sa.Boolean(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "kind <> 'wallet' OR balance >= -(overdraft_limit + clawback_debt)",
            name=op.f("ck_ledger_account_balance_within_overdraft"),
        ),
        sa.CheckConstraint("kind IN ('wallet', 'hold', 'system')", name=op.f("ck_ledger_account_kind")),
        sa.CheckConstraint(
            "clawback_debt >= 0 AND clawback_debt <= debt",
            name=op.f("ck_ledger_account_clawback_debt_within_debt"),
        ),
        sa.CheckConstraint("debt >= 0", name=op.f("ck_ledger_account_debt_non_negative")),
        sa.CheckConstraint("held >= 0", name=op.f("ck_ledger_account_held_non_negative")),
        sa.CheckConstraint(
            "overdraft_limit >= 0", name=op.f("ck_ledger_account_overdraft_limit_non_negative")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_ledger_account_user_id_auth_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_account")),
        sa.UniqueConstraint("code", name=op.f("uq_ledger_account_code")),
    )
    with op.batch_alter_table("ledger_account", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_account_user_id", ["user_id"], unique=False)

    op.create_table(
        "ledger_hold",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("wallet_id", sa.String(length=32), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hold_transaction_id", sa.String(length=32), nullable=False),
        sa.Column("resolve_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("reference_type", sa.String(length=32), nullable=True),
        sa.Column("reference_id", sa.String(length=64), nullable=True),
        sa.Column("memo", sa.String(length=500), nullable=False),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("resolved_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'captured', 'released', 'expired')", name=op.f("ck_ledger_hold_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_hold_amount_positive")),
        sa.CheckConstraint(
            "captured >= 0 AND captured <= amount", name=op.f("ck_ledger_hold_captured_within_amount")
        ),
        sa.ForeignKeyConstraint(
            ["hold_transaction_id"],
            ["ledger_transaction.id"],
            name=op.f("fk_ledger_hold_hold_transaction_id_ledger_transaction"),
        ),
        sa.ForeignKeyConstraint(
            ["resolve_transaction_id"],
            ["ledger_transaction.id"],
            name=op.f("fk_ledger_hold_resolve_transaction_id_ledger_transaction"),
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["ledger_account.id"], name=op.f("fk_ledger_hold_wallet_id_ledger_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_hold")),
    )
    with op.batch_alter_table("ledger_hold", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_hold_status_expires_at", ["status", "expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_ledger_hold_wallet_id"), ["wallet_id"], unique=False)

    op.create_table(
        "ledger_lot",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("wallet_id", sa.String(length=32), nullable=False),
        sa.Column("transaction_id", sa.String(length=32), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "source IN ('paid', 'promotional', 'refund', 'adjustment')", name=op.f("ck_ledger_lot_source")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_lot_amount_positive")),
        sa.CheckConstraint(
            "remaining >= 0 AND remaining <= amount", name=op.f("ck_ledger_lot_remaining_within_amount")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transaction.id"],
            name=op.f("fk_ledger_lot_transaction_id_ledger_transaction"),
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["ledger_account.id"], name=op.f("fk_ledger_lot_wallet_id_ledger_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_lot")),
    )
    with op.batch_alter_table("ledger_lot", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_lot_expires_at", ["expires_at"], unique=False)
        batch_op.create_index("ix_ledger_lot_wallet_id_remaining", ["wallet_id", "remaining"], unique=False)

    op.create_table(
        "ledger_posting",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("transaction_id", sa.String(length=32), nullable=False),
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint("amount <> 0", name=op.f("ck_ledger_posting_amount_non_zero")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["ledger_account.id"], name=op.f("fk_ledger_posting_account_id_ledger_account")
        ),
        sa.ForeignKeyConstraint(
            ["transaction_id"],
            ["ledger_transaction.id"],
            name=op.f("fk_ledger_posting_transaction_id_ledger_transaction"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_posting")),
    )
    with op.batch_alter_table("ledger_posting", schema=None) as batch_op:
        batch_op.create_index("ix_ledger_posting_account_id_id", ["account_id", "id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_ledger_posting_transaction_id"), ["transaction_id"], unique=False
        )

    op.create_table(
        "ledger_hold_allocation",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("hold_id", sa.String(length=32), nullable=False),
        sa.Column("lot_id", sa.String(length=32), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_hold_allocation_amount_positive")),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["ledger_hold.id"], name=op.f("fk_ledger_hold_allocation_hold_id_ledger_hold")
        ),
        sa.ForeignKeyConstraint(
            ["lot_id"], ["ledger_lot.id"], name=op.f("fk_ledger_hold_allocation_lot_id_ledger_lot")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_hold_allocation")),
    )
    with op.batch_alter_table("ledger_hold_allocation", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ledger_hold_allocation_hold_id"), ["hold_id"], unique=False)

    _seed_system_accounts()
    if op.get_bind().dialect.name == "postgresql":
        op.execute(ZERO_SUM_FUNCTION)
        op.execute(ZERO_SUM_TRIGGER)
        op.execute(APPEND_ONLY_FUNCTION)
        op.execute(APPEND_ONLY_TRIGGER)


SYSTEM_ACCOUNTS = {
    "sys_sales": "@sales",
    "sys_promotions": "@promotions",
    "sys_usage": "@usage",
    "sys_expired": "@expired",
    "sys_refunds": "@refunds",
    "sys_adjustments": "@adjustments",
    "sys_transfers": "@transfers",
    "sys_chargebacks": "@chargebacks",
    "sys_vendor_payouts": "@vendor_payouts",
}

# At commit, every transaction's postings must sum to zero per asset: a deferred constraint trigger re-sums
# the transaction of each inserted posting. Postings are append-only: updates and deletes are refused.
ZERO_SUM_FUNCTION = """
CREATE FUNCTION ledger_check_zero_sum() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE unbalanced record;
BEGIN
    SELECT asset, SUM(amount) AS total INTO unbalanced
    FROM ledger_posting WHERE transaction_id = NEW.transaction_id
    GROUP BY asset HAVING SUM(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: % sums to %',
            NEW.transaction_id, unbalanced.asset, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
"""
ZERO_SUM_TRIGGER = """
CREATE CONSTRAINT TRIGGER ledger_posting_zero_sum
AFTER INSERT ON ledger_posting DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION ledger_check_zero_sum();
"""
APPEND_ONLY_FUNCTION = """
CREATE FUNCTION ledger_posting_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger postings are append-only; correct with a reversing transaction'
        USING ERRCODE = 'check_violation';
END $$;
"""
APPEND_ONLY_TRIGGER = """
CREATE TRIGGER ledger_posting_append_only BEFORE UPDATE OR DELETE ON ledger_posting
FOR EACH ROW EXECUTE FUNCTION ledger_posting_append_only();
"""


def _seed_system_accounts() -> None:
    accounts = sa.table(
        "ledger_account",
        sa.column("id", sa.String),
        sa.column("kind", sa.String),
        sa.column("code", sa.String),
        sa.column("name", sa.String),
        sa.column("asset", sa.String),
        sa.column("balance", sa.BigInteger),
        sa.column("held", sa.BigInteger),
        sa.column("debt", sa.BigInteger),
        sa.column("clawback_debt", sa.BigInteger),
        sa.column("overdraft_limit", sa.BigInteger),
        sa.column("is_default", sa.Boolean),
        sa.column("frozen", sa.Boolean),
        sa.column("created_at", prepaid.db.UTCDateTime()),
        sa.column("updated_at", prepaid.db.UTCDateTime()),
    )
    now = prepaid.db.utcnow()
    op.bulk_insert(
        accounts,
        [
            {
                "id": account_id,
                "kind": "system",
                "code": code,
                "name": code,
                "asset": "credit",
                "balance": 0,
                "held": 0,
                "debt": 0,
                "clawback_debt": 0,
                "overdraft_limit": 0,
                "is_default": False,
                "frozen": False,
                "created_at": now,
                "updated_at": now,
            }
            for account_id, code in SYSTEM_ACCOUNTS.items()
        ],
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ledger_posting_append_only ON ledger_posting")
        op.execute("DROP FUNCTION IF EXISTS ledger_posting_append_only()")
        op.execute("DROP TRIGGER IF EXISTS ledger_posting_zero_sum ON ledger_posting")
        op.execute("DROP FUNCTION IF EXISTS ledger_check_zero_sum()")
    with op.batch_alter_table("ledger_hold_allocation", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_hold_allocation_hold_id"))

    op.drop_table("ledger_hold_allocation")
    with op.batch_alter_table("ledger_posting", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_posting_transaction_id"))
        batch_op.drop_index("ix_ledger_posting_account_id_id")

    op.drop_table("ledger_posting")
    with op.batch_alter_table("ledger_lot", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_lot_wallet_id_remaining")
        batch_op.drop_index("ix_ledger_lot_expires_at")

    op.drop_table("ledger_lot")
    with op.batch_alter_table("ledger_hold", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ledger_hold_wallet_id"))
        batch_op.drop_index("ix_ledger_hold_status_expires_at")

    op.drop_table("ledger_hold")
    with op.batch_alter_table("ledger_account", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_account_user_id")

    op.drop_table("ledger_account")
    with op.batch_alter_table("ledger_transaction", schema=None) as batch_op:
        batch_op.drop_index("ix_ledger_transaction_reference")
        batch_op.drop_index(batch_op.f("ix_ledger_transaction_created_at"))

    op.drop_table("ledger_transaction")
    op.drop_table("ledger_meta")
