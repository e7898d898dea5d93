"""Redis restarted with no data during a burst of 20 jobs: all reach a terminal state, none ran twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.jobs.conftest import MakeServer
from tests.jobs.helpers import TERMINAL, attempts, chat_lines, database, logs, tiny_method, wait_for
from tests.jobs.redis_server import PrivateRedis


def test_redis_restart_with_no_data_during_a_burst(job_backend: str, make_server: MakeServer, tmp_path: Path) -> None:
    if job_backend != "postgres":
        pytest.skip("Redis is the cluster transport; the embedded default has no broker server")
    broker = PrivateRedis(tmp_path / "redis")  # this test's own server: the one it kills
    try:
        # No evaluation: this is about the queue (evaluation has its own tests), and it would add two model
        # measurements to each of the 20 jobs.
        server = make_server(
            {"TUNEFORGE_WORKER_CONCURRENCY": "2", "TUNEFORGE_EVAL_ENABLED": "false"}, redis_handle=broker
        )
        client = server.openai("burst", max_retries=0)  # any error answer would fail the test, not be retried
        file_id = client.files.create(file=("t.jsonl", chat_lines(10)), purpose="fine-tune").id
        ids: list[str] = []
        lock = threading.Lock()

        def submit(count: int) -> None:
            for _ in range(count):
                job = client.fine_tuning.jobs.create(
                    model="tiny-chat", training_file=file_id, method=tiny_method(every=4)
                )
                with lock:
                    ids.append(job.id)

        submitters = [threading.Thread(target=submit, args=(5,)) for _ in range(4)]
        for thread in submitters:
            thread.start()
        while len(ids) < 6:
            threading.Event().wait(0.02)
        broker.kill()  # every queued message is gone
        threading.Event().wait(0.5)
        broker.start()  # empty
        for thread in submitters:
            thread.join(timeout=120)
        assert len(ids) == 20

        db = database(server)
        for job_id in ids:
            job = wait_for(server, "burst", job_id, TERMINAL, timeout=400)
            assert job.status == "succeeded", (job_id, job.error)
            runs = attempts(db, job_id)
            assert [a.attempt for a in runs] == [1], (
                f"{job_id} ran more than once: {[(a.outcome, a.started_ns, a.last_seen_ns) for a in runs]}\n"
                + logs(server)
            )
    finally:
        broker.stop()
