"""The list envelopes: one generic list, with a cursor where OpenAI pages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel


class Identified(BaseModel):
    """A wire object with an id, which a cursor page can name."""

    id: str


T = TypeVar("T", bound=BaseModel)
I = TypeVar("I", bound=Identified)  # noqa: E741


class ListOf(BaseModel, Generic[T]):
    """{"object": "list", "data": [...]}: a complete list (models)."""

    object: Literal["list"] = "list"
    data: list[T]


class Page(ListOf[T], Generic[T]):
    """One page of a longer list; `has_more` says whether to ask for the next (`after` the last id)."""

    has_more: bool


class CursorPage(Page[I], Generic[I]):
    """A page that also names its first and last ids (files, checkpoints), as OpenAI's do."""

    first_id: str | None
    last_id: str | None

    @classmethod
    def of(cls, data: Sequence[I], has_more: bool) -> CursorPage[I]:
        """The page with its cursor ids taken from its items."""
        first, last = (data[0].id, data[-1].id) if data else (None, None)
        return cls(data=list(data), has_more=has_more, first_id=first, last_id=last)
