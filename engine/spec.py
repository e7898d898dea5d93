"""Training job specification: the torch-free contract between the job worker and the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Auto = Literal["auto"]
DEFAULT_SEED = 42


class Hyperparameters(BaseModel):
    """Optimisation knobs; "auto" values are resolved from the dataset (see engine.hparams)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=100)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=1024)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = "auto"
    beta: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"
    learning_rate: Annotated[float, Field(gt=0, le=10)] | None = None  # None: 1e-3 for LoRA, 1e-4 for full
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_seq_length: Annotated[int, Field(ge=8, le=131072)] = 1024
    train_on_inputs: bool = False
    eval_interval: Annotated[int, Field(ge=1)] | None = None  # None: evaluate about 10 times per run
    n_checkpoints: Annotated[int, Field(ge=0, le=100)] = 3
    checkpoint_interval: Annotated[int, Field(ge=1)] | None = None  # None: one checkpoint per epoch end
    packing: bool = True
    # A gradient norm above this (before clipping) is treated as divergence and fails the run.
    grad_norm_limit: Annotated[float, Field(gt=0)] = 1e4
    # Upper bound on tokens in one packed micro-batch; larger batches are split and their gradients accumulated.
    max_tokens_per_micro_batch: Annotated[int, Field(ge=64)] = 16384
    # A seeded share of the training file held out as validation data when no validation file is given.
    validation_split: Annotated[float, Field(gt=0, lt=0.5)] | None = None
    # Stop once validation loss has risen for this many evaluations in a row while training loss fell.
    early_stopping_patience: Annotated[int, Field(ge=1, le=100)] | None = None
    # With validation data, publish the checkpoint with the lowest validation loss ("best") or the last one.
    checkpoint_selection: Literal["best", "last"] = "best"


class Tuning(BaseModel):
    """LoRA adapter or full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["lora", "full"] = "lora"
    lora_r: Annotated[int, Field(ge=1, le=1024)] = 16
    lora_alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    target_modules: list[str] | None = None  # None: every linear projection inside the transformer blocks

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not m.strip() for m in v)):
            raise ValueError("target_modules must be a non-empty list of module names")
        return v


class EvalSpec(BaseModel):
    """How much evaluation a run does and when it warns; operator settings, not user hyperparameters."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # Validation examples scored at each evaluation; the final `full_valid_loss` always uses all of them.
    valid_examples: Annotated[int, Field(ge=1)] = 256
    generation_examples: Annotated[int, Field(ge=0)] = 16
    generation_max_tokens: Annotated[int, Field(ge=1)] = 64
    generation_max_seconds: Annotated[float, Field(gt=0)] = 60.0
    probe_tokens: Annotated[int, Field(ge=0)] = 4096
    probe_per_skill: Annotated[int, Field(ge=0)] = 16
    forgetting_loss_increase: Annotated[float, Field(ge=0)] = 0.25
    forgetting_skill_drop: Annotated[float, Field(ge=0, le=1)] = 0.15
    overfitting_patience: Annotated[int, Field(ge=1)] = 2


class TrainSpec(BaseModel):
    """Everything one training run needs; unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid")

    base_model: Annotated[str, Field(min_length=1)]
    data_dir: Annotated[str, Field(min_length=1)]
    training_file: Annotated[str, Field(min_length=1)]
    validation_file: str | None = None
    output_dir: Annotated[str, Field(min_length=1)]
    method: Literal["supervised", "dpo"] = "supervised"
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    tuning: Tuning = Field(default_factory=Tuning)
    evaluation: EvalSpec = Field(default_factory=EvalSpec)
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = DEFAULT_SEED
    resume_from: str | None = None
    init_from: str | None = None

    @field_validator("seed", mode="before")
    @classmethod
    def _default_seed(cls, v: object) -> object:
        return DEFAULT_SEED if v is None else v  # a job without a seed still trains reproducibly

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        if self.resume_from and self.init_from:
            raise ValueError("resume_from and init_from are mutually exclusive")
        if self.validation_file and self.hyperparameters.validation_split is not None:
            raise ValueError(
                "validation_split holds out part of the training file; it cannot be combined with a validation_file"
            )
        return self


class SpecError(ValueError):
    """A spec that does not validate; the message names the offending field(s)."""


def _describe(err: ValidationError) -> str:
    by_field: dict[str, list[str]] = {}
    for e in err.errors():
        # Union branches add tags such as "literal['auto']" or "constrained-int" to the location: not field names.
        names = [str(x) for x in e["loc"] if isinstance(x, int) or str(x).isidentifier()]
        by_field.setdefault(".".join(names) or "spec", []).append(e["msg"])
    return "; ".join(f"{field}: {' or '.join(msgs)}" for field, msgs in by_field.items())


def parse_spec(data: dict | str | bytes) -> TrainSpec:
    """Validate a spec from a dict or JSON text; raise SpecError naming the field on failure."""
    try:
        if isinstance(data, str | bytes):
            return TrainSpec.model_validate_json(data)
        return TrainSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_describe(err)) from None


def load_spec(path: str | Path) -> TrainSpec:
    """Read and validate a JSON spec file."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        raise SpecError(f"spec: not valid JSON ({err.msg} at line {err.lineno})") from None
    return parse_spec(text)
