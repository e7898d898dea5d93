"""Creating a job through the API: check the body, create it once per Idempotency-Key, validate, ring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from app.core.settings import Settings
from app.core.storage import BlobStore
from app.db.session import Database
from app.usecases.idempotency import body_hash, check_key, run_once
from app.usecases.jobs import control, submit
from app.usecases.jobs.doorbell import Doorbell
from app.usecases.jobs.lineage import inherit_shape
from app.usecases.jobs.presentation import job_object
from app.usecases.jobs.request import parse_job_request
from app.usecases.jobs.state import JobStatus
from app.wire.jobs import JobObject

log = logging.getLogger("tuneforge.jobs")
CREATE_ROUTE = "POST /v1/fine_tuning/jobs"


@dataclass(frozen=True)
class Created:
    """The job as the first request for its key created it, and whether this answer replays it."""

    job: JobObject
    replayed: bool


def create_job(
    db: Database,
    settings: Settings,
    storage: BlobStore,
    doorbell: Doorbell,
    project_id: str,
    body: Any,
    idempotency_key: str | None,
) -> Created:
    """Create (status validating_files) and commit; then validate and queue it, outside the transaction."""
    request = parse_job_request(body)
    key = check_key(idempotency_key)
    digest = body_hash(CREATE_ROUTE, body)
    outcome = run_once(
        db,
        project_id,
        key,
        CREATE_ROUTE,
        digest,
        lambda session: (
            submit.create_job(session, settings, project_id, inherit_shape(session, project_id, request)).id
        ),
    )
    with db.session() as session:
        created = job_object(submit.get_job(session, project_id, outcome.object_id), settings.organization_id)
    if not outcome.replayed:
        validate_and_ring(db, settings, storage, doorbell, outcome.object_id)
    return Created(created, outcome.replayed)


def validate_and_ring(db: Database, settings: Settings, storage: BlobStore, doorbell: Doorbell, job_id: str) -> None:
    """After the commit: never let a failure here turn into an error for a job that exists (the reaper retries)."""
    try:
        with db.session() as session:
            status = submit.validate_job(session, settings, storage, job_id)
        if status == JobStatus.QUEUED:
            doorbell.ring([job_id])
    except Exception:
        log.exception("validating job %s failed; the reaper will validate it again", job_id)


def resume_job(db: Database, settings: Settings, doorbell: Doorbell, project_id: str, job_id: str) -> JobObject:
    """Back to `queued` and ring; the next run continues from the newest checkpoint."""
    with db.session() as session:
        job = job_object(control.resume_job(session, project_id, job_id), settings.organization_id)
    if job.status == JobStatus.QUEUED:
        doorbell.ring([job_id])
    return job
