"""User-driven transitions: cancel, pause, resume."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.core.ids import now_ns
from app.db.models import FineTuningJob
from app.usecases.jobs.events import add_event
from app.usecases.jobs.state import TERMINAL, JobStatus, Trigger, move, status_of
from app.usecases.jobs.submit import get_job

_S = JobStatus


def cancel_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    """Idle jobs are cancelled at once; a running job gets the cancel flag its worker polls (within a second).

    Once this answers `cancelling` the job ends `cancelled`, even if its run completes first (jobs_run).
    """
    job = get_job(session, project_id, job_id)
    raced = False
    while True:
        status = status_of(job)
        if status == _S.CANCELLING or (raced and status in TERMINAL):
            return job  # asked already, or the run ended as we asked: the client sees how
        if status in (_S.RUNNING, _S.PAUSING):
            if move(session, job, _S.CANCELLING, trigger=Trigger.CANCEL, cancel_requested=True):
                add_event(session, job.id, "cancel_requested", "Cancelling the job", attempt=job.attempt, data={})
                return job
        elif move(session, job, _S.CANCELLED, trigger=Trigger.CANCEL, finished_ns=now_ns(), cancel_requested=True):
            add_event(session, job.id, "cancelled", "The job was cancelled", attempt=job.attempt, data={})
            return job
        raced = True  # a worker moved the job first: decide again on what it is now
        session.refresh(job)


def pause_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    """A queued job pauses at once; a running one checkpoints and stops at its next step."""
    job = get_job(session, project_id, job_id)
    raced = False
    while True:
        status = status_of(job)
        if status in (_S.PAUSING, _S.PAUSED) or (raced and status not in (_S.QUEUED, _S.RUNNING)):
            return job  # asked already, or the job moved on as we asked: the client sees how
        if status == _S.RUNNING:
            if move(session, job, _S.PAUSING, trigger=Trigger.PAUSE, pause_requested=True):
                add_event(session, job.id, "pause_requested", "Pausing the job", attempt=job.attempt, data={})
                return job
        elif move(session, job, _S.PAUSED, trigger=Trigger.PAUSE):
            add_event(session, job.id, "paused", "Fine-tuning job paused", attempt=job.attempt, data={})
            return job
        raced = True  # a worker moved the job first: decide again on what it is now
        session.refresh(job)


def resume_job(session: Session, project_id: str, job_id: str) -> FineTuningJob:
    """Back to `queued`; the next run starts from the newest recorded checkpoint."""
    job = get_job(session, project_id, job_id)
    if status_of(job) in (_S.QUEUED, _S.RUNNING):
        return job  # resumed already
    if move(session, job, _S.QUEUED, trigger=Trigger.RESUME, pause_requested=False, enqueued_ns=now_ns()):
        add_event(session, job.id, "resumed", "Fine-tuning job resumed", attempt=job.attempt, data={})
    else:
        session.refresh(job)  # someone else moved it (resumed or cancelled it): answer what it is now
    return job
