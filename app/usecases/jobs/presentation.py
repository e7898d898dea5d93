"""Wire shapes of jobs, events and checkpoints (wire reference §3.3, §3.6, §3.7, Appendix B)."""

from __future__ import annotations

from typing import Any

from app.core.ids import ns_to_s
from app.db.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob
from app.wire.jobs import (
    CheckpointMetrics,
    CheckpointObject,
    DpoHyperparameters,
    DpoMethod,
    EventObject,
    Integration,
    JobError,
    JobHyperparameters,
    JobObject,
    Method,
    SupervisedHyperparameters,
    SupervisedMethod,
)

OPENAI_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")


def resolved_hyperparameters(job: FineTuningJob) -> dict[str, Any]:
    """Every knob of the job's method: as requested, else as the run resolved it, else the engine's default.

    "auto" (and an unset learning rate or interval) stays until the run has resolved it from the dataset.
    """
    method_type = str(job.method["type"])
    model = DpoHyperparameters if method_type == "dpo" else SupervisedHyperparameters
    requested = dict(job.method[method_type].get("hyperparameters") or {})
    resolved = job.resolved or {}
    values = {**model().model_dump(mode="json"), **requested}
    for key, value in values.items():
        if (value == "auto" or value is None) and resolved.get(key) is not None:
            values[key] = resolved[key]
    return values


def _method(job: FineTuningJob, values: dict[str, Any]) -> Method:
    if job.method["type"] == "dpo":
        return Method(type="dpo", dpo=DpoMethod(hyperparameters=DpoHyperparameters.model_construct(**values)))
    supervised = SupervisedHyperparameters.model_construct(**values)
    return Method(type="supervised", supervised=SupervisedMethod(hyperparameters=supervised))


def job_object(job: FineTuningJob, organization_id: str) -> JobObject:
    values = resolved_hyperparameters(job)
    error = None
    if job.error:
        error = JobError(code=job.error.get("code"), message=job.error.get("message"), param=job.error.get("param"))
    return JobObject(
        id=job.id,
        model=job.model,
        created_at=ns_to_s(job.created_ns),
        finished_at=ns_to_s(job.finished_ns) if job.finished_ns else None,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=organization_id,
        result_files=list(job.result_files or []),
        status=job.status,  # type: ignore[arg-type]  # reason: the column holds JobStatus values as text
        validation_file=job.validation_file,
        training_file=job.training_file,
        trained_tokens=job.trained_tokens,
        error=error,
        seed=job.seed,
        estimated_finish=job.estimated_finish,
        integrations=[Integration.model_validate(item) for item in job.integrations or []],
        metadata=job.metadata_,
        user_provided_suffix=job.suffix,
        hyperparameters=JobHyperparameters(**{key: values[key] for key in OPENAI_KEYS}),
        method=_method(job, values),
        evaluation=job.evaluation,
        doctor=job.doctor,
    )


def event_object(row: FineTuningEvent) -> EventObject:
    return EventObject(
        id=row.id,
        created_at=ns_to_s(row.created_ns),
        level=row.level,  # type: ignore[arg-type]  # reason: add_event writes only info/warn/error
        message=row.message,
        type=row.type,  # type: ignore[arg-type]  # reason: add_event writes only message/metrics
        data=row.data,
    )


def checkpoint_object(row: FineTuningCheckpoint) -> CheckpointObject:
    return CheckpointObject(
        id=row.id,
        created_at=ns_to_s(row.created_ns),
        fine_tuned_model_checkpoint=row.model_name,
        fine_tuning_job_id=row.job_id,
        step_number=row.step,
        metrics=CheckpointMetrics.model_validate(row.metrics),
    )
