"""refunds: payment_refund

Revision ID: 0007_refunds
Revises: 0006_payments
Create Date: 2026-11-26 11:12:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import prepaid.db

revision: str = "0007_refunds"
down_revision: str | None = "0006_payments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_refund",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("gateway", sa.String(length=32), nullable=False),
        sa.Column("payment_id", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("clawback", sa.String(length=16), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("credits_held", sa.BigInteger(), nullable=False),
        sa.Column("credits_taken", sa.BigInteger(), nullable=False),
        sa.Column("hold_id", sa.String(length=32), nullable=True),
        sa.Column("gateway_refund_id", sa.String(length=255), nullable=True),
        sa.Column("dedup_key", sa.String(length=300), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("send_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("created_by", sa.String(length=32), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("processed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("failed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('created', 'pending', 'processed', 'failed')", name=op.f("ck_payment_refund_status")
        ),
        sa.CheckConstraint("kind IN ('admin', 'duplicate_payment')", name=op.f("ck_payment_refund_kind")),
        sa.CheckConstraint(
            "clawback IN ('available', 'negative', 'none')", name=op.f("ck_payment_refund_clawback")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_refund_amount_positive")),
        sa.CheckConstraint(
            "credits >= 0 AND credits_held >= 0 AND credits_taken >= 0",
            name=op.f("ck_payment_refund_credits_non_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["payment_order.id"], name=op.f("fk_payment_refund_order_id_payment_order")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_refund")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_payment_refund_dedup_key")),
        sa.UniqueConstraint(
            "gateway", "gateway_refund_id", name=op.f("uq_payment_refund_gateway_gateway_refund_id")
        ),
    )
    with op.batch_alter_table("payment_refund", schema=None) as batch_op:
        batch_op.create_index("ix_payment_refund_order_id", ["order_id"], unique=False)
        batch_op.create_index(
            "ix_payment_refund_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_refund", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_refund_status_next_attempt_at")
        batch_op.drop_index("ix_payment_refund_order_id")

    op.drop_table("payment_refund")
