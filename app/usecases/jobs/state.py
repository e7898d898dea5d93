"""The job state machine: the statuses, the one transition table, and `move`, the only way a status changes."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ClauseElement

from app.core.errors import InvalidRequest
from app.db.models import FineTuningJob


class JobStatus(StrEnum):
    """OpenAI's job statuses, plus `pausing`/`cancelling` while a run is asked to stop."""

    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Trigger(StrEnum):
    """What makes a job move; each edge of the table names the triggers allowed to take it."""

    CREATE = "create"
    VALIDATE = "validate"
    CLAIM = "claim"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    FINISH = "finish"  # the run ended and said how
    REQUEUE = "requeue"  # the run was lost: lease expired (reaper), child crashed, or a stop nobody asked for


_S, _T = JobStatus, Trigger

#: from -> {to: triggers}. `None` is "no job yet". Statuses with no outgoing edge are terminal.
TRANSITIONS: Mapping[JobStatus | None, Mapping[JobStatus, frozenset[Trigger]]] = {
    None: {_S.VALIDATING_FILES: frozenset({_T.CREATE})},
    _S.VALIDATING_FILES: {
        _S.QUEUED: frozenset({_T.VALIDATE}),
        _S.FAILED: frozenset({_T.VALIDATE}),
        _S.CANCELLED: frozenset({_T.CANCEL}),
    },
    _S.QUEUED: {
        _S.RUNNING: frozenset({_T.CLAIM}),
        _S.PAUSED: frozenset({_T.PAUSE}),
        _S.CANCELLED: frozenset({_T.CANCEL}),
    },
    _S.RUNNING: {
        _S.PAUSING: frozenset({_T.PAUSE}),
        _S.CANCELLING: frozenset({_T.CANCEL}),
        _S.SUCCEEDED: frozenset({_T.FINISH}),
        _S.FAILED: frozenset({_T.FINISH, _T.REQUEUE}),  # REQUEUE: no attempts left
        _S.QUEUED: frozenset({_T.REQUEUE}),
    },
    _S.PAUSING: {
        _S.PAUSED: frozenset({_T.FINISH, _T.REQUEUE}),  # a lost run's last checkpoint is the pause point
        _S.CANCELLING: frozenset({_T.CANCEL}),
        _S.FAILED: frozenset({_T.FINISH}),
    },
    _S.CANCELLING: {_S.CANCELLED: frozenset({_T.FINISH, _T.REQUEUE})},
    _S.PAUSED: {
        _S.QUEUED: frozenset({_T.RESUME}),
        _S.CANCELLED: frozenset({_T.CANCEL}),
    },
    _S.SUCCEEDED: {},
    _S.FAILED: {},
    _S.CANCELLED: {},
}

#: A run owns the job (it holds a lease) in these.
ACTIVE: tuple[JobStatus, ...] = (_S.RUNNING, _S.PAUSING, _S.CANCELLING)
#: Nothing moves a job out of these.
TERMINAL: tuple[JobStatus, ...] = tuple(s for s in JobStatus if not TRANSITIONS[s])
assert TERMINAL == (_S.SUCCEEDED, _S.FAILED, _S.CANCELLED)


class IllegalTransition(InvalidRequest):
    """A move the table does not allow; a user's request answers 400 `invalid_job_status`, as before."""

    default_code = "invalid_job_status"

    def __init__(self, job_id: str, status: JobStatus | None, to: JobStatus, trigger: Trigger) -> None:
        super().__init__(f"Cannot {trigger} job {job_id}: its status is '{status}'.", param="fine_tuning_job_id")
        self.status, self.to, self.trigger = status, to, trigger


def allowed(status: JobStatus | None, to: JobStatus, trigger: Trigger) -> bool:
    """Whether the table has the edge status -> to for this trigger."""
    return trigger in TRANSITIONS.get(status, {}).get(to, frozenset())


def check(job_id: str, status: JobStatus | None, to: JobStatus, trigger: Trigger) -> None:
    """Raise IllegalTransition unless the table has this edge."""
    if not allowed(status, to, trigger):
        raise IllegalTransition(job_id, status, to, trigger)


def initial() -> JobStatus:
    """The status a new job is inserted with: the table's one edge out of 'no job yet'."""
    (created,) = (to for to, triggers in TRANSITIONS[None].items() if _T.CREATE in triggers)
    return created


def status_of(job: FineTuningJob) -> JobStatus:
    """The job's status as the enum (the column holds its plain string)."""
    return JobStatus(job.status)


def move(
    session: Session,
    job: FineTuningJob | str,
    to: JobStatus,
    *,
    trigger: Trigger,
    expect: JobStatus | Collection[JobStatus] | None = None,
    fence_attempt: int | None = None,
    **values: Any,
) -> bool:
    """Move the job to `to`, only if it is still in `expect` (default: the status the caller read) and, with
    `fence_attempt`, still owned by that attempt. False when it moved on meanwhile; the caller decides.

    An edge the table lacks raises IllegalTransition before the database is touched. With a loaded job, its
    attributes are updated to what was written, so the caller keeps reading the job it holds.
    """
    job_id = job if isinstance(job, str) else job.id
    if expect is None:
        if isinstance(job, str):
            raise TypeError("move() needs `expect` when given a job id")
        expect = status_of(job)
    froms = (JobStatus(expect),) if isinstance(expect, str) else tuple(JobStatus(s) for s in expect)
    for status in froms:
        check(job_id, status, to, trigger)
    query = update(FineTuningJob).where(FineTuningJob.id == job_id, FineTuningJob.status.in_([s.value for s in froms]))
    if fence_attempt is not None:
        query = query.where(FineTuningJob.attempt == fence_attempt)
    result = session.execute(query.values(status=to.value, **values).execution_options(synchronize_session=False))
    if not result.rowcount:  # type: ignore[attr-defined]  # reason: DML results are CursorResults at runtime
        return False
    if not isinstance(job, str):
        _sync(session, job, {"status": to, **values})
    return True


def _sync(session: Session, job: FineTuningJob, values: Mapping[str, Any]) -> None:
    """Mirror an UPDATE on the loaded job: plain values as committed state, SQL expressions reloaded on read."""
    for key, value in values.items():
        if isinstance(value, ClauseElement):
            session.expire(job, [key])
        else:
            set_committed_value(job, key, value)
