"""The dataset report: what one pass over a JSONL training file found."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

Param = Literal["training_file", "validation_file"]


class DatasetFormat(StrEnum):
    """The line format of a fine-tuning dataset."""

    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    PREFERENCE = "preference"
    UNKNOWN = "unknown"


class LineError(BaseModel):
    """One problem on one line (1-based); line 0 marks a file-level problem."""

    line: int
    code: str
    message: str


class BlockingError(BaseModel):
    """Why a file cannot train, in OpenAI's job error shape."""

    code: Literal["invalid_n_examples", "invalid_training_file", "invalid_validation_file"]
    message: str
    param: Param = "training_file"


class DatasetStats(BaseModel):
    """Size statistics over the valid examples (all zero when there are none)."""

    messages_min: int = 0
    messages_mean: float = 0.0
    messages_max: int = 0
    chars_min: int = 0
    chars_mean: float = 0.0
    chars_max: int = 0
    chars_total: int = 0
    assistant_messages: int = 0
    weight0_messages: int = 0
    examples_with_tools: int = 0
    est_tokens_total: int = 0
    est_tokens_max_example: int = 0


class DatasetReport(BaseModel):
    """The outcome of checking one dataset file; JSON-serialisable with model_dump(mode='json')."""

    format: DatasetFormat = Field(description="Format of the first valid example (else of the first recognised line).")
    n_lines: int = Field(description="Physical lines read, blank and overlong ones included.")
    n_examples: int = Field(description="Lines that are valid examples of the file's format.")
    n_errors: int = Field(description="All errors found, listed or not.")
    errors: list[LineError] = Field(
        default_factory=list, description="The first max_errors errors by line; file-level ones (line 0) first."
    )
    error_counts: dict[str, int] = Field(
        default_factory=dict, description="Errors per code; a line counts once per code."
    )
    duplicates: int = Field(default=0, description="Valid examples equal (as JSON) to an earlier one.")
    stats: DatasetStats = Field(default_factory=DatasetStats)
    can_train: bool
    blocking_error: BlockingError | None = None
    max_line_bytes: int
    param: Param = "training_file"
