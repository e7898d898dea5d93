"""The operators' log of jobs: one line per job transition and a throttled progress line while a job trains.

`add_event` (the one place job events are written) hands every event here. A line is queued on the session
and written only once the transaction that made the transition commits, so the log never reports a
transition a fenced-out run tried and the database refused. Lines go to the `tuneforge.jobs` logger with a
fixed format, so `tuneforge serve` can pick its embedded worker's lines out of that process's output.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

LOGGER_NAME = "tuneforge.jobs"
#: Every job-log line carries this marker (serve echoes its embedded worker's lines that have it).
MARKER = f" {LOGGER_NAME} "
log = logging.getLogger(LOGGER_NAME)

_PENDING = "tuneforge.job_log"
_progress_lock = threading.Lock()
_last_progress: dict[str, tuple[float, int, float]] = {}  # job id -> (monotonic time of last line, step, start)
_settings: dict[str, float] = {"progress_seconds": 5.0}

# kind -> line template; {job} is the job id, {message} the event's message
_TRANSITIONS = {
    "created": "job {job} created",
    "validated": "job {job} queued (files validated)",
    "started": "job {job} started (run {attempt}{resumed})",
    "checkpoint": "job {job} checkpoint: {message}",
    "pause_requested": "job {job} pausing",
    "paused": "job {job} paused",
    "resumed": "job {job} resumed",
    "cancel_requested": "job {job} cancelling",
    "cancelled": "job {job} cancelled",
    "restarted": "job {job} restarting: {message}",
    "model_created": "job {job} published: {message}",
    "succeeded": "job {job} succeeded",
    "failed": "job {job} failed ({code}): {message}",
    "evaluation": "job {job} evaluation: {message}",
}


def configure(progress_seconds: float) -> None:
    """Set the throttle and give the logger its own handler and format (idempotent)."""
    _settings["progress_seconds"] = progress_seconds
    _settings["configured"] = 1.0
    if not any(getattr(h, "_tuneforge_job_log", False) for h in log.handlers):
        # the process's real stderr: a Celery worker replaces sys.stderr with a logging proxy
        handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        handler._tuneforge_job_log = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _ensure_configured() -> None:
    if _settings.get("configured"):
        return
    try:
        from app.core.settings import get_settings

        configure(get_settings().job_log_progress_seconds)
    except Exception:  # settings are checked at start-up; a library caller may have none
        configure(_settings["progress_seconds"])


def line_for(job_id: str, kind: str, message: str, attempt: int, data: dict[str, Any] | None) -> str | None:
    """The log line of one event, or None when the event is not a transition or its progress line is throttled."""
    data = data or {}
    if kind == "metrics":
        return _progress(job_id, data)
    template = _TRANSITIONS.get(kind)
    if template is None:
        return None
    if kind in ("succeeded", "failed", "cancelled"):
        with _progress_lock:
            _last_progress.pop(job_id, None)
    resumed = f", from the checkpoint at step {data['resumed_from_step']}" if "resumed_from_step" in data else ""
    return template.format(
        job=job_id, message=message, attempt=attempt, code=data.get("code") or "error", resumed=resumed
    )


def _progress(job_id: str, data: dict[str, Any]) -> str | None:
    step = data.get("step")
    if not isinstance(step, int):
        return None
    total = data.get("total_steps")
    now = time.monotonic()
    with _progress_lock:
        previous = _last_progress.get(job_id)
        if previous is not None and now - previous[0] < _settings["progress_seconds"] and step != total:
            return None
        start = previous[2] if previous is not None else now
        first_step = previous[1] if previous is not None else step
        _last_progress[job_id] = (now, first_step, start)
    text = f"job {job_id} step {step}/{total or '?'}"
    if isinstance(data.get("train_loss"), int | float):
        text += f" loss {data['train_loss']:.4f}"
    if isinstance(data.get("valid_loss"), int | float):
        text += f" valid_loss {data['valid_loss']:.4f}"
    if isinstance(total, int) and step > first_step and now > start:
        eta = (now - start) / (step - first_step) * (total - step)
        text += f" eta {eta:.0f}s"
    return text


def queue_line(
    session: Session, job_id: str, kind: str, message: str, attempt: int, level: str, data: dict[str, Any] | None
) -> None:
    """Queue the event's line on the session; it is logged when the session commits."""
    _ensure_configured()
    line = line_for(job_id, kind, message, attempt, data)
    if line is not None:
        session.info.setdefault(_PENDING, []).append((logging.ERROR if kind == "failed" else _level(level), line))


def _level(level: str) -> int:
    return {"warn": logging.WARNING, "error": logging.ERROR}.get(level, logging.INFO)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for level, line in session.info.pop(_PENDING, []):
        log.log(level, line)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
