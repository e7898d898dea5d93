"""User-driven transitions: cancel, pause, resume."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest
from app.core.ids import now_ns
from app.db.models import FineTuningJob
from app.usecases.jobs.events import add_event
from app.usecases.jobs.state import TERMINAL
from app.usecases.jobs.submit import get_job


def _transition(session: Session, job: FineTuningJob, from_status: str, **values: Any) -> bool:
    """Guarded transition: applies only if the job is still in `from_status`."""
    moved = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job.id, FineTuningJob.status == from_status)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(moved.rowcount)  # type: ignore[attr-defined]


def _not_allowed(job: FineTuningJob, action: str) -> InvalidRequest:
    return InvalidRequest(
        f"Cannot {action} job {job.id}: its status is '{job.status}'.",
        param="fine_tuning_job_id",
        code="invalid_job_status",
    )


def cancel_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    """Idle jobs are cancelled at once; a running job gets the cancel flag its worker polls (within a second).

    Once this answers `cancelling` the job ends `cancelled`, even if its run completes first (jobs_run).
    """
    job = get_job(session, project_id, job_id)
    status = job.status
    if status in ("validating_files", "queued", "paused"):
        if _transition(session, job, status, status="cancelled", finished_ns=now_ns(), cancel_requested=True):
            add_event(session, job.id, "cancelled", "The job was cancelled", attempt=job.attempt, data={})
    elif status in ("running", "pausing"):
        if _transition(session, job, status, status="cancelling", cancel_requested=True):
            add_event(session, job.id, "cancel_requested", "Cancelling the job", attempt=job.attempt, data={})
    elif status != "cancelling":
        raise _not_allowed(job, "cancel")
    session.flush()
    session.refresh(job)
    if job.status not in ("cancelled", "cancelling") and job.status not in TERMINAL:
        return cancel_job(session, project_id, job_id)  # raced with a worker transition: try again
    return job


def pause_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    """A queued job pauses at once; a running one checkpoints and stops at its next step."""
    job = get_job(session, project_id, job_id)
    status = job.status
    if status == "queued":
        if _transition(session, job, status, status="paused"):
            add_event(session, job.id, "paused", "Fine-tuning job paused", attempt=job.attempt, data={})
    elif status == "running":
        if _transition(session, job, status, status="pausing", pause_requested=True):
            add_event(session, job.id, "pause_requested", "Pausing the job", attempt=job.attempt, data={})
    elif status not in ("pausing", "paused"):
        raise _not_allowed(job, "pause")
    session.flush()
    session.refresh(job)
    if job.status in ("queued", "running"):
        return pause_job(session, project_id, job_id)  # raced with a worker transition: try again
    return job


def resume_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    """Back to `queued`; the next run starts from the newest recorded checkpoint."""
    job = get_job(session, project_id, job_id)
    if job.status != "paused":
        if job.status in ("queued", "running"):
            return job
        raise _not_allowed(job, "resume")
    if _transition(session, job, "paused", status="queued", pause_requested=False, enqueued_ns=now_ns()):
        add_event(session, job.id, "resumed", "Fine-tuning job resumed", attempt=job.attempt, data={})
    session.flush()
    session.refresh(job)
    return job
