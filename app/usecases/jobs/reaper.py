"""The reaper: re-queues runs whose lease expired, re-rings doorbells, finishes stuck validations.

Every change is a conditional UPDATE on what the sweep saw, so any number of reapers may run at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update

from app.core.ids import now_ns
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.db.models import FineTuningJob
from app.db.session import Database
from app.usecases.jobs.doorbell import Doorbell
from app.usecases.jobs.run import requeue_or_fail
from app.usecases.jobs.state import ACTIVE, JobStatus
from app.usecases.jobs.submit import validate_job

log = logging.getLogger("tuneforge.reaper")


@dataclass
class Sweep:
    requeued: list[str] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    rung: list[str] = field(default_factory=list)
    validated: list[str] = field(default_factory=list)


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def reap_expired(db: Database) -> Sweep:
    """Runs whose lease expired: re-queue (attempts left), fail (none left), or finish a pending cancel/pause."""
    sweep = Sweep()
    now = now_ns()
    with db.session() as session:
        stale = session.execute(
            select(FineTuningJob.id, FineTuningJob.attempt).where(
                FineTuningJob.status.in_(ACTIVE), FineTuningJob.lease_expires_ns < now
            )
        ).all()
    for job_id, attempt in stale:
        with db.session() as session:
            # Re-check under the row lock: the run may have renewed its lease since the select.
            moved = session.execute(
                update(FineTuningJob)
                .where(
                    FineTuningJob.id == job_id,
                    FineTuningJob.attempt == attempt,
                    FineTuningJob.status.in_(ACTIVE),
                    FineTuningJob.lease_expires_ns < now,
                )
                .values(lease_owner=None)
                .execution_options(synchronize_session=False)
            )
            if not moved.rowcount:  # type: ignore[attr-defined]  # reason: DML results are CursorResults at runtime
                continue
            job = session.get(FineTuningJob, job_id, populate_existing=True)
            assert job is not None
            outcome = requeue_or_fail(session, job, attempt, "lease expired")
        (sweep.requeued if outcome == JobStatus.QUEUED else sweep.ended).append(job_id)
        log.warning("job %s run %s lost its lease: %s", job_id, attempt, outcome)
    return sweep


def stale_queued(db: Database, older_than_s: float) -> list[str]:
    """Queued jobs whose doorbell may be lost; marks them re-rung now so each sweep rings once."""
    now = now_ns()
    limit = now - _ns(older_than_s)
    found: list[str] = []
    with db.session() as session:
        ids = list(
            session.scalars(
                select(FineTuningJob.id).where(
                    FineTuningJob.status == JobStatus.QUEUED, FineTuningJob.enqueued_ns < limit
                )
            )
        )
        for job_id in ids:
            moved = session.execute(
                update(FineTuningJob)
                .where(
                    FineTuningJob.id == job_id,
                    FineTuningJob.status == JobStatus.QUEUED,
                    FineTuningJob.enqueued_ns < limit,
                )
                .values(enqueued_ns=now)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount:  # type: ignore[attr-defined]  # reason: DML results are CursorResults at runtime
                found.append(job_id)
    return found


def stuck_validations(db: Database, settings: Settings, storage: BlobStore, older_than_s: float) -> list[str]:
    """Jobs left in validating_files (the API died after commit): validate them now."""
    limit = now_ns() - _ns(older_than_s)
    queued: list[str] = []
    with db.session() as session:
        ids = list(
            session.scalars(
                select(FineTuningJob.id).where(
                    FineTuningJob.status == JobStatus.VALIDATING_FILES, FineTuningJob.created_ns < limit
                )
            )
        )
    for job_id in ids:
        with db.session() as session:
            if validate_job(session, settings, storage, job_id) == JobStatus.QUEUED:
                queued.append(job_id)
    return queued


def database_just_restarted(db: Database, settings: Settings) -> bool:
    """Whether the database server started less than a lease ago (Postgres only).

    While it was down no run could renew its lease; a reaper that saw no failed sweep (the outage fell between
    two sweeps) must still give live runs one lease period to heartbeat before calling their leases expired.
    """
    uptime = db.uptime_seconds()
    return uptime is not None and uptime < settings.lease_seconds


def sweep_once(
    db: Database, settings: Settings, storage: BlobStore, doorbell: Doorbell, *, reap_leases: bool = True
) -> Sweep:
    """One pass; doorbells ring only after the transitions committed."""
    sweep = reap_expired(db) if reap_leases and not database_just_restarted(db, settings) else Sweep()
    sweep.validated = stuck_validations(db, settings, storage, settings.doorbell_resend_seconds)
    sweep.rung = stale_queued(db, settings.doorbell_resend_seconds)
    doorbell.ring([*sweep.requeued, *sweep.validated, *sweep.rung])
    return sweep
