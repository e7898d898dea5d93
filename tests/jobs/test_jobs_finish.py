"""How a run's end becomes the job's status, and checkpoint retention over runs: the use cases on a real database
(both backends), without a training process, so every interleaving is exact."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.storage import BlobStore
from app.db.migrate import upgrade
from app.db.models import FineTuningCheckpoint, FineTuningJob, RegisteredModel
from app.db.session import Database
from app.usecases.jobs import control
from app.usecases.jobs import run as jobs_run
from app.usecases.jobs.events import kinds
from engine.events import CheckpointEvent, ResultEvent, StartedEvent
from tests.conftest import _fresh_postgres
from tests.jobs.test_jobs_fencing import _queued_job
from worker.retention import prune_earlier_runs

RESULT = ResultEvent(status="succeeded", adapter_dir="", trained_tokens=10)


@pytest.fixture
def db(job_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database of this run's backend."""
    urls = [f"sqlite:///{tmp_path / 'finish.db'}"] if job_backend == "sqlite" else None
    for url in urls or _fresh_postgres(request.getfixturevalue("postgres_url")):
        upgrade(url)
        handle = Database(url)
        yield handle
        handle.dispose()


def _running(db: Database) -> tuple[str, str]:
    """(job id, project id) of a job one run has claimed."""
    job_id = _queued_job(db)
    assert jobs_run.claim(db, job_id, "w", lease_seconds=60) is not None
    with db.session() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        return job_id, job.project_id


def _status(db: Database, job_id: str) -> FineTuningJob:
    with db.session() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        return job


def _ask(db: Database, action: str, job_id: str, project_id: str) -> str:
    use_case: Callable[..., FineTuningJob] = {"cancel": control.cancel_job, "pause": control.pause_job}[action]
    with db.session() as session:
        return use_case(session, project_id, job_id).status


@pytest.mark.parametrize(
    ("action", "answered", "final"), [("cancel", "cancelling", "cancelled"), ("pause", "pausing", "paused")]
)
def test_a_run_that_completes_after_the_api_answered_keeps_that_answer(
    db: Database, tmp_path: Path, action: str, answered: str, final: str
) -> None:
    job_id, project_id = _running(db)
    ckpt = tmp_path / "step-10"
    ckpt.mkdir()
    event = CheckpointEvent(step=10, path=str(ckpt), sha256="0" * 64, metrics={})
    jobs_run.record_checkpoint(db, job_id, 1, event)  # the final step, as the engine always writes it
    assert _ask(db, action, job_id, project_id) == answered
    result = RESULT.model_copy(update={"adapter_dir": str(ckpt)})
    assert jobs_run.finish_succeeded(db, BlobStore(tmp_path / "blobs"), job_id, 1, result) == final
    job = _status(db, job_id)
    assert (job.status, job.fine_tuned_model, job.result_files) == (final, None, [])
    with db.session() as session:
        assert session.scalars(select(RegisteredModel.kind).where(RegisteredModel.job_id == job_id)).all() == [
            "checkpoint"
        ]
        assert kinds(session, job_id)[-1] == final
    if action == "pause":  # the resume starts from the completed run's final checkpoint
        with db.session() as session:
            assert control.resume_job(session, project_id, job_id).status == "queued"
        claimed = jobs_run.claim(db, job_id, "w", lease_seconds=60)
        assert claimed is not None and (claimed.resume_from, claimed.resume_step) == (str(ckpt), 10)


def test_a_cancel_after_a_pause_wins_and_a_failure_while_cancelling_is_a_cancel(db: Database) -> None:
    job_id, project_id = _running(db)
    assert _ask(db, "pause", job_id, project_id) == "pausing"
    assert _ask(db, "cancel", job_id, project_id) == "cancelling"
    assert jobs_run.finish_paused(db, job_id, 1) == "cancelled"  # the engine had already checkpointed and stopped
    job_id, project_id = _running(db)
    assert _ask(db, "cancel", job_id, project_id) == "cancelling"
    assert jobs_run.finish_failed(db, job_id, 1, {"code": "nan_loss", "message": "x"}) == "cancelled"


def test_a_stop_nobody_asked_for_restarts_the_job(db: Database) -> None:
    """SIGTERM from a worker shutting down (or Ctrl-C) makes the engine report `cancelled`: that is no cancel."""
    job_id, _ = _running(db)
    assert jobs_run.finish_cancelled(db, job_id, 1) == "queued"
    job = _status(db, job_id)
    assert job.status == "queued" and job.finished_ns is None and not job.cancel_requested


def test_retention_spans_runs_and_keeps_the_best_and_the_resume_point(db: Database, tmp_path: Path) -> None:
    job_id, _ = _running(db)
    job_dir = tmp_path / "jobs" / job_id

    def checkpoint(attempt: int, step: int, valid_loss: float, best_step: int) -> list[str] | None:
        path = job_dir / f"run-{attempt}" / "output" / "checkpoints" / f"step-{step}"
        path.mkdir(parents=True)
        event = CheckpointEvent(
            step=step, path=str(path), sha256="0" * 64, metrics={"valid_loss": valid_loss}, best_step=best_step
        )
        return jobs_run.record_checkpoint(db, job_id, attempt, event)

    def recorded() -> list[int]:
        with db.session() as session:
            query = select(FineTuningCheckpoint.step).where(FineTuningCheckpoint.job_id == job_id)
            return sorted(session.scalars(query))

    jobs_run.record_started(
        db, job_id, 1, StartedEvent(hyperparameters={"n_checkpoints": 2}, total_steps=20, n_examples=40)
    )
    checkpoint(1, 2, 0.5, best_step=2)
    checkpoint(1, 4, 0.9, best_step=2)
    checkpoint(1, 6, 0.8, best_step=2)
    assert recorded() == [2, 4, 6]  # newest two, and the best
    leftover = job_dir / "run-1" / "output" / "checkpoints" / "step-7"  # written, never recorded (the run died)
    leftover.mkdir()
    assert jobs_run.child_crashed(db, job_id, 1, "test") == "queued"

    resumed = jobs_run.claim(db, job_id, "w", lease_seconds=60)
    assert resumed is not None and resumed.resume_step == 6
    jobs_run.record_started(
        db, job_id, 2, StartedEvent(hyperparameters={"n_checkpoints": 2}, total_steps=20, n_examples=40)
    )
    run2 = job_dir / "run-2"
    kept = checkpoint(2, 8, 0.7, best_step=2)
    assert kept is not None and recorded() == [2, 6, 8]  # the resume point stays until a second newer one exists
    prune_earlier_runs(job_dir, run2, kept)
    assert sorted(p.name for p in (job_dir / "run-1" / "output" / "checkpoints").iterdir()) == ["step-2", "step-6"]
    kept = checkpoint(2, 10, 0.6, best_step=2)
    assert kept is not None and recorded() == [2, 8, 10]
    prune_earlier_runs(job_dir, run2, kept)
    assert sorted(p.name for p in (job_dir / "run-1" / "output" / "checkpoints").iterdir()) == ["step-2"]
    with db.session() as session:
        query = select(RegisteredModel.step).where(
            RegisteredModel.job_id == job_id, RegisteredModel.deleted_ns.is_not(None)
        )
        retired = session.scalars(query).all()
        assert sorted(s for s in retired if s is not None) == [4, 6]
