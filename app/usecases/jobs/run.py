"""Writes of one run of a job, each fenced on its attempt number (the fencing token).

A run claims the job with a conditional UPDATE that increments `attempt`; every later write first re-checks,
in the same transaction, that this attempt still owns the job. A stale run's write changes nothing and
raises LeaseLost, so the caller stops its training child at once.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.ids import new_id, now_ns, ns_to_s
from app.core.storage import BlobStore
from app.db.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob, JobAttempt, RegisteredModel
from app.db.session import Database
from app.usecases.files import store_internal_file
from app.usecases.jobs.checkpoints import latest_checkpoint
from app.usecases.jobs.evaluation import base_figures, base_message, message_data, summary_for_job, summary_message
from app.usecases.jobs.events import METRIC_KEYS, add_event, metrics_data, metrics_message, public_text
from app.usecases.jobs.names import checkpoint_name, model_name, project_name
from app.usecases.jobs.state import ACTIVE, JobStatus, Trigger, move
from engine.events import (
    BaseEvaluationEvent,
    CheckpointEvent,
    Figures,
    FinalEvaluationEvent,
    MessageEvent,
    MetricsEvent,
    ResultEvent,
    StartedEvent,
)


class LeaseLost(Exception):
    """Another attempt owns the job now (or it left the running states): stop and write nothing."""


@dataclass(frozen=True)
class Claim:
    job_id: str
    attempt: int
    resume_from: str | None
    resume_step: int | None


@dataclass(frozen=True)
class Flags:
    cancel: bool
    pause: bool
    owned: bool = True  # False: another attempt owns the job now, or it left the running states


def checkpoint_metrics(step: int, raw: Figures | None) -> dict[str, float | int]:
    """OpenAI's checkpoint metrics: the known keys only, numbers only, `step` an integer."""
    keys = [k for k in METRIC_KEYS if k not in ("step", "total_steps")]
    picked = {k: float(v) for k, v in (raw or {}).items() if k in keys and isinstance(v, int | float)}
    return {"step": step, **picked}


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def claim(db: Database, job_id: str, worker: str, lease_seconds: float) -> Claim | None:
    """queued -> running with attempt+1; None when the message was stale or a duplicate."""
    with db.session() as session:
        now = now_ns()
        if not move(
            session,
            job_id,
            JobStatus.RUNNING,
            trigger=Trigger.CLAIM,
            expect=JobStatus.QUEUED,
            attempt=FineTuningJob.attempt + 1,
            lease_owner=worker,
            lease_expires_ns=now + _ns(lease_seconds),
            heartbeat_ns=now,
            pause_requested=False,
        ):
            return None
        # Our UPDATE holds the row lock until commit, so the attempt read back is the one it wrote.
        attempt = int(session.scalar(select(FineTuningJob.attempt).where(FineTuningJob.id == job_id)) or 0)
        ckpt = latest_checkpoint(session, job_id)
        session.add(
            JobAttempt(
                job_id=job_id,
                attempt=attempt,
                worker=worker,
                worker_pid=os.getpid(),
                resumed_from_step=ckpt.step if ckpt else None,
                started_ns=now,
                last_seen_ns=now,
            )
        )
        if ckpt is None:
            add_event(session, job_id, "started", "Fine-tuning job started", attempt=attempt)
        else:
            add_event(
                session,
                job_id,
                "started",
                f"Fine-tuning job started from the checkpoint at step {ckpt.step} (run {attempt})",
                attempt=attempt,
                data={"resumed_from_step": ckpt.step},
            )
        return Claim(job_id, attempt, ckpt.path if ckpt else None, ckpt.step if ckpt else None)


