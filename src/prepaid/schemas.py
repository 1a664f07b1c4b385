"""Pydantic building blocks shared by every domain's schemas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict


class Input(BaseModel):
    """Request bodies: unknown fields are refused, strings trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _iso_8601_only(value: Any) -> Any:
    """Times are ISO 8601 strings; pydantic alone would also read a bare number as Unix seconds."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
    elif not isinstance(value, (int, float)):
        return value
    raise ValueError("expected an ISO 8601 date-time with a time zone, such as 2025-01-31T12:00:00Z")


def _in_utc(value: datetime) -> datetime:
    """In UTC; a time the UTC calendar cannot hold (year 1 at +14:00, year 9999 at -14:00) becomes its first or
    last instant, rather than an overflow when the database converts it."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if value.year == datetime.min.year else datetime.max
        return edge.replace(tzinfo=UTC)


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only), AfterValidator(_in_utc)]
"""A date-time with a time zone, as ISO 8601, read as UTC (the database keeps UTC and refuses naive values)."""
