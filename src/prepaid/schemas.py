"""Pydantic building blocks shared by every domain's schemas."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict


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


Timestamp = Annotated[AwareDatetime, BeforeValidator(_iso_8601_only)]
"""A date-time with a time zone, as ISO 8601 (the database keeps UTC and refuses naive values)."""
