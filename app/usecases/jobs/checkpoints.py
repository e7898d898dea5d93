"""Listing a job's recorded checkpoints, newest first."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import not_found
from app.db.models import FineTuningCheckpoint
from app.usecases.paging import Slice


def list_checkpoints(session: Session, job_id: str, *, after: str | None, limit: int) -> Slice[FineTuningCheckpoint]:
    query = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
    if after:
        cursor = session.get(FineTuningCheckpoint, after)
        if cursor is None or cursor.job_id != job_id:
            raise not_found("fine_tuning.job.checkpoint", after, param="after")
        query = query.where(FineTuningCheckpoint.step < cursor.step)
    rows = list(session.scalars(query.order_by(FineTuningCheckpoint.step.desc()).limit(limit + 1)))
    return Slice.of(rows, limit)


def latest_checkpoint(session: Session, job_id: str) -> FineTuningCheckpoint | None:
    """The newest recorded checkpoint: what a resumed or restarted run starts from."""
    query = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
    return session.scalar(query.order_by(FineTuningCheckpoint.step.desc()).limit(1))
