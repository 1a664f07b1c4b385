"""Cursor pagination: ``limit`` (1-100, default 20), ``starting_after``, ``ending_before``; newest first.

Ids are time-sortable (see ``ids.py``), so the id column is the cursor: ``starting_after=X`` pages to older
rows (ids below X), ``ending_before=X`` to newer ones (ids above X).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from prepaid.errors import InvalidRequest

T = TypeVar("T")
MAX_LIMIT = 100
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class PageParams:
    limit: int = DEFAULT_LIMIT
    starting_after: str | None = None
    ending_before: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise InvalidRequest(
                f"limit must be between 1 and {MAX_LIMIT}.", code="invalid_limit", param="limit"
            )
        if self.starting_after and self.ending_before:
            raise InvalidRequest(
                "Use starting_after or ending_before, not both.", code="invalid_cursor", param="ending_before"
            )


@dataclass
class Page(Generic[T]):
    data: list[T]
    has_more: bool


async def paginate(
    session: AsyncSession, stmt: Select[T], id_column: InstrumentedAttribute[str], params: PageParams
) -> Page[T]:
    if params.ending_before:
        stmt = stmt.where(id_column > params.ending_before).order_by(id_column.asc())
    else:
        if params.starting_after:
            stmt = stmt.where(id_column < params.starting_after)
        stmt = stmt.order_by(id_column.desc())
    rows = list((await session.scalars(stmt.limit(params.limit + 1))).all())
    has_more = len(rows) > params.limit
    rows = rows[: params.limit]
    if params.ending_before:
        rows.reverse()
    return Page(data=rows, has_more=has_more)


class ListResponse(BaseModel, Generic[T]):
    """The list envelope every list route answers with."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool

    @classmethod
    def of(cls, page: Page[Any], item: type[T]) -> ListResponse[T]:
        validate = getattr(item, "model_validate")  # noqa: B009 - T is a pydantic model here
        return ListResponse[T](data=[validate(row) for row in page.data], has_more=page.has_more)
