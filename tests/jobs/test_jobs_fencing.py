"""Fencing: once another attempt owns a job, every write of the stale attempt is refused and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.core.ids import new_id, now_ns
from app.core.storage import BlobStore
from app.db.migrate import upgrade
from app.db.models import FineTuningCheckpoint, FineTuningJob, RegisteredModel, StoredFile
from app.db.session import Database
from app.usecases.jobs import run as jobs_run
from app.usecases.jobs.reaper import reap_expired
from app.usecases.jobs.run import LeaseLost
from app.usecases.keys import get_or_create_project
from engine.events import CheckpointEvent, MetricsEvent, ResultEvent, StartedEvent
from tests.conftest import _fresh_postgres


@pytest.fixture
def db(job_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if job_backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'fence.db'}"
        upgrade(url)
        handle = Database(url)
        yield handle
        handle.dispose()
        return
    for url in _fresh_postgres(request.getfixturevalue("postgres_url")):
        upgrade(url)
        handle = Database(url)
        yield handle
        handle.dispose()


def _queued_job(db: Database) -> str:
    with db.session() as session:
        project = get_or_create_project(session, "fence")
        job = FineTuningJob(
            id=new_id("ftjob-"),
            project_id=project.id,
            status="queued",
            model="tiny-chat",
            base_model="tiny-chat",
            training_file="file-x",
            method={"type": "supervised", "supervised": {"hyperparameters": {}}},
            seed=1,
            integrations=[],
            result_files=[],
            created_ns=now_ns(),
            attempt=0,
            max_attempts=3,
            cancel_requested=False,
            pause_requested=False,
            enqueued_ns=now_ns(),
        )
        session.add(job)
        return job.id


def _count(db: Database, model: type) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_stale_attempt_writes_are_refused(db: Database, tmp_path: Path) -> None:
    job_id = _queued_job(db)
    stale = jobs_run.claim(db, job_id, "worker-a", lease_seconds=0.05)
    assert stale is not None and stale.attempt == 1
    assert jobs_run.claim(db, job_id, "worker-b", lease_seconds=30) is None  # duplicate doorbell
    time.sleep(0.2)
    assert reap_expired(db).requeued == [job_id]
    owner = jobs_run.claim(db, job_id, "worker-b", lease_seconds=30)
    assert owner is not None and owner.attempt == 2

    checkpoint = CheckpointEvent(step=4, path=str(tmp_path), sha256="0" * 64, metrics={})
    metrics = MetricsEvent(step=5, total_steps=10, train_loss=1.0)
    result = ResultEvent(status="succeeded", adapter_dir=str(tmp_path), trained_tokens=10)
    storage = BlobStore(tmp_path / "blobs")
    refused = [
        lambda: jobs_run.heartbeat(db, job_id, 1, 30),
        lambda: jobs_run.record_checkpoint(db, job_id, 1, checkpoint),
        lambda: jobs_run.record_metrics(db, job_id, 1, metrics),
        lambda: jobs_run.record_started(
            db, job_id, 1, StartedEvent(hyperparameters={"n_epochs": 9}, total_steps=9, n_examples=1)
        ),
        lambda: jobs_run.finish_succeeded(db, storage, job_id, 1, result),
        lambda: jobs_run.finish_failed(db, job_id, 1, {"code": "x", "message": "y"}),
        lambda: jobs_run.finish_paused(db, job_id, 1),
        lambda: jobs_run.finish_cancelled(db, job_id, 1),
        lambda: jobs_run.child_crashed(db, job_id, 1, "test"),
    ]
    for write in refused:
        with pytest.raises(LeaseLost):
            write()
    with db.session() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None
        assert (job.status, job.attempt, job.resolved, job.fine_tuned_model) == ("running", 2, None, None)
    assert _count(db, FineTuningCheckpoint) == _count(db, RegisteredModel) == _count(db, StoredFile) == 0

    jobs_run.record_checkpoint(db, job_id, 2, checkpoint)  # the owner still writes
    assert _count(db, FineTuningCheckpoint) == 1
    jobs_run.finish_succeeded(db, storage, job_id, 2, result)
    with pytest.raises(LeaseLost):
        jobs_run.heartbeat(db, job_id, 2, 30)  # a finished job has no lease left to renew


def test_reaper_fails_a_job_after_max_attempts(db: Database) -> None:
    job_id = _queued_job(db)
    for attempt in (1, 2, 3):
        claimed = jobs_run.claim(db, job_id, "w", lease_seconds=0.01)
        assert claimed is not None and claimed.attempt == attempt
        time.sleep(0.05)
        reap_expired(db)
    with db.session() as session:
        job = session.get(FineTuningJob, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert job.error["code"] == "worker_lost"
