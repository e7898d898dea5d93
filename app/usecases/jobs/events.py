"""The job event log: typed events with OpenAI's message texts, listed newest first."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.errors import not_found
from app.core.ids import new_id, now_ns
from app.db.models import FineTuningEvent
from app.usecases import job_log
from app.usecases.paging import Slice

# An absolute POSIX path: a '/' that starts a word (so `3/10`, `org/model` and URLs are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;:()\[\]{}<>]+")


def public_text(text: str) -> str:
    """Text tenants may read: server paths (data dir, checkpoints, model dirs) become a neutral word."""
    return _ABSOLUTE_PATH.sub("[path]", text)


def _public(value: Any) -> Any:
    if isinstance(value, str):
        return public_text(value)
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_public(v) for v in value]
    return value


def add_event(
    session: Session,
    job_id: str,
    kind: str,
    message: str,
    *,
    attempt: int = 0,
    level: str = "info",
    data: dict[str, Any] | None = None,
    event_type: str = "message",
) -> FineTuningEvent:
    """Append one event; call inside the transaction that makes the transition it describes.

    Message and data are scrubbed of server paths here, whoever wrote them (engine text, exception text).
    """
    row = FineTuningEvent(
        id=new_id("ftevent-"),
        job_id=job_id,
        attempt=attempt,
        created_ns=now_ns(),
        level=level,
        type=event_type,
        kind=kind,
        message=public_text(message),
        data=_public(data),
    )
    session.add(row)
    job_log.queue_line(session, job_id, kind, row.message, attempt, level, row.data)  # operators' log
    return row


def metrics_message(event: dict[str, Any]) -> str:
    """`Step 3/10: training loss=1.23, validation loss=1.40` as OpenAI words it."""
    text = f"Step {event['step']}/{event.get('total_steps', '?')}: training loss={event['train_loss']:.2f}"
    if event.get("valid_loss") is not None:
        text += f", validation loss={event['valid_loss']:.2f}"
    if event.get("full_valid_loss") is not None:
        text += f", full validation loss={event['full_valid_loss']:.2f}"
    return text


METRIC_KEYS = (
    "step",
    "total_steps",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def metrics_data(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in METRIC_KEYS if event.get(k) is not None}


def list_events(session: Session, job_id: str, *, after: str | None, limit: int) -> Slice[FineTuningEvent]:
    """Newest first; `after` is an event id and selects older events."""
    query = select(FineTuningEvent).where(FineTuningEvent.job_id == job_id)
    if after:
        cursor = session.scalar(select(FineTuningEvent).where(FineTuningEvent.id == after))
        if cursor is None or cursor.job_id != job_id:
            raise not_found("fine_tuning.job.event", after, param="after")
        query = query.where(FineTuningEvent.seq < cursor.seq)
    rows = list(session.scalars(query.order_by(FineTuningEvent.seq.desc()).limit(limit + 1)))
    return Slice.of(rows, limit)


def kinds(session: Session, job_id: str) -> list[str]:
    """Event kinds oldest first (tests and the invariant checker read the history with it)."""
    query = select(FineTuningEvent.kind).where(FineTuningEvent.job_id == job_id).order_by(FineTuningEvent.seq)
    return list(session.scalars(query))
