"""outgoing webhooks: endpoints and deliveries

Revision ID: 0013_webhooks_out
Revises: 0012_sessions
Create Date: 2026-11-26 11:35:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import prepaid.db

revision: str = "0013_webhooks_out"
down_revision: str | None = "0012_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "notify_webhook_endpoint",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("event_types", prepaid.db.JSONType, nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("deleted_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_webhook_endpoint")),
    )
    op.create_table(
        "notify_webhook_delivery",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("endpoint_id", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("give_up_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("claimed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("redelivery_of", sa.String(length=32), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["notify_webhook_endpoint.id"],
            name=op.f("fk_notify_webhook_delivery_endpoint_id_notify_webhook_endpoint"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_webhook_delivery")),
    )
    with op.batch_alter_table("notify_webhook_delivery", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_webhook_delivery_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            "ix_notify_webhook_delivery_endpoint_id_id", ["endpoint_id", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("notify_webhook_delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_webhook_delivery_endpoint_id_id")
        batch_op.drop_index("ix_notify_webhook_delivery_status_next_attempt_at")
    op.drop_table("notify_webhook_delivery")
    op.drop_table("notify_webhook_endpoint")
