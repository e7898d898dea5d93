"""Helpers for job tests: tiny training requests, waiting on states, reading the run history."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from app.db.models import FineTuningCheckpoint, FineTuningJob, JobAttempt, RegisteredModel
from app.db.session import Database
from tests.conftest import Server

TERMINAL = ("succeeded", "failed", "cancelled")
# Short lease/heartbeat/reaper periods so fault recovery takes seconds, not minutes.
FAST_ENV = {
    "TUNEFORGE_LEASE_SECONDS": "3",
    "TUNEFORGE_HEARTBEAT_SECONDS": "0.5",
    "TUNEFORGE_REAPER_SECONDS": "0.5",
    "TUNEFORGE_DOORBELL_RESEND_SECONDS": "3",
    "TUNEFORGE_MAX_ATTEMPTS": "3",
    # One torch thread per training process: on a busy 2-core box oversubscribed threads are 4x slower.
    "OMP_NUM_THREADS": "1",
}


def chat_lines(n: int, tag: str = "q") -> bytes:
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"What is {tag} {i}?"},
                {"role": "assistant", "content": f"{tag} {i} is {i * 3}."},
            ]
        }
        for i in range(n)
    ]
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def tiny_method(*, n_epochs: int = 1, every: int = 2, **extra: Any) -> dict[str, Any]:
    """Supervised, batch 1 (one step per example), short sequences, a checkpoint every `every` steps."""
    hparams = {
        "n_epochs": n_epochs,
        "batch_size": 1,
        "max_seq_length": extra.pop("max_seq_length", 32),
        "checkpoint_interval": every,
        "n_checkpoints": 100,
        **extra,
    }
    return {"type": "supervised", "supervised": {"hyperparameters": hparams}}


def database(server: Server) -> Database:
    url = server.env.get("TUNEFORGE_DATABASE_URL") or f"sqlite:///{server.data_dir / 'tuneforge.db'}"
    return Database(url)


def wait_for(server: Server, project: str, job_id: str, statuses: tuple[str, ...], timeout: float = 180) -> Any:
    client = server.openai(project)
    deadline = time.monotonic() + timeout
    job = client.fine_tuning.jobs.retrieve(job_id)
    while job.status not in statuses:
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} stayed {job.status}; wanted {statuses}\n{logs(server)}")
        time.sleep(0.1)
        job = client.fine_tuning.jobs.retrieve(job_id)
    return job


def wait_until(predicate: Any, timeout: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def logs(server: Server) -> str:
    parts = []
    for name in ("server.log", "worker.log"):
        path = server.data_dir / name
        if path.exists():
            parts.append(f"--- {name} ---\n" + path.read_text(errors="replace")[-4000:])
    return "\n".join(parts)


def attempts(db: Database, job_id: str) -> list[JobAttempt]:
    with db.session() as session:
        query = select(JobAttempt).where(JobAttempt.job_id == job_id).order_by(JobAttempt.attempt)
        return list(session.scalars(query))


def checkpoints(db: Database, job_id: str) -> list[FineTuningCheckpoint]:
    with db.session() as session:
        query = select(FineTuningCheckpoint).where(FineTuningCheckpoint.job_id == job_id)
        return list(session.scalars(query.order_by(FineTuningCheckpoint.step)))


def job_row(db: Database, job_id: str) -> FineTuningJob:
    with db.session() as session:
        row = session.get(FineTuningJob, job_id)
        assert row is not None
        return row


def adapter_dir(db: Database, model: str) -> Path:
    with db.session() as session:
        row = session.get(RegisteredModel, model)
        assert row is not None
        return Path(row.artifact_dir)


def adapter_difference(left: Path, right: Path) -> float:
    """Largest absolute difference between two adapters' tensors (0.0 when bitwise equal)."""
    from safetensors.numpy import load_file

    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*.safetensors"))
    assert names and names == sorted(p.relative_to(right).as_posix() for p in right.rglob("*.safetensors"))
    worst = 0.0
    for name in names:
        a, b = load_file(str(left / name)), load_file(str(right / name))
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].shape == b[key].shape, key
            worst = max(worst, float(abs(a[key].astype("float64") - b[key].astype("float64")).max()))
    return worst


def no_overlap(runs: list[JobAttempt]) -> None:
    """Each run ended (or was last seen alive) before the next one started."""
    for earlier, later in zip(runs, runs[1:], strict=False):
        end = earlier.ended_ns or earlier.last_seen_ns
        assert end <= later.started_ns, f"runs {earlier.attempt} and {later.attempt} overlapped"


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def post(server: Server, project: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {server.key(project)}", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.base_url}{path}", headers=headers, timeout=60, **kwargs)
