"""Checkpoints across the runs of one job, on both backends: `n_checkpoints` holds over a resume, and no event
or error a tenant can read names a server path (a failed resume included)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server
from tests.jobs.conftest import MakeServer
from tests.jobs.helpers import attempts, chat_lines, checkpoints, database, tiny_method, wait_for, wait_until

KEEP = 2
# A '/' that starts a word and is followed by a path segment: what a server path looks like in text.
SERVER_PATH = re.compile(r"(?<![\w.:/~-])/[\w.-]+")


@pytest.fixture(scope="module")
def server(make_server: MakeServer) -> Server:
    return make_server()


def _paused_mid_run(server: Server, project: str, *, at_step: int) -> str:
    """A job (with validation data, so there is a best checkpoint) paused by the API once past `at_step`."""
    client = server.openai(project)
    db = database(server)
    training = client.files.create(file=("t.jsonl", chat_lines(24)), purpose="fine-tune").id
    valid = client.files.create(file=("v.jsonl", chat_lines(10, "v")), purpose="fine-tune").id
    job_id = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training,
        validation_file=valid,
        method=tiny_method(every=2, n_checkpoints=KEEP),
    ).id
    wait_until(
        lambda: [a for a in attempts(db, job_id) if a.last_step and a.last_step >= at_step],
        timeout=240,
        what=f"step {at_step}",
    )
    assert client.fine_tuning.jobs.pause(job_id).status == "pausing"
    wait_for(server, project, job_id, ("paused",))
    return job_id


def _tenant_texts(server: Server, project: str, job_id: str) -> list[str]:
    """Everything about the job a tenant can read as text: event messages and data, and the job's error."""
    client = server.openai(project)
    texts: list[str] = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=1000):
        texts += [event.message, json.dumps(event.data or {})]
    job = client.fine_tuning.jobs.retrieve(job_id)
    if job.error is not None:
        texts.append(job.error.message or "")
    return texts


def _leaks(server: Server, texts: list[str]) -> list[str]:
    return [t for t in texts if str(server.data_dir) in t or "/jobs/" in t or SERVER_PATH.search(t)]


def test_retention_covers_every_run_of_the_job_and_no_event_names_a_path(server: Server) -> None:
    project = "retention"
    client = server.openai(project)
    db = database(server)
    job_id = _paused_mid_run(server, project, at_step=8)
    paused_with = [c.step for c in checkpoints(db, job_id)]
    assert client.fine_tuning.jobs.resume(job_id).status == "queued"
    job = wait_for(server, project, job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", job.error
    runs = attempts(db, job_id)
    assert len(runs) == 2 and runs[1].resumed_from_step == max(paused_with)

    listed = list(client.fine_tuning.jobs.checkpoints.list(job_id, limit=100))
    steps = sorted(c.step_number for c in listed)
    summary: dict[str, Any] = job.evaluation  # type: ignore[attr-defined]
    best = summary["selected_step"]
    # The newest KEEP over both runs, plus the best one when it is older (it is the published model).
    assert 24 in steps and best in steps and len(set(steps) - {best}) <= KEEP, steps
    assert [c for c in listed if c.fine_tuned_model_checkpoint == job.fine_tuned_model][0].step_number == best
    rows = checkpoints(db, job_id)
    assert all(Path(r.path).is_dir() for r in rows)
    # On disk too: no checkpoint folder of either run outlives its row.
    on_disk = {p.resolve() for p in (server.data_dir / "jobs" / job_id).glob("run-*/output/checkpoints/*step-*")}
    assert on_disk == {Path(r.path).resolve() for r in rows}, (sorted(map(str, on_disk)), [r.path for r in rows])
    listed_models = {m.id for m in client.models.list()}
    assert {c.fine_tuned_model_checkpoint for c in listed} <= listed_models
    assert not [m for m in listed_models if ":ckpt-step-" in m and m.split("-")[-1] not in map(str, steps)]

    texts = _tenant_texts(server, project, job_id)
    assert any("from the checkpoint at step" in t for t in texts)  # the resume is described, by step
    assert _leaks(server, texts) == []


def test_a_failed_resume_names_no_server_path(server: Server) -> None:
    project = "no-paths"
    client = server.openai(project)
    db = database(server)
    job_id = _paused_mid_run(server, project, at_step=3)
    newest = max(checkpoints(db, job_id), key=lambda c: c.step)
    with (Path(newest.path) / "adapter_model.safetensors").open("r+b") as fh:  # bit rot on disk
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    assert client.fine_tuning.jobs.resume(job_id).status == "queued"
    job = wait_for(server, project, job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "failed" and job.error is not None and job.error.code == "invalid_checkpoint", job.error
    assert "sha256" in (job.error.message or "")  # still says what is wrong
    texts = _tenant_texts(server, project, job_id)
    assert _leaks(server, texts) == [], _leaks(server, texts)
