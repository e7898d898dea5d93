"""Run one job: claim it, start the engine child, relay its events under the lease, finish the job.

Every database write goes through a fenced use case; LeaseLost means another run owns the job now, so the
child is killed at once and nothing more is written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from app.core.settings import Settings
from app.db.models import FineTuningJob, StoredFile
from app.usecases.jobs import run as jobs_run
from app.usecases.jobs.request import HPARAM_EXTENSIONS, OPENAI_HPARAMS, TUNING_EXTENSIONS
from app.usecases.jobs.run import Claim, Flags, LeaseLost
from app.usecases.jobs.state import JobStatus
from engine.events import (
    BaseEvaluationEvent,
    CheckpointEvent,
    EngineEvent,
    FinalEvaluationEvent,
    MessageEvent,
    MetricsEvent,
    ResultEvent,
    StartedEvent,
)
from worker.child import TrainingChild, engine_command
from worker.db_retry import retry_through_outage
from worker.retention import prune_earlier_runs
from worker.runtime import Runtime

log = logging.getLogger("tuneforge.worker")


def run_dir(rt: Runtime, job_id: str, attempt: int) -> Path:
    """Each run writes under its own folder, so a stale run can never overwrite a newer run's files."""
    return rt.settings.data_dir / "jobs" / job_id / f"run-{attempt}"


class MissingInput(Exception):
    """A file the job trains on was deleted (row or bytes) after the job was created."""

    def __init__(self, param: str, file_id: str) -> None:
        super().__init__(f"{param} {file_id} is gone")
        self.param, self.file_id = param, file_id

    def error(self) -> dict[str, Any]:
        """The job's error, as validation would have worded it."""
        kind = "validation" if self.param == "validation_file" else "training"
        return {
            "code": f"invalid_{kind}_file",
            "message": f"The job failed due to an invalid {kind} file. File {self.file_id} no longer exists.",
            "param": self.param,
        }


def build_spec(rt: Runtime, claim: Claim) -> dict[str, Any]:
    """The engine's TrainSpec (engine/spec.py) for this run, from the job row; MissingInput if a file is gone."""
    with rt.db.session() as session:
        job = session.get(FineTuningJob, claim.job_id)
        assert job is not None

        def path_of(file_id: str | None, param: str) -> str | None:
            if file_id is None:
                return None
            row = session.get(StoredFile, file_id)
            path = rt.storage.path_for(row.storage_key) if row is not None else None
            if path is None or not path.is_file():
                raise MissingInput(param, file_id)
            return str(path)

        method_type = str(job.method["type"])
        requested: dict[str, Any] = dict(job.method[method_type].get("hyperparameters") or {})
        keys = (*OPENAI_HPARAMS, "beta", *HPARAM_EXTENSIONS)
        hyper = {k: v for k, v in requested.items() if k in keys}
        tuning = {TUNING_EXTENSIONS[k]: v for k, v in requested.items() if k in TUNING_EXTENSIONS}
        return {
            "base_model": rt.settings.base_model_map.get(job.base_model, job.base_model),
            "base_model_name": rt.settings.public_base_model_name(job.base_model),
            "data_dir": str(rt.settings.data_dir),
            "training_file": path_of(job.training_file, "training_file"),
            "validation_file": path_of(job.validation_file, "validation_file"),
            "output_dir": str(run_dir(rt, job.id, claim.attempt) / "output"),
            "method": method_type,
            "hyperparameters": hyper,
            "tuning": tuning,
            "seed": job.seed,
            "resume_from": claim.resume_from,
            "init_from": job.init_from,
            "evaluation": evaluation_spec(rt.settings),
        }


def evaluation_spec(settings: Settings) -> dict[str, Any]:
    """The engine's EvalSpec from the operator's settings."""
    return {
        "enabled": settings.eval_enabled,
        "valid_examples": settings.eval_valid_examples,
        "generation_examples": settings.eval_generation_examples,
        "generation_max_tokens": settings.eval_generation_max_tokens,
        "generation_max_seconds": settings.eval_generation_max_seconds,
        "probe_tokens": settings.eval_probe_tokens,
        "probe_per_skill": settings.eval_probe_per_skill,
        "forgetting_loss_increase": settings.forgetting_loss_increase,
        "forgetting_skill_drop": settings.forgetting_skill_drop,
        "overfitting_patience": settings.overfitting_patience,
    }