def _fence(session: Session, job_id: str, attempt: int, lease_seconds: float | None = None) -> FineTuningJob:
    """Lock-and-check: the UPDATE takes the row lock, so no reaper can slip in before this commit."""
    now = now_ns()
    values: dict[str, Any] = {"heartbeat_ns": now}
    if lease_seconds is not None:
        values["lease_expires_ns"] = now + _ns(lease_seconds)
    moved = session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id, FineTuningJob.attempt == attempt, FineTuningJob.status.in_(ACTIVE))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount == 0:  # type: ignore[attr-defined]
        raise LeaseLost(f"{job_id}: attempt {attempt} no longer owns the job")
    job = session.get(FineTuningJob, job_id, populate_existing=True)
    assert job is not None
    return job


def _touch_attempt(session: Session, job_id: str, attempt: int, **values: Any) -> None:
    session.execute(
        update(JobAttempt)
        .where(JobAttempt.job_id == job_id, JobAttempt.attempt == attempt)
        .values(last_seen_ns=now_ns(), **values)
    )


def heartbeat(db: Database, job_id: str, attempt: int, lease_seconds: float) -> Flags:
    """Renew the lease and read the cancel/pause flags in the same statement's transaction."""
    with db.session() as session:
        job = _fence(session, job_id, attempt, lease_seconds)
        _touch_attempt(session, job_id, attempt)
        return Flags(cancel=job.cancel_requested, pause=job.pause_requested)


def read_flags(db: Database, job_id: str, attempt: int) -> Flags:
    """The cancel/pause flags without renewing anything: a cheap read the supervisor repeats between heartbeats."""
    with db.session() as session:
        row = session.execute(
            select(
                FineTuningJob.cancel_requested,
                FineTuningJob.pause_requested,
                FineTuningJob.attempt,
                FineTuningJob.status,
            ).where(FineTuningJob.id == job_id)
        ).first()
    if row is None:
        return Flags(cancel=False, pause=False, owned=False)
    cancel, pause, current, status = row
    return Flags(cancel=bool(cancel), pause=bool(pause), owned=current == attempt and status in ACTIVE)


def record_child(db: Database, job_id: str, attempt: int, pid: int) -> None:
    with db.session() as session:
        _fence(session, job_id, attempt)
        _touch_attempt(session, job_id, attempt, child_pid=pid)


def record_started(db: Database, job_id: str, attempt: int, event: StartedEvent) -> None:
    """The engine resolved its hyperparameters: show them as numbers from now on."""
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        job.resolved = dict(event.hyperparameters)
        job.total_steps = event.total_steps


def record_metrics(db: Database, job_id: str, attempt: int, event: MetricsEvent) -> None:
    """One training step: the job's progress, its estimated finish, and a metrics event."""
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        job.step = event.step
        _touch_attempt(session, job_id, attempt, last_step=job.step)
        run = session.get(JobAttempt, (job_id, attempt), populate_existing=True)
        assert run is not None
        if run.first_step is None:
            _touch_attempt(session, job_id, attempt, first_step=job.step)
        job.estimated_finish = _estimate_finish(run, job.step, job.total_steps)
        add_event(
            session,
            job_id,
            "metrics",
            metrics_message(event.to_wire()),
            attempt=attempt,
            data=metrics_data(event.to_wire()),
            event_type="metrics",
        )


def _estimate_finish(run: JobAttempt, step: int, total: int | None) -> int | None:
    """Unix time this run should end at its pace so far (start-up included, so it errs late)."""
    done = step - (run.resumed_from_step or 0)
    if not total or done <= 0:
        return None
    now = now_ns()
    return ns_to_s(now + (now - run.started_ns) * (total - step) // done)


def record_checkpoint(db: Database, job_id: str, attempt: int, event: CheckpointEvent) -> list[str] | None:
    """Insert the checkpoint row (and its snapshot model) only while this attempt owns the job.

    Returns the paths of the checkpoints the job keeps after retention (None when nothing changed), so the
    worker can delete the other checkpoint directories earlier runs left on disk.
    """
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        step = event.step
        if session.scalar(
            select(FineTuningCheckpoint.id).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step == step
            )
        ):
            return None  # a resumed run re-announcing a step an earlier attempt recorded
        name = checkpoint_name(job, project_name(session, job.project_id), step)
        metrics = checkpoint_metrics(step, event.metrics)
        session.add(_checkpoint_row(job, attempt, step, event.path, event.sha256, metrics, name))
        _register(session, name, job, "checkpoint", event.path, step)
        session.flush()
        kept = _apply_retention(session, job, _best_step(session, job_id, event))
        add_event(
            session,
            job_id,
            "checkpoint",
            f"Checkpoint created at step {step} with Snapshot ID: {name}",
            attempt=attempt,
            data={},
        )
        return kept


