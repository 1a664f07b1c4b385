"""payments: the sandbox gateway's own tables (orders, payments, refunds, webhook deliveries)

Revision ID: 0005_sandbox
Revises: 0004_coupons
Create Date: 2026-11-26 10:42:02.850614
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import prepaid.db

revision: str = "0005_sandbox"
down_revision: str | None = "0004_coupons"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_sandbox_order",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_paid", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("description", sa.String(length=256), nullable=False),
        sa.Column("customer_email", sa.String(length=320), nullable=True),
        sa.Column("return_url", sa.String(length=2000), nullable=True),
        sa.Column("cancel_url", sa.String(length=2000), nullable=True),
        sa.Column("checkout_secret", sa.String(length=64), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('created', 'attempted', 'paid')", name=op.f("ck_payment_sandbox_order_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_sandbox_order_amount_positive")),
        sa.CheckConstraint(
            "amount_paid >= 0", name=op.f("ck_payment_sandbox_order_amount_paid_non_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_sandbox_order")),
        sa.UniqueConstraint("reference", name=op.f("uq_payment_sandbox_order_reference")),
    )
    op.create_index(
        "ix_payment_sandbox_order_created_at", "payment_sandbox_order", ["created_at"], unique=False
    )

    op.create_table(
        "payment_sandbox_webhook",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=True),
        sa.Column("delivered_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'abandoned')", name=op.f("ck_payment_sandbox_webhook_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_sandbox_webhook")),
    )
    op.create_index(
        "ix_payment_sandbox_webhook_due",
        "payment_sandbox_webhook",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_payment_sandbox_webhook_event_id"), "payment_sandbox_webhook", ["event_id"], unique=False
    )
    op.create_index(
        op.f("ix_payment_sandbox_webhook_order_id"), "payment_sandbox_webhook", ["order_id"], unique=False
    )

    op.create_table(
        "payment_sandbox_payment",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("order_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("card_network", sa.String(length=32), nullable=True),
        sa.Column("card_last4", sa.String(length=4), nullable=True),
        sa.Column("vpa", sa.String(length=255), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_reason", sa.String(length=64), nullable=True),
        sa.Column("error_description", sa.String(length=255), nullable=True),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("captured_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.CheckConstraint("method IN ('card', 'upi')", name=op.f("ck_payment_sandbox_payment_method")),
        sa.CheckConstraint(
            "status IN ('created', 'authorized', 'captured', 'refunded', 'failed')",
            name=op.f("ck_payment_sandbox_payment_status"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_sandbox_payment_amount_positive")),
        sa.CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded <= amount",
            name=op.f("ck_payment_sandbox_payment_refund_within_amount"),
        ),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["payment_sandbox_order.id"],
            name=op.f("fk_payment_sandbox_payment_order_id_payment_sandbox_order"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_sandbox_payment")),
    )
    op.create_index(
        op.f("ix_payment_sandbox_payment_order_id"), "payment_sandbox_payment", ["order_id"], unique=False
    )

    op.create_table(
        "payment_sandbox_refund",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'processed', 'failed')", name=op.f("ck_payment_sandbox_refund_status")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payment_sandbox_refund_amount_positive")),
        sa.ForeignKeyConstraint(
            ["payment_id"],
            ["payment_sandbox_payment.id"],
            name=op.f("fk_payment_sandbox_refund_payment_id_payment_sandbox_payment"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_sandbox_refund")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_payment_sandbox_refund_idempotency_key")),
    )
    op.create_index(
        op.f("ix_payment_sandbox_refund_payment_id"), "payment_sandbox_refund", ["payment_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_payment_sandbox_refund_payment_id"), table_name="payment_sandbox_refund")

    op.drop_table("payment_sandbox_refund")
    op.drop_index(op.f("ix_payment_sandbox_payment_order_id"), table_name="payment_sandbox_payment")

    op.drop_table("payment_sandbox_payment")
    op.drop_index(op.f("ix_payment_sandbox_webhook_order_id"), table_name="payment_sandbox_webhook")
    op.drop_index(op.f("ix_payment_sandbox_webhook_event_id"), table_name="payment_sandbox_webhook")
    op.drop_index("ix_payment_sandbox_webhook_due", table_name="payment_sandbox_webhook")

    op.drop_table("payment_sandbox_webhook")
    op.drop_index("ix_payment_sandbox_order_created_at", table_name="payment_sandbox_order")

    op.drop_table("payment_sandbox_order")
