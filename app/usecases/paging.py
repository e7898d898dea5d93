"""The one page type of every list use case: rows in list order, and whether more follow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.core.errors import InvalidRequest
from app.core.settings import Settings

T = TypeVar("T")


def check_limit(settings: Settings, limit: int) -> None:
    """The list bound is an operator setting, so it is checked here rather than in the query's schema."""
    if limit > settings.list_limit_max:
        raise InvalidRequest(f"limit must be at most {settings.list_limit_max}.", param="limit")


@dataclass(frozen=True)
class Slice(Generic[T]):
    """Up to `limit` rows of a list; `has_more` when the query found one more."""

    items: list[T]
    has_more: bool

    @classmethod
    def of(cls, rows: Sequence[T], limit: int) -> Slice[T]:
        """From rows fetched with `limit + 1`: the extra row only says that more follow."""
        return cls(items=list(rows[:limit]), has_more=len(rows) > limit)
