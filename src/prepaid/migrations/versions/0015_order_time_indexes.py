"""payments: orders indexed by when they were made and fulfilled (the admin's stats read a period of them)

Revision ID: 0015_order_time_indexes
Revises: 0014_webhook_secrets_sealed
Create Date: 2026-11-26 15:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0015_order_time_indexes"
down_revision: str | None = "0014_webhook_secrets_sealed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_payment_order_created_at", "payment_order", ["created_at"])
    op.create_index("ix_payment_order_fulfilled_at", "payment_order", ["fulfilled_at"])


def downgrade() -> None:
    op.drop_index("ix_payment_order_fulfilled_at", table_name="payment_order")
    op.drop_index("ix_payment_order_created_at", table_name="payment_order")
