"""Crash recovery: kill -9 of the training child or of the worker mid-job, on both backends.

The job resumes from its last recorded checkpoint, succeeds, ends with the same adapter as an uninterrupted
run, and its runs never overlap. "Same" is bitwise in almost every trial; CPU kernels are not bitwise
reproducible across processes (two uninterrupted runs of one spec have been seen to differ in the last bits),
so the check allows a difference far below what one optimizer step changes (reliability.md, recipe R1).
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from app.db.models import FineTuningJob
from app.usecases.jobs.events import kinds
from app.usecases.jobs.reaper import reap_expired
from tests.conftest import Server
from tests.jobs.conftest import MakeServer
from tests.jobs.helpers import (
    adapter_difference,
    adapter_dir,
    alive,
    attempts,
    chat_lines,
    checkpoints,
    database,
    no_overlap,
    tiny_method,
    wait_for,
    wait_until,
)

EXAMPLES = 30  # one step per example, 2 epochs: 60 steps, a checkpoint every 4


def _submit(server: Server, project: str) -> str:
    client = server.openai(project)
    file_id = client.files.create(file=("t.jsonl", chat_lines(EXAMPLES)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-chat", training_file=file_id, seed=1234, method=tiny_method(n_epochs=2, every=4)
    )
    return job.id


@pytest.fixture(scope="module")
def server(make_server: MakeServer) -> Server:
    return make_server()


TOLERANCE = 1e-4  # one learning-rate-sized step moves LoRA weights by ~1e-3


@pytest.fixture(scope="module")
def golden(server: Server) -> Path:
    """Adapter of an uninterrupted run of the same job (same data, seed and hyperparameters)."""
    job_id = _submit(server, "golden")
    job = wait_for(server, "golden", job_id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    return adapter_dir(database(server), job.fine_tuned_model)


def kill_trial(server: Server, golden: Path, victim: str, project: str, after_step: int = 5) -> dict[str, Any]:
    """Submit, wait for a recorded checkpoint, kill -9 the victim, then check the recovered run."""
    db = database(server)
    job_id = _submit(server, project)
    first = wait_until(
        lambda: [a for a in attempts(db, job_id) if a.child_pid and a.last_step and a.last_step >= after_step],
        what=f"the first run to pass step {after_step}",
    )[0]
    killed_at = max(c.step for c in checkpoints(db, job_id))
    pid = first.child_pid if victim == "child" else first.worker_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    job = wait_for(server, project, job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", job.error
    runs = attempts(db, job_id)
    assert len(runs) >= 2, "the kill landed after the run finished"
    no_overlap(runs)
    assert not alive(first.child_pid), "the first run's training process outlived its run"
    second = runs[1]
    assert second.resumed_from_step is not None and second.resumed_from_step >= killed_at
    assert second.first_step == second.resumed_from_step + 1
    assert (runs[0].last_step or 0) - second.resumed_from_step <= 4  # at most one checkpoint interval lost
    assert (runs[0].outcome or "lease expired").startswith(("training process ended", "lease expired"))
    with db.session() as session:
        assert "restarted" in kinds(session, job_id)
    (results,) = job.result_files
    table = server.openai(project).files.content(results).read().decode().splitlines()
    assert [int(row.split(",")[0]) for row in table[1:]] == list(range(1, 61))  # every step, once
    difference = adapter_difference(adapter_dir(db, job.fine_tuned_model), golden)
    assert difference <= TOLERANCE, f"resumed adapter differs from the uninterrupted run's by {difference}"
    return {
        "victim": victim,
        "runs": len(runs),
        "resumed_from": second.resumed_from_step,
        "killed_after_step": first.last_step,
        "max_abs_difference": difference,
    }


def test_a_run_that_loses_its_lease_stops_its_child_and_the_job_resumes(server: Server, golden: Path) -> None:
    """The reaper takes the job from a live run (as after a freeze or partition): that run's next heartbeat fails,
    its training process is killed before it can write anything, and a new run resumes from the checkpoint."""
    db = database(server)
    project = "lease-lost"
    job_id = _submit(server, project)
    first = wait_until(
        lambda: [a for a in attempts(db, job_id) if a.child_pid and a.last_step and a.last_step >= 5],
        what="the first run to pass step 5",
    )[0]

    def expire_and_reap() -> bool:
        # Expire the lease as a frozen worker would let it expire, then run the real reaper sweep; the live
        # heartbeat may renew the lease in between, so try until the reaper wins.
        with db.session() as session:
            session.execute(
                update(FineTuningJob)
                .where(FineTuningJob.id == job_id, FineTuningJob.attempt == first.attempt)
                .values(lease_expires_ns=1)
            )
        return job_id in reap_expired(db).requeued

    wait_until(expire_and_reap, what="the reaper to re-queue the job")
    wait_until(lambda: not alive(first.child_pid), timeout=60, what="the first run's training process to be killed")
    job = wait_for(server, project, job_id, ("succeeded", "failed", "cancelled"), timeout=240)
    assert job.status == "succeeded", job.error
    runs = attempts(db, job_id)
    assert len(runs) == 2
    no_overlap(runs)
    assert runs[1].resumed_from_step is not None and runs[1].first_step == runs[1].resumed_from_step + 1
    stale = [c for c in checkpoints(db, job_id) if c.attempt == first.attempt]
    assert stale and all(c.step <= runs[1].resumed_from_step for c in stale)  # nothing recorded after losing it
    first_output = Path(stale[0].path).parent.parent
    assert not (first_output / "adapter").exists(), "the stale run's training process ran on to the end"
    difference = adapter_difference(adapter_dir(db, job.fine_tuned_model), golden)
    assert difference <= TOLERANCE, f"resumed adapter differs from the uninterrupted run's by {difference}"


def test_kill_training_child_resumes_from_checkpoint(server: Server, golden: Path) -> None:
    kill_trial(server, golden, "child", "kill-child")


def test_kill_worker_resumes_from_checkpoint(server: Server, golden: Path) -> None:
    kill_trial(server, golden, "worker", "kill-worker")


@pytest.mark.slow
def test_kill_ten_trials(server: Server, golden: Path) -> None:
    steps = random.Random(10).sample(range(5, 50), 10)  # kill at varied points, reproducibly
    outcomes = [
        kill_trial(server, golden, "child" if i % 2 else "worker", f"trial{i}", after_step=step)
        for i, step in enumerate(steps)
    ]
    print("kill trials:", outcomes)
    assert all(o["runs"] == 2 for o in outcomes)
