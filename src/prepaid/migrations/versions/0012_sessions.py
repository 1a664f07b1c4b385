"""metered sessions (metering_session, metering_session_hold) and low-balance alert state (metering_low_balance)

Revision ID: 0012_sessions
Revises: 0011_metering
Create Date: 2026-11-26 11:35:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0012_sessions"
down_revision: str | None = "0011_metering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "metering_session",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("wallet_id", sa.String(length=32), nullable=False),
        sa.Column("meter_code", sa.String(length=64), nullable=False),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("per", sa.BigInteger(), nullable=False),
        sa.Column("unit_seconds", sa.Integer(), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("interval_seconds", sa.Integer(), nullable=False),
        sa.Column("grace_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.Column("held", sa.BigInteger(), nullable=False),
        sa.Column("holds", sa.Integer(), nullable=False),
        sa.Column("charged", sa.BigInteger(), nullable=False),
        sa.Column("released", sa.BigInteger(), nullable=False),
        sa.Column("heartbeats", sa.Integer(), nullable=False),
        sa.Column("metrics", _JSON, nullable=True),
        sa.Column("metadata", _JSON, nullable=False),
        sa.Column("started_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("last_heartbeat_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("covered_until", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("due_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("billed_until", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("ended_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'ended')", name=op.f("ck_metering_session_status")),
        sa.CheckConstraint(
            "end_reason IS NULL OR end_reason IN ('stopped', 'insufficient_credits', 'heartbeat_timeout')",
            name=op.f("ck_metering_session_end_reason"),
        ),
        sa.CheckConstraint(
            "held >= 0 AND charged >= 0 AND charged <= held", name=op.f("ck_metering_session_amounts")
        ),
        sa.CheckConstraint(
            "price >= 0 AND per >= 1 AND unit_seconds >= 1", name=op.f("ck_metering_session_rate")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_metering_session_user_id_auth_user")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["ledger_account.id"], name=op.f("fk_metering_session_wallet_id_ledger_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metering_session")),
    )
    with op.batch_alter_table("metering_session", schema=None) as batch_op:
        batch_op.create_index("ix_metering_session_user_id_id", ["user_id", "id"], unique=False)
        batch_op.create_index("ix_metering_session_status_due_at", ["status", "due_at"], unique=False)

    op.create_table(
        "metering_session_hold",
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hold_id", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["metering_session.id"],
            name=op.f("fk_metering_session_hold_session_id_metering_session"),
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name=op.f("pk_metering_session_hold")),
    )

    op.create_table(
        "metering_low_balance",
        sa.Column("wallet_id", sa.String(length=32), nullable=False),
        sa.Column("below", sa.Boolean(), nullable=False),
        sa.Column("fired_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("rearmed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("fired", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["wallet_id"],
            ["ledger_account.id"],
            name=op.f("fk_metering_low_balance_wallet_id_ledger_account"),
        ),
        sa.PrimaryKeyConstraint("wallet_id", name=op.f("pk_metering_low_balance")),
    )


def downgrade() -> None:
    op.drop_table("metering_low_balance")
    op.drop_table("metering_session_hold")
    with op.batch_alter_table("metering_session", schema=None) as batch_op:
        batch_op.drop_index("ix_metering_session_status_due_at")
        batch_op.drop_index("ix_metering_session_user_id_id")
    op.drop_table("metering_session")
