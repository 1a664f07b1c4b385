"""payments: orders, payment attempts, the gateway event inbox

Revision ID: 0006_payments
Revises: 0005_sandbox
Create Date: 2026-11-26 10:45:17.836705
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0006_payments"
down_revision: str | None = "0005_sandbox"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_gateway_event",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("gateway", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("raw_type", sa.String(length=128), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("received_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("processed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("process_attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.String(length=1000), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_gateway_event")),
        sa.UniqueConstraint("gateway", "event_id", name=op.f("uq_payment_gateway_event_gateway_event_id")),
    )
    with op.batch_alter_table("payment_gateway_event", schema=None) as batch_op:
        batch_op.create_index("ix_payment_gateway_event_processed_at", ["processed_at"], unique=False)

    op.create_table(
        "payment_order",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("wallet_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("flag_reason", sa.String(length=500), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("asset", sa.String(length=16), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("bonus_credits", sa.BigInteger(), nullable=False),
        sa.Column("plan_code", sa.String(length=64), nullable=True),
        sa.Column("quantity", sa.BigInteger(), nullable=True),
        sa.Column("coupon_code", sa.String(length=64), nullable=True),
        sa.Column("coupon_reservation_id", sa.String(length=32), nullable=True),
        sa.Column("quote", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("quote_expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("gateway", sa.String(length=32), nullable=True),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=255), nullable=True),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("payment_method", sa.String(length=64), nullable=True),
        sa.Column("card_brand", sa.String(length=64), nullable=True),
        sa.Column("card_last4", sa.String(length=4), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=500), nullable=True),
        sa.Column("purchase_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("bonus_transaction_id", sa.String(length=32), nullable=True),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("paid_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("fulfilled_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("failed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("expired_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("cancelled_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("flagged_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('created', 'pending', 'paid', 'fulfilled', 'failed', 'expired', 'cancelled', 'refunded', 'partially_refunded', 'disputed', 'flagged')",
            name=op.f("ck_payment_order_status"),
        ),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_payment_order_amount_non_negative")),
        sa.CheckConstraint("attempt_count >= 0", name=op.f("ck_payment_order_attempt_count_non_negative")),
        sa.CheckConstraint(
            "credits > 0 AND bonus_credits >= 0", name=op.f("ck_payment_order_credits_positive")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_payment_order_user_id_auth_user")
        ),
        sa.ForeignKeyConstraint(
            ["wallet_id"], ["ledger_account.id"], name=op.f("fk_payment_order_wallet_id_ledger_account")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_order")),
    )
    with op.batch_alter_table("payment_order", schema=None) as batch_op:
        batch_op.create_index("ix_payment_order_status_expires_at", ["status", "expires_at"], unique=False)
        batch_op.create_index("ix_payment_order_user_id", ["user_id"], unique=False)

    op.create_table(
        "payment_attempt",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("order_id", sa.String(length=32), nullable=False),
        sa.Column("gateway", sa.String(length=32), nullable=False),
        sa.Column("gateway_order_id", sa.String(length=255), nullable=True),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("retry_of", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("payment_id", sa.String(length=255), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=True),
        sa.Column("checkout", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("redirect_url", sa.String(length=2000), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('created', 'pending', 'paid', 'failed', 'cancelled')",
            name=op.f("ck_payment_attempt_status"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"], ["payment_order.id"], name=op.f("fk_payment_attempt_order_id_payment_order")
        ),
        sa.ForeignKeyConstraint(
            ["retry_of"], ["payment_attempt.id"], name=op.f("fk_payment_attempt_retry_of_payment_attempt")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_attempt")),
        sa.UniqueConstraint(
            "gateway", "gateway_order_id", name=op.f("uq_payment_attempt_gateway_gateway_order_id")
        ),
        sa.UniqueConstraint(
            "order_id", "attempt_number", name=op.f("uq_payment_attempt_order_id_attempt_number")
        ),
    )


def downgrade() -> None:
    op.drop_table("payment_attempt")
    with op.batch_alter_table("payment_order", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_order_user_id")
        batch_op.drop_index("ix_payment_order_status_expires_at")

    op.drop_table("payment_order")
    with op.batch_alter_table("payment_gateway_event", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_gateway_event_processed_at")

    op.drop_table("payment_gateway_event")
