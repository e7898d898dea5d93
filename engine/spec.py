"""Training job specification: the torch-free contract between the job worker and the engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.manifest import PublicName

Auto = Literal["auto"]
DEFAULT_SEED = 42


INT64_MAX = 2**63 - 1  # counts without a natural bound still fit every consumer's integer type

# The bounds of each knob, one definition used by the engine's spec and by the API's request models.
NEpochs = Auto | Annotated[int, Field(ge=1, le=100)]
BatchSize = Auto | Annotated[int, Field(ge=1, le=1024)]
LearningRateMultiplier = Auto | Annotated[float, Field(gt=0, le=100)]
Beta = Auto | Annotated[float, Field(gt=0, le=10)]
TuningType = Literal["lora", "full"]
LoraRank = Annotated[int, Field(ge=1, le=1024)]
LoraAlpha = Annotated[int, Field(ge=1, le=4096)]
LoraDropout = Annotated[float, Field(ge=0, lt=1)]


def _module_names(v: list[str] | None) -> list[str] | None:
    if v is not None and (not v or any(not m.strip() for m in v)):
        raise ValueError("target_modules must be a non-empty list of module names")
    return v


TargetModules = Annotated[list[str] | None, AfterValidator(_module_names)]


class SharedHyperparameters(BaseModel):
    """Optimisation knobs every method takes; "auto" values are resolved from the dataset (see engine.hparams)."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: NEpochs = "auto"
    batch_size: BatchSize = "auto"
    learning_rate_multiplier: LearningRateMultiplier = "auto"
    learning_rate: Annotated[float, Field(gt=0, le=10)] | None = None  # None: 1e-3 for LoRA, 1e-4 for full
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[float, Field(ge=0, le=1)] = 0.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_seq_length: Annotated[int, Field(ge=8, le=131072)] = 1024
    train_on_inputs: bool = False
    eval_interval: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None  # None: evaluate about 10 times per run
    n_checkpoints: Annotated[int, Field(ge=0, le=100)] = 3
    checkpoint_interval: Annotated[int, Field(ge=1, le=INT64_MAX)] | None = None  # None: one per epoch end
    packing: bool = True
    # A gradient norm above this (before clipping) is treated as divergence and fails the run.
    grad_norm_limit: Annotated[float, Field(gt=0)] = 1e4
    # Upper bound on tokens in one packed micro-batch; larger batches are split and their gradients accumulated.
    max_tokens_per_micro_batch: Annotated[int, Field(ge=64, le=INT64_MAX)] = 16384
    # A seeded share of the training file held out as validation data when no validation file is given.
    validation_split: Annotated[float, Field(gt=0, lt=0.5)] | None = None
    # Stop once validation loss has risen for this many evaluations in a row while training loss fell.
    early_stopping_patience: Annotated[int, Field(ge=1, le=100)] | None = None
    # With validation data, publish the checkpoint with the lowest validation loss ("best") or the last one.
    checkpoint_selection: Literal["best", "last"] = "best"


class Hyperparameters(SharedHyperparameters):
    """Optimisation knobs; "auto" values are resolved from the dataset (see engine.hparams). DPO adds beta."""

    beta: Beta = "auto"


class Tuning(BaseModel):
    """LoRA adapter or full fine-tuning."""

    model_config = ConfigDict(extra="forbid")

    type: TuningType = "lora"
    lora_r: LoraRank = 16
    lora_alpha: LoraAlpha = 32
    lora_dropout: LoraDropout = 0.0
    target_modules: TargetModules = None  # None: every linear projection inside the transformer blocks


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
    # What artifacts name the base by (manifest.json, adapter_config.json): the operator's hub id or offered name,
    # never the server path `base_model` may be. None: tiny-chat, a hub id as given, or a local dir's last part.
    base_model_name: PublicName | None = None
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


def parse_spec(data: dict[str, object] | str | bytes) -> TrainSpec:
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


# ---- the "auto" epoch rule (engine.hparams documents all auto rules; this one is shared with the control plane)

MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
TARGET_EPOCHS = 3


def auto_n_epochs(n_examples: int) -> int:
    """The cookbook heuristic for the number of epochs."""
    n = max(1, n_examples)
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(25, MIN_TARGET_EXAMPLES // n)
    if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n)
    return TARGET_EPOCHS
