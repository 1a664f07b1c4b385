"""catalog: coupons, their assignments to users, redemptions (reservations)

Revision ID: 0004_coupons
Revises: 0003_catalog
Create Date: 2026-11-26 10:15:16.769235
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0004_coupons"
down_revision: str | None = "0003_catalog"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalog_coupon",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("percent_bps", sa.Integer(), nullable=True),
        sa.Column("amount_off", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("bonus_credits", sa.BigInteger(), nullable=True),
        sa.Column("plan_codes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("min_amount", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("max_redemptions", sa.BigInteger(), nullable=True),
        sa.Column("max_per_user", sa.BigInteger(), nullable=True),
        sa.Column("starts_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("ends_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("visibility", sa.String(length=16), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("archived_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "(kind = 'percent_off' AND percent_bps IS NOT NULL AND percent_bps >= 1 AND percent_bps <= 10000 AND bonus_credits IS NULL) OR (kind = 'amount_off' AND percent_bps IS NULL AND bonus_credits IS NULL) OR (kind = 'bonus_credits' AND bonus_credits IS NOT NULL AND bonus_credits > 0 AND percent_bps IS NULL)",
            name=op.f("ck_catalog_coupon_kind_values"),
        ),
        sa.CheckConstraint(
            "kind IN ('percent_off', 'amount_off', 'bonus_credits')", name=op.f("ck_catalog_coupon_kind")
        ),
        sa.CheckConstraint("visibility IN ('public', 'assigned')", name=op.f("ck_catalog_coupon_visibility")),
        sa.CheckConstraint(
            "max_per_user IS NULL OR max_per_user >= 1", name=op.f("ck_catalog_coupon_max_per_user_positive")
        ),
        sa.CheckConstraint(
            "max_redemptions IS NULL OR max_redemptions >= 1",
            name=op.f("ck_catalog_coupon_max_redemptions_positive"),
        ),
        sa.CheckConstraint(
            "starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at",
            name=op.f("ck_catalog_coupon_window_ordered"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_coupon")),
        sa.UniqueConstraint("code", name=op.f("uq_catalog_coupon_code")),
    )
    op.create_table(
        "catalog_coupon_assignment",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("coupon_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["coupon_id"],
            ["catalog_coupon.id"],
            name=op.f("fk_catalog_coupon_assignment_coupon_id_catalog_coupon"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_catalog_coupon_assignment_user_id_auth_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_coupon_assignment")),
        sa.UniqueConstraint(
            "coupon_id", "user_id", name=op.f("uq_catalog_coupon_assignment_coupon_id_user_id")
        ),
    )
    with op.batch_alter_table("catalog_coupon_assignment", schema=None) as batch_op:
        batch_op.create_index("ix_catalog_coupon_assignment_user_id", ["user_id"], unique=False)

    op.create_table(
        "catalog_coupon_redemption",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("coupon_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("redeemed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("released_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('reserved', 'redeemed', 'released')", name=op.f("ck_catalog_coupon_redemption_status")
        ),
        sa.ForeignKeyConstraint(
            ["coupon_id"],
            ["catalog_coupon.id"],
            name=op.f("fk_catalog_coupon_redemption_coupon_id_catalog_coupon"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_catalog_coupon_redemption_user_id_auth_user")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_coupon_redemption")),
        sa.UniqueConstraint("order_id", name=op.f("uq_catalog_coupon_redemption_order_id")),
    )
    with op.batch_alter_table("catalog_coupon_redemption", schema=None) as batch_op:
        batch_op.create_index(
            "ix_catalog_coupon_redemption_coupon_id_status", ["coupon_id", "status"], unique=False
        )
        batch_op.create_index(
            "ix_catalog_coupon_redemption_coupon_id_user_id", ["coupon_id", "user_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("catalog_coupon_redemption", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_coupon_redemption_coupon_id_user_id")
        batch_op.drop_index("ix_catalog_coupon_redemption_coupon_id_status")

    op.drop_table("catalog_coupon_redemption")
    with op.batch_alter_table("catalog_coupon_assignment", schema=None) as batch_op:
        batch_op.drop_index("ix_catalog_coupon_assignment_user_id")

    op.drop_table("catalog_coupon_assignment")
    op.drop_table("catalog_coupon")
