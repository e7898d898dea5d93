"""Benchmark the jobs control plane on loopback.

1. create -> running with an idle worker: p50/p99 over --jobs jobs (time from the job's creation to its claim,
   read from the database; each job is cancelled and finished before the next one, so the worker is idle).
2. job-status GET throughput and latency at --pollers concurrent pollers against GET /v1/fine_tuning/jobs/{id},
   next to a bare FastAPI endpoint returning a job-sized JSON object, served the same way in the same run.

Usage: python bench/jobs.py [--jobs 50] [--pollers 64] [--seconds 10]. Embedded default (SQLite, filesystem
queue) unless TUNEFORGE_DATABASE_URL / TUNEFORGE_BROKER_URL point at Postgres / Redis.
The last line printed is `ratio=<ours requests per second / bare requests per second>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import select  # noqa: E402

from app.db.models import FineTuningJob, JobAttempt  # noqa: E402
from tests.conftest import free_port, start_server  # noqa: E402
from tests.jobs.helpers import FAST_ENV, chat_lines, database, tiny_method  # noqa: E402

JOB_SHAPE: dict[str, Any] = {
    "object": "fine_tuning.job",
    "id": "ftjob-" + "a" * 24,
    "model": "tiny-chat",
    "created_at": 1,
    "finished_at": None,
    "fine_tuned_model": None,
    "organization_id": "org-tuneforge",
    "result_files": [],
    "status": "running",
    "validation_file": None,
    "training_file": "file-" + "b" * 24,
    "trained_tokens": None,
    "error": None,
    "seed": 1,
    "estimated_finish": None,
    "integrations": [],
    "metadata": None,
    "user_provided_suffix": None,
    "hyperparameters": {"batch_size": 1, "learning_rate_multiplier": 1.0, "n_epochs": 1},
    "method": {
        "type": "supervised",
        "supervised": {"hyperparameters": {"batch_size": 1, "learning_rate_multiplier": 1.0, "n_epochs": 1}},
    },
}


def bare_server(port: int) -> None:
    """The baseline: FastAPI + uvicorn, one route, no auth, no database."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def job(job_id: str) -> dict[str, Any]:
        return {**JOB_SHAPE, "id": job_id}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def create_to_running(server: Any, n_jobs: int) -> list[float]:
    """Seconds from creation to claim for each job; each is cancelled and finished before the next."""
    client = server.openai("bench")
    db = database(server)
    file_id = client.files.create(file=("t.jsonl", chat_lines(10)), purpose="fine-tune").id
    latencies = []
    for _ in range(n_jobs):
        job_id = client.fine_tuning.jobs.create(
            model="tiny-chat", training_file=file_id, method=tiny_method(n_epochs=3)
        ).id
        deadline = time.monotonic() + 120
        while True:
            with db.session() as session:
                started = session.scalar(select(JobAttempt.started_ns).where(JobAttempt.job_id == job_id))
                created = session.scalar(select(FineTuningJob.created_ns).where(FineTuningJob.id == job_id))
            if started is not None and created is not None:
                latencies.append((started - created) / 1e9)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{job_id} never started")
            time.sleep(0.005)
        client.fine_tuning.jobs.cancel(job_id)
        while client.fine_tuning.jobs.retrieve(job_id).status not in ("cancelled", "succeeded", "failed"):
            time.sleep(0.05)
    return latencies


async def poll(url: str, headers: dict[str, str], pollers: int, seconds: float) -> tuple[float, list[float]]:
    """Requests per second and per-request latencies with `pollers` concurrent loops."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        for _ in range(3):  # warm up connections and caches
            (await client.get(url)).raise_for_status()
        stop = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < stop:
                begin = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - begin)
                response.raise_for_status()

        began = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(pollers)))
        elapsed = time.monotonic() - began
    return len(latencies) / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return

    import os

    extra = {k: v for k, v in os.environ.items() if k in ("TUNEFORGE_DATABASE_URL", "TUNEFORGE_BROKER_URL")}
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp:
        server = start_server(
            Path(tmp) / "data",
            {**FAST_ENV, "TUNEFORGE_HEARTBEAT_SECONDS": "2", "TUNEFORGE_LEASE_SECONDS": "30", **extra},
        )
        port = free_port()
        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(port)])
        try:
            latencies = create_to_running(server, args.jobs)
            client = server.openai("bench")
            job_id = client.fine_tuning.jobs.list(limit=1).data[0].id
            ours_url = f"{server.base_url}/v1/fine_tuning/jobs/{job_id}"
            headers = {"authorization": f"Bearer {server.key('bench')}"}
            bare_url = f"http://127.0.0.1:{port}/v1/fine_tuning/jobs/{job_id}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    httpx.get(bare_url, timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            bare_rps, bare_lat = asyncio.run(poll(bare_url, {}, args.pollers, args.seconds))
            ours_rps, ours_lat = asyncio.run(poll(ours_url, headers, args.pollers, args.seconds))
        finally:
            bare.terminate()
            bare.wait()
            server.stop()

    backend = "postgres+redis" if extra else "sqlite+filesystem queue (embedded default)"
    print(f"backend: {backend}")
    print(
        f"create -> running, idle worker, {len(latencies)} jobs: "
        f"p50={statistics.median(latencies) * 1000:.0f} ms  p99={percentile(latencies, 0.99) * 1000:.0f} ms  "
        f"max={max(latencies) * 1000:.0f} ms"
    )
    print(f"{'endpoint':<34}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}   ({args.pollers} pollers, {args.seconds:g} s)")
    for name, rps, lat in (
        ("GET job (TuneForge, auth + db)", ours_rps, ours_lat),
        ("GET job (bare FastAPI)", bare_rps, bare_lat),
    ):
        print(f"{name:<34}{rps:>10.0f}{statistics.median(lat) * 1000:>10.1f}{percentile(lat, 0.99) * 1000:>10.1f}")
    print(
        json.dumps(
            {
                "create_to_running_p50_s": statistics.median(latencies),
                "create_to_running_p99_s": percentile(latencies, 0.99),
                "ours_rps": ours_rps,
                "bare_rps": bare_rps,
            }
        )
    )
    print(f"ratio={ours_rps / bare_rps:.3f}")


if __name__ == "__main__":
    main()
