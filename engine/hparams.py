"""Resolution of "auto" hyperparameters from the dataset size (torch-free).

Rules (documented, tested):
- n_epochs: OpenAI cookbook heuristic with target 3 epochs, at least 100 and at most 25000 example-passes:
  n*3 < 100 -> min(25, 100 // n); n*3 > 25000 -> max(1, 25000 // n); else 3.
- batch_size: OpenAI's "about 0.2% of the training examples, at most 256", at least 1.
- learning_rate_multiplier: square-root batch scaling around batch 8, clamped to [0.5, 2.0]; larger batches
  average away more gradient noise and tolerate a larger step (OpenAI likewise picks larger multipliers for
  larger batches).
- learning_rate (base): 1e-3 for LoRA adapters, 1e-4 for full fine-tuning.
- beta (DPO): 0.1, the value of the DPO paper and of OpenAI's default.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from engine.spec import (  # the epoch rule lives in the spec so the control plane can use it torch-free
    TrainSpec,
    auto_n_epochs,
)

MAX_AUTO_BATCH = 256


class Resolved(BaseModel):
    """Every hyperparameter as a concrete number, as reported in the started and result events."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    learning_rate: float
    effective_learning_rate: float
    beta: float | None
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    lr_scheduler: str
    max_seq_length: int
    train_on_inputs: bool
    eval_interval: int
    n_checkpoints: int
    checkpoint_interval: int | None
    packing: bool
    validation_split: float | None = None
    early_stopping_patience: int | None = None
    checkpoint_selection: str = "best"
    seed: int
    total_steps: int
    steps_per_epoch: int


def auto_batch_size(n_examples: int) -> int:
    """About 0.2% of the examples, between 1 and 256."""
    return max(1, min(MAX_AUTO_BATCH, math.ceil(0.002 * n_examples)))


def auto_lr_multiplier(batch_size: int) -> float:
    """sqrt(batch/8) clamped to [0.5, 2]."""
    return float(min(2.0, max(0.5, math.sqrt(batch_size / 8))))


def resolve(spec: TrainSpec, n_examples: int) -> Resolved:
    """Turn the spec's hyperparameters into concrete values for a dataset of n_examples."""
    hp = spec.hyperparameters
    n_epochs = auto_n_epochs(n_examples) if hp.n_epochs == "auto" else int(hp.n_epochs)
    batch_size = auto_batch_size(n_examples) if hp.batch_size == "auto" else int(hp.batch_size)
    batch_size = max(1, min(batch_size, n_examples))
    mult = (
        auto_lr_multiplier(batch_size) if hp.learning_rate_multiplier == "auto" else float(hp.learning_rate_multiplier)
    )
    base_lr = hp.learning_rate if hp.learning_rate is not None else (1e-3 if spec.tuning.type == "lora" else 1e-4)
    steps_per_epoch = math.ceil(n_examples / batch_size)
    total = steps_per_epoch * n_epochs
    beta: float | None = None
    if spec.method == "dpo":
        beta = 0.1 if hp.beta == "auto" else float(hp.beta)
    return Resolved(
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate_multiplier=mult,
        learning_rate=base_lr,
        effective_learning_rate=base_lr * mult,
        beta=beta,
        warmup_ratio=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        lr_scheduler=hp.lr_scheduler,
        max_seq_length=hp.max_seq_length,
        train_on_inputs=hp.train_on_inputs,
        eval_interval=hp.eval_interval or max(1, total // 10),
        n_checkpoints=hp.n_checkpoints,
        checkpoint_interval=hp.checkpoint_interval,
        packing=hp.packing,
        validation_split=hp.validation_split,
        early_stopping_patience=hp.early_stopping_patience,
        checkpoint_selection=hp.checkpoint_selection,
        seed=spec.seed,
        total_steps=total,
        steps_per_epoch=steps_per_epoch,
    )


def as_event_dict(r: Resolved) -> dict[str, Any]:
    """The resolved values as plain JSON types."""
    return r.model_dump()