def _checkpoint_row(
    job: FineTuningJob, attempt: int, step: int, path: str, sha256: str, metrics: dict[str, Any], name: str
) -> FineTuningCheckpoint:
    return FineTuningCheckpoint(
        id=new_id("ftckpt_"),
        job_id=job.id,
        project_id=job.project_id,
        attempt=attempt,
        step=step,
        path=path,
        sha256=sha256,
        metrics=metrics,
        model_name=name,
        created_ns=now_ns(),
    )


def _best_step(session: Session, job_id: str, event: CheckpointEvent) -> int | None:
    """The step of the engine's best checkpoint (it says so); else the recorded one with the lowest valid_loss."""
    if "best_step" in event.model_fields_set:
        return event.best_step
    rows = session.scalars(select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)).all()
    scored = [(float(r.metrics["valid_loss"]), r.step) for r in rows if (r.metrics or {}).get("valid_loss") is not None]
    return min(scored)[1] if scored else None


def _apply_retention(session: Session, job: FineTuningJob, best_step: int | None) -> list[str]:
    """n_checkpoints over every run of the job, not just the current one: keep the newest n and the best.

    The newest always stays (a resumed run's starting point is the newest until it writes a newer one).
    Rows whose directory the engine already pruned go too, with their snapshot models. Returns kept paths.
    """
    rows = session.scalars(select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job.id)).all()
    present = sorted((r for r in rows if Path(r.path).is_dir()), key=lambda r: r.step, reverse=True)
    wanted = (job.resolved or {}).get("n_checkpoints")
    keep_n = max(1, wanted) if isinstance(wanted, int) else len(present)
    kept = {r.id for r in present[:keep_n]} | {r.id for r in present if r.step == best_step}
    for row in rows:
        if row.id in kept:
            continue
        model = session.get(RegisteredModel, row.model_name)
        if model is not None and model.deleted_ns is None:
            model.deleted_ns = now_ns()
        session.delete(row)
    return [r.path for r in present if r.id in kept]


def _register(session: Session, name: str, job: FineTuningJob, kind: str, artifact_dir: str, step: int | None) -> None:
    if session.get(RegisteredModel, name) is not None:
        return
    session.add(
        RegisteredModel(
            id=name,
            project_id=job.project_id,
            base_model=job.base_model,
            kind=kind,
            job_id=job.id,
            step=step,
            artifact_dir=artifact_dir,
            created_ns=now_ns(),
        )
    )


def _end_attempt(session: Session, job_id: str, attempt: int, outcome: str) -> None:
    # The column holds 40 characters; Postgres refuses longer text (a reason naming a long exception class).
    _touch_attempt(session, job_id, attempt, ended_ns=now_ns(), outcome=outcome[:40])
    session.execute(
        update(FineTuningJob)
        .where(FineTuningJob.id == job_id)
        .values(estimated_finish=None)
        .execution_options(synchronize_session=False)
    )


CSV_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)


