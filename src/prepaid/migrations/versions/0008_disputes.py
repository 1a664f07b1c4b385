"""disputes: customer disputes and gateway chargebacks, their message threads

Revision ID: 0008_disputes
Revises: 0007_refunds
Create Date: 2026-11-26 11:12:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import prepaid.db

revision: str = "0008_disputes"
down_revision: str | None = "0007_refunds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_dispute",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("gateway", sa.String(length=32), nullable=True),
        sa.Column("gateway_dispute_id", sa.String(length=255), nullable=True),
        sa.Column("gateway_payment_id", sa.String(length=255), nullable=True),
        sa.Column("gateway_status", sa.String(length=64), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("order_status_before", sa.String(length=24), nullable=True),
        sa.Column("hold_id", sa.String(length=32), nullable=True),
        sa.Column("held_credits", sa.BigInteger(), nullable=False),
        sa.Column("clawback_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("resolution_note", sa.String(length=2000), nullable=True),
        sa.Column("resolved_by", sa.String(length=32), nullable=True),
        sa.Column("granted_credits", sa.BigInteger(), nullable=False),
        sa.Column("grant_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("refund_id", sa.String(length=32), nullable=True),
        sa.Column("override_reason", sa.String(length=500), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("resolved_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "category IN ('not_credited', 'wrong_amount', 'duplicate_charge', 'refund_request', 'other', "
            "'chargeback')",
            name=op.f("ck_payment_dispute_category"),
        ),
        sa.CheckConstraint(
            "granted_credits >= 0 AND held_credits >= 0", name=op.f("ck_payment_dispute_credits_non_negative")
        ),
        sa.CheckConstraint("kind IN ('customer', 'chargeback')", name=op.f("ck_payment_dispute_kind")),
        sa.CheckConstraint(
            "status IN ('open', 'resolved', 'rejected', 'won', 'lost')",
            name=op.f("ck_payment_dispute_status"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["payment_order.id"], name=op.f("fk_payment_dispute_order_id_payment_order")
        ),
        sa.ForeignKeyConstraint(
            ["resolved_by"], ["auth_user.id"], name=op.f("fk_payment_dispute_resolved_by_auth_user")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_payment_dispute_user_id_auth_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_dispute")),
        sa.UniqueConstraint(
            "gateway", "gateway_dispute_id", name=op.f("uq_payment_dispute_gateway_gateway_dispute_id")
        ),
    )
    with op.batch_alter_table("payment_dispute", schema=None) as batch_op:
        batch_op.create_index("ix_payment_dispute_order_id", ["order_id"], unique=False)
        batch_op.create_index("ix_payment_dispute_user_id", ["user_id"], unique=False)

    op.create_table(
        "payment_dispute_message",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("dispute_id", sa.String(length=32), nullable=False),
        sa.Column("author_id", sa.String(length=32), nullable=True),
        sa.Column("author_role", sa.String(length=16), nullable=False),
        sa.Column("body", sa.String(length=5000), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "author_role IN ('customer', 'admin', 'system')",
            name=op.f("ck_payment_dispute_message_author_role"),
        ),
        sa.ForeignKeyConstraint(
            ["author_id"], ["auth_user.id"], name=op.f("fk_payment_dispute_message_author_id_auth_user")
        ),
        sa.ForeignKeyConstraint(
            ["dispute_id"],
            ["payment_dispute.id"],
            name=op.f("fk_payment_dispute_message_dispute_id_payment_dispute"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_dispute_message")),
    )
    with op.batch_alter_table("payment_dispute_message", schema=None) as batch_op:
        batch_op.create_index("ix_payment_dispute_message_dispute_id", ["dispute_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment_dispute_message", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_dispute_message_dispute_id")
    op.drop_table("payment_dispute_message")
    with op.batch_alter_table("payment_dispute", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_dispute_user_id")
        batch_op.drop_index("ix_payment_dispute_order_id")
    op.drop_table("payment_dispute")
