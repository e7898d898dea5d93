"""Continuing from a fine-tuned model: the new run trains the parent's adapter, so its shape is inherited."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.orm import Session

from app.core.echo import clipped
from app.core.errors import InvalidRequest
from app.db.models import FineTuningJob, RegisteredModel
from app.usecases.jobs.request import TUNING_EXTENSIONS, JobRequest
from app.wire.jobs import TuningKnobs

_DEFAULT_SHAPE: dict[str, Any] = TuningKnobs().model_dump(mode="json")


def shape_of(job: FineTuningJob) -> dict[str, Any]:
    """The adapter shape a job trains: what it stored (continued jobs store their parent's), else the defaults."""
    requested = job.method[str(job.method["type"])].get("hyperparameters") or {}
    return {key: requested.get(key, default) for key, default in _DEFAULT_SHAPE.items()}


def inherit_shape(session: Session, project_id: str, request: JobRequest) -> JobRequest:
    """For a job that continues a fine-tuned model: refuse a different shape (a 400 naming it), store the parent's.

    The engine loads the parent's adapter as it is, so a different `lora_r` would be echoed but ignored.
    """
    row = session.get(RegisteredModel, request.model)
    if row is None or row.project_id != project_id or row.job_id is None:
        return request
    parent = session.get(FineTuningJob, row.job_id)
    if parent is None:
        return request
    shape = shape_of(parent)
    sent = request.hyperparameters
    for key in TUNING_EXTENSIONS:
        if key in sent and sent[key] != shape[key]:
            raise InvalidRequest(
                f"{key} cannot change when continuing from {clipped(request.model)}: its adapter has "
                f"{key}={shape[key]!r}. Leave {key} out to keep it.",
                param=f"method.{request.method_type}.hyperparameters.{key}",
                code="invalid_value",
            )
    hyperparameters = {**request.hyperparameters, **shape}
    method = {"type": request.method_type, request.method_type: {"hyperparameters": hyperparameters}}
    return dataclasses.replace(request, method=method)
