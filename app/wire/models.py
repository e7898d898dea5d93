"""Models on the wire (wire reference §6)."""

from __future__ import annotations

import datetime
from typing import Literal

from pydantic import BaseModel


class ModelObject(BaseModel):
    """A base model, fine-tuned model or checkpoint the caller may use."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    shutdown_date: datetime.date | None = None  # OpenAI's field; nothing here is scheduled to shut down


class ModelDeleted(BaseModel):
    """The answer to a deletion."""

    id: str
    object: Literal["model"] = "model"
    deleted: bool
