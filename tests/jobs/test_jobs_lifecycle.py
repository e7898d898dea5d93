"""Cancel (queued and running), pause and resume through the SDK, on both backends."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Server
from tests.jobs.conftest import MakeServer
from tests.jobs.helpers import attempts, chat_lines, checkpoints, database, tiny_method, wait_for, wait_until


@pytest.fixture(scope="module")
def server(make_server: MakeServer) -> Server:
    return make_server()


def _long_job(server: Server, project: str) -> str:
    client = server.openai(project)
    file_id = client.files.create(file=("t.jsonl", chat_lines(30)), purpose="fine-tune").id
    return client.fine_tuning.jobs.create(
        model="tiny-chat", training_file=file_id, method=tiny_method(n_epochs=2, every=4)
    ).id


def test_cancel_queued_and_running_jobs(server: Server) -> None:
    client = server.openai("cancel")
    db = database(server)
    running = _long_job(server, "cancel")
    waiting = _long_job(server, "cancel")
    wait_until(lambda: [a for a in attempts(db, running) if a.last_step], what="the first job to train")
    assert client.fine_tuning.jobs.retrieve(waiting).status == "queued"  # one worker slot, taken

    cancelled = client.fine_tuning.jobs.cancel(waiting)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None

    answer = client.fine_tuning.jobs.cancel(running)
    assert answer.status in ("cancelling", "cancelled")
    job = wait_for(server, "cancel", running, ("cancelled", "succeeded", "failed"))
    assert job.status == "cancelled" and job.fine_tuned_model is None and job.result_files == []
    (run,) = attempts(db, running)
    assert run.outcome == "cancelled" and run.ended_ns is not None
    messages = [e.message for e in client.fine_tuning.jobs.list_events(running, limit=100)]
    assert messages[0] == "The job was cancelled"

    time.sleep(4)  # longer than the doorbell re-send period: a cancelled queued job never starts
    assert attempts(db, waiting) == [] and client.fine_tuning.jobs.retrieve(waiting).status == "cancelled"


def test_pause_then_resume_continues_from_the_checkpoint(server: Server) -> None:
    client = server.openai("pause")
    db = database(server)
    job_id = _long_job(server, "pause")
    wait_until(lambda: [a for a in attempts(db, job_id) if a.last_step and a.last_step >= 3], what="step 3")
    running = client.fine_tuning.jobs.retrieve(job_id)
    assert running.status == "running" and running.estimated_finish is not None
    assert running.estimated_finish >= running.created_at
    answer = client.fine_tuning.jobs.pause(job_id)
    assert answer.status in ("pausing", "paused")
    wait_for(server, "pause", job_id, ("paused",))
    paused_step = max(c.step for c in checkpoints(db, job_id))
    (first,) = attempts(db, job_id)
    assert first.outcome == "paused" and first.last_step == paused_step

    resumed = client.fine_tuning.jobs.resume(job_id)
    assert resumed.status == "queued"
    job = wait_for(server, "pause", job_id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    assert job.estimated_finish is None
    runs = attempts(db, job_id)
    assert [r.attempt for r in runs] == [1, 2]
    assert runs[1].resumed_from_step == paused_step and runs[1].first_step == paused_step + 1
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job_id, limit=200)][::-1]
    assert "Fine-tuning job paused" in messages and "Fine-tuning job resumed" in messages
    assert f"Fine-tuning job started from the checkpoint at step {paused_step} (run 2)" in messages
