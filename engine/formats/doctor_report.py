"""What the dataset doctor found: token-level facts about a dataset for one base model's tokenizer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TokenStats(BaseModel):
    """Tokens per example as the model sees it (chat template applied), before fitting to max_seq_length."""

    p50: int = 0
    p95: int = 0
    max: int = 0
    mean: float = 0.0
    total: int = 0


class LineList(BaseModel):
    """How many examples have a problem, and the first of their line numbers (1-based)."""

    count: int = 0
    lines: list[int] = Field(default_factory=list)


class DuplicateGroups(BaseModel):
    """Examples repeating an earlier one; each group lists the lines that are copies of one another."""

    count: int = Field(default=0, description="Examples beyond the first of their group.")
    groups: list[list[int]] = Field(default_factory=list)


class AnswerShare(BaseModel):
    """Examples whose final assistant answer is identical to another example's."""

    count: int = 0
    share: float = 0.0


class LabelDistribution(BaseModel):
    """For classification-style data (answers from a small set of values): how often each value occurs."""

    counts: dict[str, int]
    majority_share: float
    skewed: bool


class Overlap(BaseModel):
    """Validation examples that also appear in the training file: [training line, validation line] pairs."""

    exact: list[list[int]] = Field(default_factory=list)
    exact_count: int = 0
    near: list[list[int]] = Field(default_factory=list)
    near_count: int = 0


class DoctorWarning(BaseModel):
    code: str
    message: str


class DoctorReport(BaseModel):
    """The token-level report; complete is False when a cap (examples or time) stopped the pass early."""

    model: str | None = None
    method: str
    max_seq_length: int
    train_on_inputs: bool
    examined: int = Field(description="Valid examples tokenized (invalid lines are the format report's business).")
    complete: bool
    seconds: float
    tokens: TokenStats
    over_max_seq_length: LineList = Field(description="Examples longer than max_seq_length before fitting.")
    truncated: LineList = Field(description="Over-long examples that lose their oldest turns (system kept).")
    dropped: LineList = Field(description="Over-long examples that cannot fit whole answers: left out.")
    untrainable: LineList = Field(description="Examples with no token carrying loss once weights and masks apply.")
    trainable_examples: int
    trainable_tokens: int = Field(description="Tokens carrying loss per epoch, after fitting.")
    duplicates: DuplicateGroups
    near_duplicates: DuplicateGroups
    near_duplicate_threshold: float
    identical_answers: AnswerShare
    labels: LabelDistribution | None = None
    validation_overlap: Overlap | None = None
    warnings: list[DoctorWarning] = Field(default_factory=list)

    @property
    def problem_lines(self) -> list[int]:
        """Lines that cannot train (dropped or untrainable), in order."""
        return sorted({*self.dropped.lines, *self.untrainable.lines})
