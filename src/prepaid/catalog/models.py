"""The catalog: plans and their prices, unit prices for custom quantities, meters (unit and AI model prices),
discount slabs and offers.

Money is integers in minor units: a plan's or a unit price's ``amount`` in the currency's minor unit (paise,
cents), credits and meter prices in the credit asset's minor unit (``PREPAID_CREDIT_SCALE``). Percentages are
basis points (``percent_bps``: 750 is 7.5 %). Plans, meters and offers are archived, never deleted: orders and
usage events refer to them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from prepaid.db import Base, JSONType, UTCDateTime, utcnow


class Plan(Base):
    """A credit pack: ``credits`` (plus ``bonus_credits``) for one price per currency (``PlanPrice``)."""

    __tablename__ = "catalog_plan"
    __table_args__ = (
        CheckConstraint("credits > 0", name="credits_positive"),
        CheckConstraint("bonus_credits >= 0", name="bonus_credits_non_negative"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    credits: Mapped[int] = mapped_column(BigInteger)
    bonus_credits: Mapped[int] = mapped_column(BigInteger, default=0)
    popular: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    # Loaded with the plan (one extra SELECT for any number of plans); replaced through catalog.service.
    prices: Mapped[list[PlanPrice]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="PlanPrice.currency"
    )

    def price_in(self, currency: str) -> int | None:
        """The plan's price in ``currency`` (minor units), or None when it has none there."""
        for price in self.prices:
            if price.currency == currency:
                return price.amount
        return None


class PlanPrice(Base):
    """What a plan costs in one currency, in that currency's minor unit."""

    __tablename__ = "catalog_plan_price"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("length(currency) = 3", name="currency_length"),
    )

    plan_id: Mapped[str] = mapped_column(ForeignKey("catalog_plan.id"), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)


