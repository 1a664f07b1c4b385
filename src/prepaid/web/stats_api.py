"""``GET /v1/admin/stats``: the figures of the admin dashboard as JSON (admins only). The rules are in
``web.stats``; every amount is an integer (money in its currency's minor unit, credits in the credit asset's
smallest unit) and days are calendar days in ``PREPAID_REPORT_TZ``."""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BeforeValidator, ConfigDict, Field

from prepaid.db import utcnow
from prepaid.deps import Admin, ReadSession, SettingsDep
from prepaid.schemas import Output
from prepaid.web import stats

router = APIRouter(prefix="/v1/admin", tags=["stats"])
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _iso_date_only(value: Any) -> Any:
    """Days are ISO 8601 dates (2026-01-31); pydantic alone would also read a bare number as Unix seconds."""
    if isinstance(value, str) and _ISO_DATE.match(value):
        return value
    if isinstance(value, date):
        return value
    raise ValueError("expected a date as YYYY-MM-DD, such as 2026-01-31")


Day = Annotated[date, BeforeValidator(_iso_date_only)]

_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


class RevenueDayRead(Output):
    day: date
    currency: str
    gross: int = Field(description="Money of the orders fulfilled that day, in the currency's minor unit.")
    refunded: int = Field(description="Money of the admins' refunds processed that day.")
    chargebacks: int = Field(description="Money of the chargebacks lost that day (the amount disputed).")
    net: int = Field(description="gross - refunded - chargebacks")


class CreditsDayRead(Output):
    day: date
    sold: int = Field(description="Credits bought (purchase transactions).")
    granted: int = Field(description="Credits granted: bonus, signup, goodwill and admin grants.")
    spent: int = Field(
        description="Credits spent (spends and captured holds, less the spends reversed that day)."
    )
    expired: int = Field(description="Credits whose lots expired.")


class StatusCountRead(Output):
    status: str
    count: int


class TopCustomerRead(Output):
    user_id: str
    email: str | None
    name: str
    currency: str
    paid: int = Field(description="Money paid in the period net of refunds, in the currency's minor unit.")
    credits: int = Field(
        description="Credits (bonus included) granted by their orders fulfilled in the period."
    )


class StatsRead(Output):
    model_config = ConfigDict(populate_by_name=True)

    object: Literal["admin_stats"] = "admin_stats"
    from_: date = Field(alias="from", description="The first day, included.")
    to: date = Field(description="The last day, included.")
    timezone: str = Field(description="The time zone of the days (PREPAID_REPORT_TZ).")
    asset: str = Field(description="The asset the credit figures are in.")
    revenue: list[RevenueDayRead] = Field(
        description="Days and currencies with money in or out, oldest first."
    )
    credits: list[CreditsDayRead] = Field(description="Every day of the period, oldest first.")
    orders_by_status: list[StatusCountRead] = Field(
        description="Orders created in the period, by status now."
    )
    top_customers: list[TopCustomerRead] = Field(description="Per currency, the customers who paid most.")

    @classmethod
    def of(cls, figures: stats.Stats) -> StatsRead:
        return cls(
            from_=figures.period.first,
            to=figures.period.last,
            timezone=figures.period.zone.key,
            asset=figures.asset,
            revenue=[
                RevenueDayRead(
                    day=r.day,
                    currency=r.currency,
                    gross=r.gross,
                    refunded=r.refunded,
                    chargebacks=r.chargebacks,
                    net=r.net,
                )
                for r in figures.revenue
            ],
            credits=[CreditsDayRead.model_validate(row) for row in figures.credits],
            orders_by_status=[StatusCountRead.model_validate(row) for row in figures.orders_by_status],
            top_customers=[TopCustomerRead.model_validate(row) for row in figures.top_customers],
        )


@router.get(
    "/stats",
    response_model_by_alias=True,
    responses={
        400: {
            "description": "from after to, or more than 366 days (invalid_period)",
            "content": _ERROR_CONTENT,
        }
    },
)
async def get_stats(
    _admin: Admin,
    session: ReadSession,
    settings: SettingsDep,
    from_: Annotated[
        Day | None, Query(alias="from", description="First day (default: 29 days before to).")
    ] = None,
    to: Annotated[Day | None, Query(description="Last day, included (default: today).")] = None,
) -> StatsRead:
    """Revenue per day per currency, credits sold, granted, spent and expired per day, orders by status and
    the top customers over a period of at most 366 days (default: the last 30)."""
    chosen = stats.period(from_, to, zone=stats.report_zone(settings.report_tz), now=utcnow())
    return StatsRead.of(await stats.compute_stats(session, period=chosen))
