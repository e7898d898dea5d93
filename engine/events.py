"""The engine's event stream: one JSON object per line, typed as a union discriminated on `type` (torch-free).

The trainer writes these, the worker reads them from the child's stdout, and the control plane records them.
A field the writer did not set is left out of the line (a metrics event of a step without evaluation has no
`valid_loss`), so the wire stays what readers of the stream have always seen.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter, ValidationError

T = TypeVar("T")
Number = float | int
Figures = dict[str, Number | None]  # named numbers (a step's metrics); ints stay ints on the wire


class _Part(BaseModel):
    """A nested object of an event: closed, so a misspelt field is an error rather than lost."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Pair(_Part, Generic[T]):
    """One figure of the starting model (`base`) and of the published one (`tuned`)."""

    base: T | None = None
    tuned: T | None = None


class GenerationExample(_Part):
    generated: str
    reference: str


class GenerationScores(_Part):
    """Greedy answers to validation prompts scored against the references."""

    n: int
    token_f1: float
    exact_match: float
    examples: list[GenerationExample] = []


class PreferenceScores(_Part):
    """DPO: how often the chosen completion wins, and by how much (reward margin)."""

    accuracy: float
    reward_margin: float


class ProbeFigures(_Part):
    """Forgetting probes: loss on general text and, for tiny-chat, accuracy per skill."""

    text_loss: float
    skills: dict[str, float] | None = None
    skills_mean: float | None = None


class GenerationSummary(_Part):
    metric: Literal["token_f1"] = "token_f1"
    base: float | None = None
    tuned: float | None = None
    exact_match: Pair[float] | None = None
    n: int = 0
    examples: list[GenerationExample] = []


class PreferenceSummary(_Part):
    accuracy: Pair[float] | None = None
    reward_margin: Pair[float] | None = None


class ForgettingSummary(_Part):
    metric: Literal["general_text_loss"] = "general_text_loss"
    base: float | None = None
    tuned: float | None = None
    skills: Pair[float] | None = None
    skills_by_name: Pair[dict[str, float]] | None = None


class EvaluationWarning(_Part):
    """A warning raised during the run (overfitting, forgetting), repeated in the summary."""

    code: str
    message: str


class EvaluationSummary(_Part):
    """Base versus tuned, measured once training ended; stored on the job as its `evaluation`."""

    selected_step: int
    last_step: int
    checkpoint_selection: Literal["best", "last"]
    stopped_early_at: int | None = None
    valid_loss: Pair[float] | None = None
    valid_mean_token_accuracy: Pair[float] | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    generation: GenerationSummary | None = None
    preference: PreferenceSummary | None = None
    forgetting: ForgettingSummary | None = None
    warnings: list[EvaluationWarning] = []
    seconds: float = 0.0
    helped: bool | None = None


_TAGS = ("type", "stage")


class _Event(BaseModel):
    """Base of every event: closed, immutable, serialised with only the fields its writer set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object written on the stream (`type` always included)."""
        tags = {k: getattr(self, k) for k in _TAGS if k in type(self).model_fields}  # discriminators, always
        return {**tags, **self.model_dump(mode="json", exclude_unset=True)}

    def to_line(self) -> str:
        """One line of the stream, without its newline."""
        return json.dumps(self.to_wire(), separators=(",", ":"))


class StartedEvent(_Event):
    """Data read and hyperparameters resolved: training is about to build the model."""

    type: Literal["started"] = "started"
    total_steps: int
    hyperparameters: dict[str, JsonValue] = Field(description="every hyperparameter, resolved (no `auto`)")
    n_examples: int
    n_validation_examples: int = 0
    validation_source: Literal["file", "split"] | None = None
    trained_tokens_estimate: int = 0
    method: Literal["supervised", "dpo"] = "supervised"
    tuning: Literal["lora", "full"] = "lora"
    device: str = "cpu"


class MetricsEvent(_Event):
    """One optimiser step; `valid_*` only on steps that evaluated."""

    type: Literal["metrics"] = "metrics"
    step: int
    total_steps: int
    train_loss: float
    train_mean_token_accuracy: float | None = None
    grad_norm: float | None = None
    learning_rate: float | None = None
    trained_tokens: int = 0
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class CheckpointEvent(_Event):
    """A checkpoint sealed on disk (fsynced and renamed) and safe to resume from."""

    type: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str = Field(description="server path of the checkpoint directory (never shown to tenants)")
    sha256: str
    metrics: Figures = {}
    best_step: int | None = Field(default=None, description="the run's best checkpoint so far, which must be kept")


class MessageEvent(_Event):
    """A note or warning for the job's event log; `code` names what it is about."""

    type: Literal["message"] = "message"
    level: Literal["info", "warn", "error"] = "info"
    message: str
    code: str | None = None
    file: str | None = Field(default=None, description="`training_file` or `validation_file`")
    count: int | None = None
    lines: list[int] | None = None
    step: int | None = None
    base: ProbeFigures | None = None
    tuned: ProbeFigures | None = None


class BaseEvaluationEvent(_Event):
    """The starting model measured before the first step."""

    type: Literal["evaluation"] = "evaluation"
    stage: Literal["base"] = "base"
    step: int = 0
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    generation: GenerationScores | None = None
    preference: PreferenceScores | None = None
    probes: ProbeFigures | None = None


class FinalEvaluationEvent(_Event):
    """The published model measured against the starting one."""

    type: Literal["evaluation"] = "evaluation"
    stage: Literal["final"] = "final"
    step: int
    evaluation: EvaluationSummary


EvaluationEvent = Annotated[BaseEvaluationEvent | FinalEvaluationEvent, Field(discriminator="stage")]


class CheckpointRef(_Part):
    """The newest checkpoint of the run: what a resumed run starts from."""

    step: int
    path: str
    sha256: str


class RunError(_Part):
    """Why a run failed; `message` is free of server paths."""

    code: str | None = None
    message: str
    param: str | None = None


class ResultEvent(_Event):
    """The last event of every run, whatever its outcome."""

    type: Literal["result"] = "result"
    status: Literal["succeeded", "failed", "paused", "cancelled"]
    output_dir: str = ""
    adapter_dir: str | None = None
    metrics_csv: str | None = None
    trained_tokens: int = 0
    hyperparameters: dict[str, JsonValue] = {}
    error: RunError | None = None
    checkpoint: CheckpointRef | None = None
    metrics: Figures = Field(default={}, description="the published step's metrics")
    evaluation: EvaluationSummary | None = None
    selected_step: int | None = None


EngineEvent = Annotated[
    StartedEvent | MetricsEvent | CheckpointEvent | MessageEvent | EvaluationEvent | ResultEvent,
    Field(discriminator="type"),
]
EVENT_TYPES: tuple[type[_Event], ...] = (
    StartedEvent,
    MetricsEvent,
    CheckpointEvent,
    MessageEvent,
    BaseEvaluationEvent,
    FinalEvaluationEvent,
    ResultEvent,
)
_ADAPTER: TypeAdapter[EngineEvent] = TypeAdapter(EngineEvent)


class EventError(ValueError):
    """A line of the stream that is not one valid engine event."""


def parse_event(line: str | bytes) -> EngineEvent:
    """One stream line as its typed event; EventError for anything else (not JSON, unknown type, bad field)."""
    try:
        return _ADAPTER.validate_json(line)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "event"
        raise EventError(f"not an engine event: {where}: {first['msg']}") from None


def event_from(data: dict[str, Any]) -> EngineEvent:
    """A decoded event object as its typed event (EventError when it is not one)."""
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise EventError(f"not an engine event: {err.errors()[0]['msg']}") from None