def metrics_csv(session: Session, job_id: str, final: Mapping[str, float | int | None] | None = None) -> bytes:
    """The results file: one row per step over every run (a resumed run's rows replace the lost run's).

    Step 0 is the starting model's validation figures; `final` (the published step's metrics) adds the
    full-validation columns to its row.
    """
    rows: dict[int, dict[str, Any]] = {}
    base = session.scalar(
        select(FineTuningEvent.data)
        .where(FineTuningEvent.job_id == job_id, FineTuningEvent.kind == "evaluation")
        .order_by(FineTuningEvent.seq)
        .limit(1)
    )
    if base and base.get("stage") == "base" and base.get("valid_loss") is not None:
        rows[0] = {"valid_loss": base["valid_loss"], "valid_mean_token_accuracy": base.get("valid_mean_token_accuracy")}
    query = (
        select(FineTuningEvent.data)
        .where(FineTuningEvent.job_id == job_id, FineTuningEvent.type == "metrics")
        .order_by(FineTuningEvent.seq)
    )
    for data in session.scalars(query):
        if data and "step" in data:
            rows[int(data["step"])] = data
    final_step = final.get("step") if final else None
    if final and final_step is not None and int(final_step) in rows:
        rows[int(final_step)] = {**rows[int(final_step)], **final}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for step in sorted(rows):
        data = rows[step]
        values = [
            data.get("train_loss"),
            data.get("train_mean_token_accuracy"),
            data.get("valid_loss"),
            data.get("valid_mean_token_accuracy"),
            data.get("full_valid_loss"),
            data.get("full_valid_mean_token_accuracy"),
        ]
        writer.writerow([step, *("" if v is None else f"{v:.6g}" for v in values)])
    return out.getvalue().encode()


def _move_run(
    session: Session, job: FineTuningJob, attempt: int, to: JobStatus, trigger: Trigger, **values: Any
) -> JobStatus:
    """A run's own status change, fenced on its attempt; the caller's `_fence` holds the row, so it applies."""
    if not move(session, job, to, trigger=trigger, fence_attempt=attempt, lease_owner=None, **values):
        raise LeaseLost(f"{job.id}: attempt {attempt} no longer owns the job")
    return to


def _end_cancelled(session: Session, job: FineTuningJob, attempt: int) -> JobStatus:
    _move_run(session, job, attempt, JobStatus.CANCELLED, Trigger.FINISH, finished_ns=now_ns())
    _end_attempt(session, job.id, attempt, "cancelled")
    add_event(session, job.id, "cancelled", "The job was cancelled", attempt=attempt, data={})
    return JobStatus.CANCELLED


def _end_paused(session: Session, job: FineTuningJob, attempt: int) -> JobStatus:
    _move_run(session, job, attempt, JobStatus.PAUSED, Trigger.FINISH, pause_requested=False)
    _end_attempt(session, job.id, attempt, "paused")
    add_event(session, job.id, "paused", "Fine-tuning job paused", attempt=attempt, data={})
    return JobStatus.PAUSED


def _completed_while_stopping(session: Session, job: FineTuningJob, attempt: int) -> JobStatus | None:
    """The run completed after the API had answered `cancelling` or `pausing`: that answer stands.

    The final weights stay a recorded checkpoint (the engine checkpoints its last step); nothing is published,
    and a paused job's resume starts from that checkpoint and publishes then.
    """
    if job.status not in (JobStatus.CANCELLING, JobStatus.PAUSING):
        return None
    done = latest_checkpoint(session, job.id)
    if done is not None and done.step == job.step:
        kept = f"its final weights are kept as the checkpoint of step {done.step}"
    else:  # n_checkpoints=0: the run kept no checkpoint of its last step
        kept = f"the newest checkpoint is of step {done.step}" if done else "no checkpoint was kept"
    if job.status == JobStatus.CANCELLING:
        note = f"Training completed before the cancel took effect; {kept}, no model was published"
    else:
        note = f"Training completed before the pause took effect; {kept}. Resume the job to publish the model"
    add_event(session, job.id, "message", note, attempt=attempt, data={})
    if job.status == JobStatus.CANCELLING:
        return _end_cancelled(session, job, attempt)
    return _end_paused(session, job, attempt)