class Supervisor:
    """Relays one child's events and keeps the lease; stops the child when the lease is lost."""

    def __init__(self, rt: Runtime, claim: Claim) -> None:
        self.rt = rt
        self.claim = claim
        self.result: ResultEvent | None = None
        self.requested: set[str] = set()
        # Until when this run may act as the job's owner without having renewed its lease.
        self.lease_deadline = time.monotonic() + rt.settings.lease_seconds

    def _owned_until(self) -> float:
        return self.lease_deadline

    def relay_event(self, event: EngineEvent) -> None:
        """Record one engine event; a database outage delays it (the child waits on its pipe), never drops it."""
        retry_through_outage(lambda: self._handle(event), self._owned_until, f"{self.claim.job_id} event")

    def _handle(self, event: EngineEvent) -> None:
        db, job_id, attempt = self.rt.db, self.claim.job_id, self.claim.attempt
        if isinstance(event, StartedEvent):
            jobs_run.record_started(db, job_id, attempt, event)
        elif isinstance(event, MetricsEvent):
            jobs_run.record_metrics(db, job_id, attempt, event)
        elif isinstance(event, CheckpointEvent):
            kept = jobs_run.record_checkpoint(db, job_id, attempt, event)
            if kept is not None:  # after the commit: rows go first, so no row ever names a deleted directory
                folder = run_dir(self.rt, job_id, attempt)
                prune_earlier_runs(folder.parent, folder, kept)
        elif isinstance(event, MessageEvent):
            jobs_run.record_message(db, job_id, attempt, event)
        elif isinstance(event, BaseEvaluationEvent | FinalEvaluationEvent):
            jobs_run.record_evaluation(db, job_id, attempt, event)
        elif isinstance(event, ResultEvent):
            self.result = event

    def _heartbeat(self, child: TrainingChild, lease_deadline: float) -> float:
        settings = self.rt.settings
        try:
            flags = jobs_run.heartbeat(self.rt.db, self.claim.job_id, self.claim.attempt, settings.lease_seconds)
        except LeaseLost:
            raise
        except Exception as exc:  # database unreachable: keep going until our own lease would have expired
            log.warning("heartbeat of %s failed: %s", self.claim.job_id, exc)
            if time.monotonic() > lease_deadline:
                raise LeaseLost("lease expired while the database was unreachable") from exc
            return lease_deadline
        self._forward(child, flags)
        return time.monotonic() + settings.lease_seconds

    def _forward(self, child: TrainingChild, flags: Flags) -> None:
        """Pass a new cancel or pause request on to the engine (cancel wins; each is sent once)."""
        if flags.cancel and "cancel" not in self.requested:
            self.requested.add("cancel")
            child.request("cancel")
        elif flags.pause and "pause" not in self.requested and "cancel" not in self.requested:
            self.requested.add("pause")
            child.request("pause")

    def _poll_control(self, child: TrainingChild) -> Flags | None:
        """The cheap read between heartbeats, so a cancel or pause reaches the engine well within a second.

        None when the read failed: the database may be down, and the heartbeat, not the poll, handles that.
        """
        try:
            flags = jobs_run.read_flags(self.rt.db, self.claim.job_id, self.claim.attempt)
        except Exception as exc:
            log.debug("control poll of %s failed: %s", self.claim.job_id, exc)
            return None
        self._forward(child, flags)
        return flags

    def relay(self, child: TrainingChild) -> int:
        """Relay events until the stream closes and the process is gone, heartbeating all the while."""
        settings = self.rt.settings
        self.lease_deadline = time.monotonic() + settings.lease_seconds
        poll_every = min(settings.control_poll_seconds, settings.heartbeat_seconds)
        next_beat = next_poll = time.monotonic()
        stream_open = True
        while stream_open or not child.exited(0):
            now = time.monotonic()
            if now >= next_beat:
                self.lease_deadline = self._heartbeat(child, self.lease_deadline)
                next_beat = time.monotonic() + settings.heartbeat_seconds
                next_poll = time.monotonic() + poll_every
            elif now >= next_poll:
                flags = self._poll_control(child)
                next_poll = time.monotonic() + poll_every if flags is not None else next_beat
                if flags is not None and not flags.owned:
                    next_beat = next_poll = time.monotonic()  # another run owns the job: the heartbeat stops us
            wait = max(0.02, min(next_beat, next_poll) - time.monotonic())
            if not stream_open:
                child.exited(wait)  # teardown after the last event can be slow: keep the lease meanwhile
                continue
            for event in child.next_events(wait):
                if event is None:
                    stream_open = False
                    break
                self.relay_event(event)
        return child.wait()

    def finish(self, code: int) -> str:
        """End the job as the run ended; through a database outage, retried while the lease holds."""
        return retry_through_outage(lambda: self._finish(code), self._owned_until, f"{self.claim.job_id} finish")

    def _finish(self, code: int) -> str:
        db, job_id, attempt = self.rt.db, self.claim.job_id, self.claim.attempt
        result = self.result
        ended = result.status if result is not None else None  # how the engine says the run ended
        # Each use case returns the job's new status: a cancel or pause the API answered first wins over
        # how the run ended, and a stop nobody asked for re-queues like a crash.
        status: JobStatus
        if ended == "succeeded":
            assert result is not None
            status = jobs_run.finish_succeeded(db, self.rt.storage, job_id, attempt, result)
        elif ended == "paused":
            status = jobs_run.finish_paused(db, job_id, attempt)
        elif ended == "cancelled" or (ended is None and "cancel" in self.requested):
            status = jobs_run.finish_cancelled(db, job_id, attempt)
        elif ended == "failed":
            error = result.error if result is not None else None
            status = jobs_run.finish_failed(db, job_id, attempt, error.model_dump() if error is not None else {})
        else:
            status = jobs_run.child_crashed(db, job_id, attempt, f"training process ended with code {code}")
        if status == JobStatus.QUEUED:
            self.rt.doorbell.ring([job_id])
        return str(status)


