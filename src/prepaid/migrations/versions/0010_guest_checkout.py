"""guest checkout (payment_guest_order) and reconciliation checks (payment_reconciliation)

Revision ID: 0010_guest_checkout
Revises: 0009_notifications
Create Date: 2026-11-26 11:12:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import prepaid.db

revision: str = "0010_guest_checkout"
down_revision: str | None = "0009_notifications"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_guest_order",
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("new_account", sa.Boolean(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("notified_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"], ["payment_order.id"], name=op.f("fk_payment_guest_order_order_id_payment_order")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_payment_guest_order_user_id_auth_user")
        ),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_payment_guest_order")),
    )
    with op.batch_alter_table("payment_guest_order", schema=None) as batch_op:
        batch_op.create_index("ix_payment_guest_order_user_id", ["user_id"], unique=False)
        batch_op.create_index("ix_payment_guest_order_notified_at", ["notified_at"], unique=False)

    op.create_table(
        "payment_reconciliation",
        sa.Column("attempt_id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("last_checked_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("next_check_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("last_result", sa.String(length=500), nullable=True),
        sa.ForeignKeyConstraint(
            ["attempt_id"],
            ["payment_attempt.id"],
            name=op.f("fk_payment_reconciliation_attempt_id_payment_attempt"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["payment_order.id"], name=op.f("fk_payment_reconciliation_order_id_payment_order")
        ),
        sa.PrimaryKeyConstraint("attempt_id", name=op.f("pk_payment_reconciliation")),
    )
    with op.batch_alter_table("payment_reconciliation", schema=None) as batch_op:
        batch_op.create_index("ix_payment_reconciliation_next_check_at", ["next_check_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment_reconciliation", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_reconciliation_next_check_at")
    op.drop_table("payment_reconciliation")
    with op.batch_alter_table("payment_guest_order", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_guest_order_notified_at")
        batch_op.drop_index("ix_payment_guest_order_user_id")
    op.drop_table("payment_guest_order")