def finish_succeeded(db: Database, storage: BlobStore, job_id: str, attempt: int, result: ResultEvent) -> JobStatus:
    """Register the model, store the metrics CSV as a fine-tune-results file, mark the job succeeded.

    Returns the job's new status: `succeeded`, or `cancelled`/`paused` when such a request came first.
    """
    adapter_dir = result.adapter_dir or result.output_dir
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        stopped = _completed_while_stopping(session, job, attempt)
        if stopped is not None:
            return stopped
        name = model_name(job, project_name(session, job.project_id))
        # The published weights: the best checkpoint with validation data, else the last step.
        final_step = int(result.selected_step or job.step or job.total_steps or 0)
        final_metrics = checkpoint_metrics(final_step, result.metrics)
        results = store_internal_file(
            session,
            storage,
            job.project_id,
            "fine-tune-results",
            "step_metrics.csv",
            metrics_csv(session, job_id, final_metrics),
        )
        existing = session.scalar(
            select(FineTuningCheckpoint).where(
                FineTuningCheckpoint.job_id == job_id, FineTuningCheckpoint.step == final_step
            )
        )
        if existing is not None:
            existing.model_name = name  # OpenAI names the final checkpoint after the model itself
            existing.metrics = {**existing.metrics, **final_metrics}
        else:
            session.add(_checkpoint_row(job, attempt, final_step, adapter_dir, "", final_metrics, name))
        if result.evaluation is not None:
            job.evaluation = summary_for_job(result.evaluation)
        _register(session, name, job, "fine_tuned", adapter_dir, None)
        if result.hyperparameters:
            job.resolved = dict(result.hyperparameters)
        _move_run(
            session,
            job,
            attempt,
            JobStatus.SUCCEEDED,
            Trigger.FINISH,
            fine_tuned_model=name,
            trained_tokens=result.trained_tokens,
            result_files=[results.id],
            finished_ns=now_ns(),
        )
        _end_attempt(session, job_id, attempt, "succeeded")
        add_event(session, job_id, "model_created", f"New fine-tuned model created: {name}", attempt=attempt, data={})
        add_event(session, job_id, "succeeded", "The job has successfully completed", attempt=attempt, data={})
        return JobStatus.SUCCEEDED


def finish_paused(db: Database, job_id: str, attempt: int) -> JobStatus:
    """The run checkpointed and stopped; a cancel that came after the pause wins. Returns the new status.

    A pause nobody asked for (a stray SIGUSR1) is an interrupted run: it restarts from that checkpoint.
    """
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        if job.status == JobStatus.CANCELLING:
            return _end_cancelled(session, job, attempt)
        if job.status == JobStatus.PAUSING:
            return _end_paused(session, job, attempt)
        return requeue_or_fail(session, job, attempt, "paused without a pause request")


def finish_cancelled(db: Database, job_id: str, attempt: int) -> JobStatus:
    """The run stopped on a cancel. Returns the new status.

    Nobody asked to cancel when SIGTERM/SIGINT came from elsewhere (a worker shutting down, a Ctrl-C in the
    terminal): that is an interrupted run, which restarts from its checkpoint like a crashed one.
    """
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        if job.status == JobStatus.CANCELLING:  # the one status a cancel request leaves a run in
            return _end_cancelled(session, job, attempt)
        return requeue_or_fail(session, job, attempt, "training process was stopped by a signal")


def job_error(error: dict[str, Any]) -> dict[str, Any]:
    """The engine's failure in OpenAI's words: a dataset it cannot train on is an invalid_*_file error."""
    code = str(error.get("code") or "training_failed")
    message = public_text(str(error.get("message") or "Training failed."))
    param = error.get("param")
    if code in ("invalid_dataset", "invalid_spec") and message.startswith(("training_file", "validation_file")):
        param = "validation_file" if message.startswith("validation_file") else "training_file"
        kind = param.split("_")[0]
        code = f"invalid_{kind}_file"
        message = f"The job failed due to an invalid {kind} file. {message}"
    return {"code": code, "message": message, "param": param}


def finish_failed(db: Database, job_id: str, attempt: int, error: dict[str, Any]) -> JobStatus:
    """Mark the job failed with the run's error in OpenAI's words (a cancel answered earlier wins)."""
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        if job.status == JobStatus.CANCELLING:
            return _end_cancelled(session, job, attempt)
        wire = job_error(error)
        _move_run(session, job, attempt, JobStatus.FAILED, Trigger.FINISH, error=wire, finished_ns=now_ns())
        _end_attempt(session, job_id, attempt, "failed")
        add_event(
            session,
            job_id,
            "failed",
            str(wire["message"]),
            attempt=attempt,
            level="error",
            data={"code": wire["code"]},
        )
        return JobStatus.FAILED


