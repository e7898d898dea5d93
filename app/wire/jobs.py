"""Fine-tuning jobs on the wire (wire reference §3): the create request, the job, its events and checkpoints.

Hyperparameter bounds come from `engine.spec`, the one definition the engine validates with too. The same
models describe what a client sends and what the job echoes back (every value filled in once known).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from app.core.echo import ID_CHARS
from app.usecases.jobs.state import JobStatus
from app.wire.base import RequestModel, omitted
from app.wire.page import Identified
from engine.spec import (
    BatchSize,
    Hyperparameters,
    LearningRateMultiplier,
    LoraAlpha,
    LoraDropout,
    LoraRank,
    NEpochs,
    SharedHyperparameters,
    TargetModules,
    Tuning,
    TuningType,
)

Id = Annotated[str, Field(min_length=1, max_length=ID_CHARS)]
Suffix = Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
JobSeed = Annotated[int, Field(ge=0, le=2**31 - 1)]
MetadataMap = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]], Field(max_length=16)
]
_TUNING_DEFAULTS = Tuning()


class TuningKnobs(BaseModel):
    """TuneForge extension: the adapter's shape (LoRA) or full fine-tuning, as engine.spec.Tuning bounds it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tuning: TuningType = _TUNING_DEFAULTS.type
    lora_r: LoraRank = _TUNING_DEFAULTS.lora_r
    lora_alpha: LoraAlpha = _TUNING_DEFAULTS.lora_alpha
    lora_dropout: LoraDropout = _TUNING_DEFAULTS.lora_dropout
    target_modules: TargetModules = _TUNING_DEFAULTS.target_modules


class SupervisedHyperparameters(TuningKnobs, SharedHyperparameters):
    """OpenAI's batch_size, learning_rate_multiplier and n_epochs, plus the engine's other knobs (extensions)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DpoHyperparameters(TuningKnobs, Hyperparameters):
    """The supervised knobs plus DPO's beta."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SupervisedMethod(RequestModel):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(RequestModel):
    hyperparameters: DpoHyperparameters | None = None


class Method(RequestModel):
    """How the job trains; only the section named by `type` may be given (reinforcement is refused)."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = omitted()
    dpo: DpoMethod | None = omitted()
    reinforcement: dict[str, JsonValue] | None = omitted()


class WandbSettings(BaseModel):
    """Weights & Biases settings; kept as sent and echoed (no run is reported to W&B from here)."""

    model_config = ConfigDict(extra="allow")

    project: str
    name: str | None = omitted()
    entity: str | None = omitted()
    tags: list[str] | None = omitted()


class Integration(BaseModel):
    type: Literal["wandb"]
    wandb: WandbSettings


class JobCreateRequest(RequestModel):
    """POST /v1/fine_tuning/jobs."""

    model: Id
    training_file: Id
    validation_file: Id | None = None
    hyperparameters: SupervisedHyperparameters | None = Field(
        default=None, description="Deprecated by OpenAI in favour of method.supervised.hyperparameters."
    )
    method: Method | None = None
    suffix: Suffix | None = None
    seed: JobSeed | None = None
    metadata: MetadataMap | None = None
    integrations: Annotated[list[Integration], Field(max_length=5)] | None = None


class JobHyperparameters(BaseModel):
    """OpenAI's (deprecated) top-level echo: the three hyperparameters, "auto" until the run resolves them."""

    batch_size: BatchSize
    learning_rate_multiplier: LearningRateMultiplier
    n_epochs: NEpochs


class JobError(BaseModel):
    """Why a job failed."""

    code: str | None
    message: str | None
    param: str | None


class JobObject(BaseModel):
    """A fine-tuning job."""

    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    model: str
    created_at: int
    finished_at: int | None
    fine_tuned_model: str | None
    organization_id: str
    result_files: list[str]
    status: JobStatus
    validation_file: str | None
    training_file: str
    trained_tokens: int | None
    error: JobError | None
    seed: int
    estimated_finish: int | None
    integrations: list[Integration]
    metadata: dict[str, str] | None
    user_provided_suffix: str | None
    hyperparameters: JobHyperparameters
    method: Method
    evaluation: dict[str, JsonValue] | None = Field(
        description="TuneForge extension: base vs tuned figures (validation, generation, forgetting, warnings)."
    )
    doctor: dict[str, JsonValue] | None = Field(
        description="TuneForge extension: the dataset doctor's findings at validation."
    )


class EventObject(BaseModel):
    """One entry of a job's event log."""

    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, JsonValue] | None


class CheckpointMetrics(BaseModel):
    """The figures at the checkpoint's step; only those measured are present."""

    model_config = ConfigDict(extra="allow")

    step: float | None = omitted()
    train_loss: float | None = omitted()
    train_mean_token_accuracy: float | None = omitted()
    valid_loss: float | None = omitted()
    valid_mean_token_accuracy: float | None = omitted()
    full_valid_loss: float | None = omitted()
    full_valid_mean_token_accuracy: float | None = omitted()


class CheckpointObject(Identified):
    """A checkpoint a run recorded; usable as a model by its `fine_tuned_model_checkpoint` name."""

    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetrics
