"""metering: usage events (metering_usage)

Revision ID: 0011_metering
Revises: 0010_guest_checkout
Create Date: 2026-11-26 11:35:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0011_metering"
down_revision: str | None = "0010_guest_checkout"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "metering_usage",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("wallet_id", sa.String(length=32), nullable=False),
        sa.Column("meter_code", sa.String(length=64), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cached_input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("transaction_id", sa.String(length=32), nullable=True),
        sa.Column("batch_id", sa.String(length=32), nullable=True),
        sa.Column("api_key_id", sa.String(length=32), nullable=True),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("occurred_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metering_usage")),
        sa.UniqueConstraint("event_id", name=op.f("uq_metering_usage_event_id")),
    )
    op.create_index("ix_metering_usage_occurred_at", "metering_usage", ["occurred_at"], unique=False)
    op.create_index("ix_metering_usage_user_id_id", "metering_usage", ["user_id", "id"], unique=False)
    op.create_index("ix_metering_usage_wallet_id_id", "metering_usage", ["wallet_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_metering_usage_wallet_id_id", table_name="metering_usage")
    op.drop_index("ix_metering_usage_user_id_id", table_name="metering_usage")
    op.drop_index("ix_metering_usage_occurred_at", table_name="metering_usage")
    op.drop_table("metering_usage")
