"""Wire shapes of jobs, events and checkpoints (wire reference §3.3, §3.6, §3.7, Appendix B)."""

from __future__ import annotations

from typing import Any

from app.core.ids import ns_to_s
from app.db.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob

OPENAI_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")


def _filled(requested: dict[str, Any], resolved: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Each OpenAI hyperparameter as requested, or the engine's resolved number once it is known."""
    out: dict[str, Any] = {}
    for key in keys:
        value = requested.get(key, "auto")
        if value == "auto" and resolved.get(key) is not None:
            value = resolved[key]
        out[key] = value
    return out


def job_object(job: FineTuningJob, organization_id: str) -> dict[str, Any]:
    method_type = str(job.method["type"])
    requested = dict(job.method[method_type].get("hyperparameters") or {})
    resolved = job.resolved or {}
    method_keys = (*OPENAI_KEYS, "beta") if method_type == "dpo" else OPENAI_KEYS
    method_hparams = {**requested, **_filled(requested, resolved, method_keys)}
    error = None
    if job.error:
        error = {"code": job.error.get("code"), "message": job.error.get("message"), "param": job.error.get("param")}
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": ns_to_s(job.created_ns),
        "finished_at": ns_to_s(job.finished_ns) if job.finished_ns else None,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": organization_id,
        "result_files": list(job.result_files or []),
        "status": job.status,
        "validation_file": job.validation_file,
        "training_file": job.training_file,
        "trained_tokens": job.trained_tokens,
        "error": error,
        "seed": job.seed,
        "estimated_finish": job.estimated_finish,
        "integrations": list(job.integrations or []),
        "metadata": job.metadata_,
        "user_provided_suffix": job.suffix,
        "hyperparameters": _filled(requested, resolved, OPENAI_KEYS),
        "method": {"type": method_type, method_type: {"hyperparameters": method_hparams}},
        # Extension: base vs tuned figures (validation, generation, forgetting, warnings) once measured.
        "evaluation": job.evaluation,
        # Extension: the dataset doctor's findings at validation (token counts, fitting, duplicates, overlap).
        "doctor": job.doctor,
    }


def event_object(row: FineTuningEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": row.id,
        "created_at": ns_to_s(row.created_ns),
        "level": row.level,
        "message": row.message,
        "type": row.type,
        "data": row.data,
    }


def checkpoint_object(row: FineTuningCheckpoint) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row.id,
        "created_at": ns_to_s(row.created_ns),
        "fine_tuned_model_checkpoint": row.model_name,
        "fine_tuning_job_id": row.job_id,
        "step_number": row.step,
        "metrics": row.metrics,
    }
