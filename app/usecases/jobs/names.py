"""Public names of fine-tuned models and checkpoints."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.db.models import FineTuningJob, Project


def model_name(job: FineTuningJob, project_name: str) -> str:
    """`ft:{base}:{project}:{suffix}:{id8}`; the short id comes from the job id so checkpoints share it."""
    suffix = (job.suffix or "").replace("_", "-")
    return f"ft:{job.base_model}:{project_name}:{suffix}:{job.id[-8:]}"


def checkpoint_name(job: FineTuningJob, project_name: str, step: int) -> str:
    return f"{model_name(job, project_name)}:ckpt-step-{step}"


def project_name(session: Session, project_id: str) -> str:
    project = session.get(Project, project_id)
    assert project is not None
    return project.name