class UnitPrice(Base):
    """The price of one whole credit in a currency (minor units), for custom quantities between
    ``min_quantity`` and ``max_quantity`` whole credits."""

    __tablename__ = "catalog_unit_price"
    __table_args__ = (
        CheckConstraint("unit_amount > 0", name="unit_amount_positive"),
        CheckConstraint("min_quantity >= 1", name="min_quantity_positive"),
        CheckConstraint("max_quantity >= min_quantity", name="max_quantity_at_least_min"),
        CheckConstraint("length(currency) = 3", name="currency_length"),
    )

    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    unit_amount: Mapped[int] = mapped_column(BigInteger)
    min_quantity: Mapped[int] = mapped_column(BigInteger)
    max_quantity: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Meter(Base):
    """What usage is priced by. ``kind='unit'``: ``price`` credit minor units per ``per`` units (calls,
    images, seconds, ...). ``kind='model'``: an AI model, with ``input_price``, ``output_price`` and
    ``cached_input_price`` in credit minor units per million tokens. ``catalog.service.meter_cost`` prices it."""

    __tablename__ = "catalog_meter"
    __table_args__ = (
        CheckConstraint("kind IN ('unit', 'model')", name="kind"),
        CheckConstraint(
            "(kind = 'unit' AND price IS NOT NULL AND per IS NOT NULL AND price >= 0 AND per >= 1 "
            "AND input_price IS NULL AND output_price IS NULL AND cached_input_price IS NULL) OR "
            "(kind = 'model' AND input_price IS NOT NULL AND output_price IS NOT NULL "
            "AND cached_input_price IS NOT NULL AND input_price >= 0 AND output_price >= 0 "
            "AND cached_input_price >= 0 AND price IS NULL AND per IS NULL)",
            name="kind_prices",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    kind: Mapped[str] = mapped_column(String(8))
    unit: Mapped[str] = mapped_column(String(32))
    price: Mapped[int | None] = mapped_column(BigInteger)
    per: Mapped[int | None] = mapped_column(BigInteger)
    input_price: Mapped[int | None] = mapped_column(BigInteger)
    output_price: Mapped[int | None] = mapped_column(BigInteger)
    cached_input_price: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class DiscountSlab(Base):
    """A volume discount: buying at least ``min_credits`` (credit minor units) takes ``percent_bps`` off.
    The list is replaced whole; thresholds are unique, and the discount is the highest slab reached."""

    __tablename__ = "catalog_discount_slab"
    __table_args__ = (
        CheckConstraint("min_credits > 0", name="min_credits_positive"),
        CheckConstraint("percent_bps >= 1 AND percent_bps <= 9999", name="percent_bps_range"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    min_credits: Mapped[int] = mapped_column(BigInteger, unique=True)
    percent_bps: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Offer(Base):
    """A time-boxed promotion: ``percent_off`` (``percent_bps``) or ``bonus_credits`` (credit minor units), on
    the plans in ``plan_codes`` (``None``: every plan and custom quantities), between ``starts_at`` and
    ``ends_at`` (``None``: open on that side)."""

    __tablename__ = "catalog_offer"
    __table_args__ = (
        CheckConstraint("kind IN ('percent_off', 'bonus_credits')", name="kind"),
        CheckConstraint(
            "(kind = 'percent_off' AND percent_bps IS NOT NULL AND percent_bps >= 1 AND percent_bps <= 9999 "
            "AND bonus_credits IS NULL) OR "
            "(kind = 'bonus_credits' AND bonus_credits IS NOT NULL AND bonus_credits > 0 "
            "AND percent_bps IS NULL)",
            name="kind_values",
        ),
        CheckConstraint("starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at", name="window_ordered"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    kind: Mapped[str] = mapped_column(String(16))
    percent_bps: Mapped[int | None] = mapped_column(Integer)
    bonus_credits: Mapped[int | None] = mapped_column(BigInteger)
    plan_codes: Mapped[list[Any] | None] = mapped_column(JSONType)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


# ================================================================ coupons (catalog part B)
# Coupons, their allotment to named users, and redemptions (reserved by an order in progress, redeemed when
# it is paid, released when it fails or expires). catalog.service's coupons section holds the rules.

from sqlalchemy import Index, UniqueConstraint  # noqa: E402


class Coupon(Base):
    """A code a buyer enters: ``percent_off`` (``percent_bps``, up to 10000 = free), ``amount_off`` (minor
    units per currency) or ``bonus_credits`` (credit minor units); on the plans in ``plan_codes`` (``None``:
    every plan and custom quantities); with a minimum purchase per currency (``min_amount``, compared with the
    subtotal), total and per-user limits (``None``: none), a window, and a visibility: ``public`` (anyone with
    the code) or ``assigned`` (only the users it is allotted to). The code is stored upper-case."""

    __tablename__ = "catalog_coupon"
    __table_args__ = (
        CheckConstraint("kind IN ('percent_off', 'amount_off', 'bonus_credits')", name="kind"),
        CheckConstraint("visibility IN ('public', 'assigned')", name="visibility"),
        CheckConstraint(
            "(kind = 'percent_off' AND percent_bps IS NOT NULL AND percent_bps >= 1 AND percent_bps <= 10000 "
            "AND bonus_credits IS NULL) OR "
            "(kind = 'amount_off' AND percent_bps IS NULL AND bonus_credits IS NULL) OR "
            "(kind = 'bonus_credits' AND bonus_credits IS NOT NULL AND bonus_credits > 0 "
            "AND percent_bps IS NULL)",
            name="kind_values",
        ),
        CheckConstraint("max_redemptions IS NULL OR max_redemptions >= 1", name="max_redemptions_positive"),
        CheckConstraint("max_per_user IS NULL OR max_per_user >= 1", name="max_per_user_positive"),
        CheckConstraint("starts_at IS NULL OR ends_at IS NULL OR ends_at > starts_at", name="window_ordered"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(2000), default="")
    kind: Mapped[str] = mapped_column(String(16))
    percent_bps: Mapped[int | None] = mapped_column(Integer)
    amount_off: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)
    bonus_credits: Mapped[int | None] = mapped_column(BigInteger)
    plan_codes: Mapped[list[Any] | None] = mapped_column(JSONType)
    min_amount: Mapped[dict[str, int]] = mapped_column(JSONType, default=dict)
    max_redemptions: Mapped[int | None] = mapped_column(BigInteger)
    max_per_user: Mapped[int | None] = mapped_column(BigInteger)
    starts_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    visibility: Mapped[str] = mapped_column(String(16), default="public")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class CouponAssignment(Base):
    """A coupon allotted to a user: an ``assigned`` coupon can be used only by its assignees, and every
    allotted coupon shows in the user's ``GET /v1/me/coupons``. Withdrawing deletes the row."""

    __tablename__ = "catalog_coupon_assignment"
    __table_args__ = (
        UniqueConstraint("coupon_id", "user_id"),
        Index("ix_catalog_coupon_assignment_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("catalog_coupon.id"))
    user_id: Mapped[str] = mapped_column(ForeignKey("auth_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CouponRedemption(Base):
    """One use of a coupon by one order: ``reserved`` while the order is in progress (until ``expires_at``),
    then ``redeemed`` (paid) or ``released`` (failed, expired, cancelled). Limits count the redeemed ones and
    the reserved ones not yet past ``expires_at``: a lapsed reservation stops counting before anyone releases
    it. One row per order (``order_id`` unique)."""

    __tablename__ = "catalog_coupon_redemption"
    __table_args__ = (
        CheckConstraint("status IN ('reserved', 'redeemed', 'released')", name="status"),
        Index("ix_catalog_coupon_redemption_coupon_id_status", "coupon_id", "status"),
        Index("ix_catalog_coupon_redemption_coupon_id_user_id", "coupon_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("catalog_coupon.id"))
    user_id: Mapped[str | None] = mapped_column(ForeignKey("auth_user.id"))
    order_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="reserved")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
