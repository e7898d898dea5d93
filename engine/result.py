"""The outcome of a training run, as returned by engine.train and emitted as the final "result" event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import JsonValue

from engine.events import CheckpointRef, EvaluationSummary, Figures, ResultEvent, RunError

EXIT_CODES = {"succeeded": 0, "failed": 1, "invalid": 2, "paused": 3, "cancelled": 4}
Status = Literal["succeeded", "failed", "paused", "cancelled"]


@dataclass
class TrainResult:
    """Status, where things were written, and the resolved hyperparameters."""

    status: Status
    output_dir: str
    adapter_dir: str | None = None
    metrics_csv: str | None = None
    trained_tokens: int = 0
    hyperparameters: dict[str, JsonValue] | None = None
    error: RunError | None = None
    checkpoint: CheckpointRef | None = None
    final_metrics: Figures | None = None
    evaluation: EvaluationSummary | None = None  # base-vs-tuned summary (engine.run_eval)
    selected_step: int | None = None  # the step whose weights were published
    invalid: bool = False  # a failure caused by the spec or dataset (exit code 2)

    @property
    def exit_code(self) -> int:
        """0 succeeded, 1 failed, 2 invalid spec/dataset, 3 paused, 4 cancelled."""
        return EXIT_CODES["invalid"] if self.invalid else EXIT_CODES[self.status]

    def to_event(self) -> ResultEvent:
        """The contract's final "result" event (every field written, null where there is nothing)."""
        return ResultEvent(
            status=self.status,
            output_dir=self.output_dir,
            adapter_dir=self.adapter_dir,
            metrics_csv=self.metrics_csv,
            trained_tokens=self.trained_tokens,
            hyperparameters=self.hyperparameters or {},
            error=self.error,
            checkpoint=self.checkpoint,
            metrics=self.final_metrics or {},
            evaluation=self.evaluation,
            selected_step=self.selected_step,
        )