def run_job(rt: Runtime, job_id: str) -> str:
    """The task body; returns what happened (for logs and tests)."""
    claim = jobs_run.claim(rt.db, job_id, rt.worker_name(), rt.settings.lease_seconds)
    if claim is None:
        return "skipped"  # duplicate or stale doorbell: the job is not queued
    folder = run_dir(rt, job_id, claim.attempt)
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    try:
        spec = build_spec(rt, claim)
    except MissingInput as gone:  # deleted after validation: fail now, never run on into a lost lease
        log.warning("job %s run %s: %s", job_id, claim.attempt, gone)
        return jobs_run.finish_failed(rt.db, job_id, claim.attempt, gone.error())
    except Exception as exc:  # give the job back at once rather than let its lease run out
        log.exception("job %s run %s could not start", job_id, claim.attempt)
        status = jobs_run.child_crashed(rt.db, job_id, claim.attempt, f"the run could not start ({type(exc).__name__})")
        if status == JobStatus.QUEUED:
            rt.doorbell.ring([job_id])
        return status
    spec_path.write_text(json.dumps(spec, indent=1))
    child = TrainingChild(
        engine_command(rt.settings.engine_command), spec_path, folder / "control", folder / "engine.log"
    )
    supervisor = Supervisor(rt, claim)
    try:
        retry_through_outage(
            lambda: jobs_run.record_child(rt.db, job_id, claim.attempt, child.pid),
            supervisor._owned_until,
            f"{job_id} start",
        )
        code = supervisor.relay(child)
        outcome = supervisor.finish(code)
    except LeaseLost as lost:
        log.warning("job %s run %s: %s; stopping the training process", job_id, claim.attempt, lost)
        child.kill()
        child.wait()
        try:
            jobs_run.record_fenced_out(rt.db, job_id, claim.attempt)
        except Exception:  # the database may be the reason the lease was lost; the attempt log can wait
            log.warning("could not note the end of run %s of %s in the attempt log", claim.attempt, job_id)
        return "fenced_out"
    except BaseException:
        child.kill()
        child.wait()
        raise
    log.info("job %s run %s: %s", job_id, claim.attempt, outcome)
    return outcome
