"""catalog: plans and prices, unit prices, meters, discount slabs, offers

Revision ID: 0003_catalog
Revises: 0002
Create Date: 2026-11-26 10:13:14.977586
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0003_catalog"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "catalog_discount_slab",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("min_credits", sa.BigInteger(), nullable=False),
        sa.Column("percent_bps", sa.Integer(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint("min_credits > 0", name=op.f("ck_catalog_discount_slab_min_credits_positive")),
        sa.CheckConstraint(
            "percent_bps >= 1 AND percent_bps <= 9999",
            name=op.f("ck_catalog_discount_slab_percent_bps_range"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_discount_slab")),
        sa.UniqueConstraint("min_credits", name=op.f("uq_catalog_discount_slab_min_credits")),
    )
    op.create_table(
        "catalog_meter",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("price", sa.BigInteger(), nullable=True),
        sa.Column("per", sa.BigInteger(), nullable=True),
        sa.Column("input_price", sa.BigInteger(), nullable=True),
        sa.Column("output_price", sa.BigInteger(), nullable=True),
        sa.Column("cached_input_price", sa.BigInteger(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("archived_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "(kind = 'unit' AND price IS NOT NULL AND per IS NOT NULL AND price >= 0 AND per >= 1 AND input_price IS NULL AND output_price IS NULL AND cached_input_price IS NULL) OR (kind = 'model' AND input_price IS NOT NULL AND output_price IS NOT NULL AND cached_input_price IS NOT NULL AND input_price >= 0 AND output_price >= 0 AND cached_input_price >= 0 AND price IS NULL AND per IS NULL)",
            name=op.f("ck_catalog_meter_kind_prices"),
        ),
        sa.CheckConstraint("kind IN ('unit', 'model')", name=op.f("ck_catalog_meter_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_meter")),
        sa.UniqueConstraint("code", name=op.f("uq_catalog_meter_code")),
    )
    op.create_table(
        "catalog_offer",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("percent_bps", sa.Integer(), nullable=True),
        sa.Column("bonus_credits", sa.BigInteger(), nullable=True),
        sa.Column("plan_codes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("starts_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("ends_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("archived_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "(kind = 'percent_off' AND percent_bps IS NOT NULL AND percent_bps >= 1 AND percent_bps <= 9999 AND bonus_credits IS NULL) OR (kind = 'bonus_credits' AND bonus_credits IS NOT NULL AND bonus_credits > 0 AND percent_bps IS NULL)",
            name=op.f("ck_catalog_offer_kind_values"),
        ),
        sa.CheckConstraint("kind IN ('percent_off', 'bonus_credits')", name=op.f("ck_catalog_offer_kind")),
        sa.CheckConstraint(
            "starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at",
            name=op.f("ck_catalog_offer_window_ordered"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_offer")),
    )
    op.create_table(
        "catalog_plan",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.String(length=2000), nullable=False),
        sa.Column("credits", sa.BigInteger(), nullable=False),
        sa.Column("bonus_credits", sa.BigInteger(), nullable=False),
        sa.Column("popular", sa.Boolean(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("archived_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("sort_order", sa.Integer(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint("bonus_credits >= 0", name=op.f("ck_catalog_plan_bonus_credits_non_negative")),
        sa.CheckConstraint("credits > 0", name=op.f("ck_catalog_plan_credits_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_plan")),
        sa.UniqueConstraint("code", name=op.f("uq_catalog_plan_code")),
    )
    op.create_table(
        "catalog_unit_price",
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("unit_amount", sa.BigInteger(), nullable=False),
        sa.Column("min_quantity", sa.BigInteger(), nullable=False),
        sa.Column("max_quantity", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.CheckConstraint("length(currency) = 3", name=op.f("ck_catalog_unit_price_currency_length")),
        sa.CheckConstraint(
            "max_quantity >= min_quantity", name=op.f("ck_catalog_unit_price_max_quantity_at_least_min")
        ),
        sa.CheckConstraint("min_quantity >= 1", name=op.f("ck_catalog_unit_price_min_quantity_positive")),
        sa.CheckConstraint("unit_amount > 0", name=op.f("ck_catalog_unit_price_unit_amount_positive")),
        sa.PrimaryKeyConstraint("currency", name=op.f("pk_catalog_unit_price")),
    )
    op.create_table(
        "catalog_plan_price",
        sa.Column("plan_id", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("amount > 0", name=op.f("ck_catalog_plan_price_amount_positive")),
        sa.CheckConstraint("length(currency) = 3", name=op.f("ck_catalog_plan_price_currency_length")),
        sa.ForeignKeyConstraint(
            ["plan_id"], ["catalog_plan.id"], name=op.f("fk_catalog_plan_price_plan_id_catalog_plan")
        ),
        sa.PrimaryKeyConstraint("plan_id", "currency", name=op.f("pk_catalog_plan_price")),
    )


def downgrade() -> None:
    op.drop_table("catalog_plan_price")
    op.drop_table("catalog_unit_price")
    op.drop_table("catalog_plan")
    op.drop_table("catalog_offer")
    op.drop_table("catalog_meter")
    op.drop_table("catalog_discount_slab")
