"""notifications: in-app notifications, admin alert marks

Revision ID: 0009_notifications
Revises: 0008_disputes
Create Date: 2026-11-26 11:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0009_notifications"
down_revision: str | None = "0008_disputes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notify_notification",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("read_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_user.id"],
            name=op.f("fk_notify_notification_user_id_auth_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_notification")),
        sa.UniqueConstraint("user_id", "dedupe_key", name="uq_notify_notification_user_id_dedupe_key"),
    )
    with op.batch_alter_table("notify_notification", schema=None) as batch_op:
        batch_op.create_index("ix_notify_notification_user_id_id", ["user_id", "id"], unique=False)

    op.create_table(
        "notify_alert_mark",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("fired_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_notify_alert_mark")),
    )
    with op.batch_alter_table("payment_attempt", schema=None) as batch_op:
        batch_op.create_index("ix_payment_attempt_updated_at", ["updated_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("payment_attempt", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_attempt_updated_at")
    op.drop_table("notify_alert_mark")
    with op.batch_alter_table("notify_notification", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_notification_user_id_id")
    op.drop_table("notify_notification")