def requeue_or_fail(session: Session, job: FineTuningJob, attempt: int, reason: str) -> JobStatus:
    """After a lost run: back to queued if attempts are left, else failed. Caller has fenced the row."""
    now = now_ns()
    _end_attempt(session, job.id, attempt, reason)
    if job.status == JobStatus.CANCELLING:
        _move_run(session, job, attempt, JobStatus.CANCELLED, Trigger.REQUEUE, finished_ns=now)
        add_event(session, job.id, "cancelled", "The job was cancelled", attempt=attempt, data={})
        return JobStatus.CANCELLED
    if job.status == JobStatus.PAUSING:
        _move_run(session, job, attempt, JobStatus.PAUSED, Trigger.REQUEUE, pause_requested=False)
        add_event(session, job.id, "paused", "Fine-tuning job paused", attempt=attempt, data={})
        return JobStatus.PAUSED
    if job.attempt < job.max_attempts:
        _move_run(session, job, attempt, JobStatus.QUEUED, Trigger.REQUEUE, enqueued_ns=now)
        ckpt = latest_checkpoint(session, job.id)
        where = f"from the checkpoint at step {ckpt.step}" if ckpt else "from the beginning"
        add_event(
            session,
            job.id,
            "restarted",
            f"Run {attempt} was interrupted ({reason}); the job will restart {where}",
            attempt=attempt,
            level="warn",
            data={},
        )
        return JobStatus.QUEUED
    wire = {
        "code": "worker_lost",
        "message": f"The job was interrupted {attempt} time(s) ({reason}) and will not be retried.",
        "param": None,
    }
    _move_run(session, job, attempt, JobStatus.FAILED, Trigger.REQUEUE, finished_ns=now, error=wire)
    add_event(
        session,
        job.id,
        "failed",
        str(wire["message"]),
        attempt=attempt,
        level="error",
        data={"code": "worker_lost"},
    )
    return JobStatus.FAILED


def child_crashed(db: Database, job_id: str, attempt: int, reason: str) -> JobStatus:
    """The training child died without a result: this run gives the job back right away."""
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        return requeue_or_fail(session, job, attempt, reason)


def record_message(db: Database, job_id: str, attempt: int, event: MessageEvent) -> None:
    """A free-text engine message (warnings, notes) shown in the job's events."""
    with db.session() as session:
        _fence(session, job_id, attempt)
        add_event(
            session,
            job_id,
            "message",
            event.message[:4000],
            attempt=attempt,
            level=event.level,
            data=message_data(event),
        )


def record_evaluation(
    db: Database, job_id: str, attempt: int, event: BaseEvaluationEvent | FinalEvaluationEvent
) -> None:
    """The base model's figures before training, then the base-vs-tuned summary: on the job and as events."""
    with db.session() as session:
        job = _fence(session, job_id, attempt)
        if isinstance(event, BaseEvaluationEvent):
            base = base_figures(event)
            job.evaluation = {"status": "running", "base": base}
            add_event(
                session,
                job_id,
                "evaluation",
                base_message(event),
                attempt=attempt,
                data={"stage": "base", **{k: v for k, v in base.items() if v is not None}},
            )
        else:
            job.evaluation = summary_for_job(event.evaluation)
            add_event(
                session,
                job_id,
                "evaluation",
                summary_message(event.evaluation),
                attempt=attempt,
                data={"stage": "final", "selected_step": event.evaluation.selected_step},
            )


def record_fenced_out(db: Database, job_id: str, attempt: int) -> None:
    """Attempt log only (not a job write): this run stopped because it no longer owned the job."""
    with db.session() as session:
        _touch_attempt(session, job_id, attempt, ended_ns=now_ns(), outcome="fenced_out")
