"""What the jobs API reads and the stops it asks for, each as the wire object it answers with."""

from __future__ import annotations

from app.core.settings import Settings
from app.db.session import Database
from app.usecases.jobs import control, submit
from app.usecases.jobs.checkpoints import list_checkpoints
from app.usecases.jobs.events import list_events
from app.usecases.jobs.presentation import checkpoint_object, event_object, job_object
from app.usecases.paging import check_limit
from app.wire.jobs import CheckpointObject, EventObject, JobObject
from app.wire.page import CursorPage, Page


def metadata_filter(query: list[tuple[str, str]]) -> tuple[dict[str, str], bool]:
    """`metadata[k]=v` pairs, and whether `metadata=null` asks for jobs without metadata."""
    wanted = {
        name[len("metadata[") : -1]: value
        for name, value in query
        if name.startswith("metadata[") and name.endswith("]")
    }
    return wanted, ("metadata", "null") in query


def list_jobs(
    db: Database, settings: Settings, project_id: str, *, after: str | None, limit: int, query: list[tuple[str, str]]
) -> Page[JobObject]:
    """Newest first, filtered by metadata."""
    check_limit(settings, limit)
    wanted, metadata_null = metadata_filter(query)
    with db.session() as session:
        page = submit.list_jobs(
            session, project_id, after=after, limit=limit, metadata=wanted, metadata_null=metadata_null
        )
        data = [job_object(job, settings.organization_id) for job in page.items]
    return Page[JobObject](data=data, has_more=page.has_more)


def get_job(db: Database, settings: Settings, project_id: str, job_id: str) -> JobObject:
    with db.session() as session:
        return job_object(submit.get_job(session, project_id, job_id), settings.organization_id)


def cancel_job(db: Database, settings: Settings, project_id: str, job_id: str) -> JobObject:
    """Idle jobs are cancelled at once; a running job moves to `cancelling` until its run stops."""
    with db.session() as session:
        return job_object(control.cancel_job(session, project_id, job_id), settings.organization_id)


def pause_job(db: Database, settings: Settings, project_id: str, job_id: str) -> JobObject:
    """A running job moves to `pausing`, writes a checkpoint and becomes `paused`."""
    with db.session() as session:
        return job_object(control.pause_job(session, project_id, job_id), settings.organization_id)


def job_events(
    db: Database, settings: Settings, project_id: str, job_id: str, *, after: str | None, limit: int
) -> Page[EventObject]:
    """The job's events, newest first."""
    check_limit(settings, limit)
    with db.session() as session:
        submit.get_job(session, project_id, job_id)
        page = list_events(session, job_id, after=after, limit=limit)
        return Page[EventObject](data=[event_object(e) for e in page.items], has_more=page.has_more)


def job_checkpoints(
    db: Database, settings: Settings, project_id: str, job_id: str, *, after: str | None, limit: int
) -> CursorPage[CheckpointObject]:
    """The job's recorded checkpoints, newest first."""
    check_limit(settings, limit)
    with db.session() as session:
        submit.get_job(session, project_id, job_id)
        page = list_checkpoints(session, job_id, after=after, limit=limit)
        return CursorPage[CheckpointObject].of([checkpoint_object(c) for c in page.items], page.has_more)
