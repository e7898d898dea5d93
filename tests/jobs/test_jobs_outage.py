"""A Postgres crash and restart during a running job and a burst of submissions (reliability.md, recipe R4).

Nothing is lost or run twice: every request during the outage answers 2xx or 503 with Retry-After (never a
500), every submitted job is created once (the client retries with its Idempotency-Key) and succeeds in a
single run, and the running job keeps its run: it is neither failed nor re-queued by the reaper.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.usecases.jobs.events import kinds
from tests.conftest import REQUIRE_SERVICES, Server, start_server
from tests.jobs.helpers import TERMINAL, attempts, chat_lines, database, job_row, tiny_method, wait_for, wait_until
from tests.jobs.postgres_server import PrivatePostgres

BURST = 4
OUTAGE_S = 4.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    try:
        handle = PrivatePostgres()
    except RuntimeError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def server(private_postgres: PrivatePostgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "TUNEFORGE_DATABASE_URL": private_postgres.url,
        # A lease far longer than the outage: live runs must survive it without being reaped.
        "TUNEFORGE_LEASE_SECONDS": "30",
        "TUNEFORGE_HEARTBEAT_SECONDS": "1",
        "TUNEFORGE_REAPER_SECONDS": "0.5",
        "TUNEFORGE_DOORBELL_RESEND_SECONDS": "3",
        "TUNEFORGE_DATABASE_TIMEOUT_S": "2",
        "TUNEFORGE_DATABASE_RETRY_AFTER_S": "1",
        "TUNEFORGE_EVAL_ENABLED": "false",
        "OMP_NUM_THREADS": "1",
    }
    handle = start_server(Path(tmp_path_factory.mktemp("outage")), env)
    yield handle
    handle.stop()


class Recorder:
    """Every status code a client saw, and whether each 503 carried Retry-After."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.unavailable_without_retry_after = 0
        self.lock = threading.Lock()

    def note(self, response: httpx.Response) -> None:
        with self.lock:
            self.statuses.append(response.status_code)
            if response.status_code == 503 and "retry-after" not in response.headers:
                self.unavailable_without_retry_after += 1


def _create_until_done(server: Server, key: str, body: dict[str, object], idem: str, seen: Recorder) -> str:
    """What a careful client does: retry on 503 (after Retry-After) or a dropped connection, same key."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{server.base_url}/v1/fine_tuning/jobs",
                json=body,
                headers={"authorization": f"Bearer {key}", "idempotency-key": idem},
                timeout=30,
            )
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        seen.note(response)
        if response.status_code == 200:
            return str(response.json()["id"])
        assert response.status_code == 503, response.text
        time.sleep(float(response.headers.get("retry-after", "1")))
    raise AssertionError("job creation never succeeded")


def _poll(server: Server, key: str, job_id: str, stop: threading.Event, seen: Recorder) -> None:
    while not stop.is_set():
        with contextlib.suppress(httpx.TransportError):
            seen.note(
                httpx.get(
                    f"{server.base_url}/v1/fine_tuning/jobs/{job_id}",
                    headers={"authorization": f"Bearer {key}"},
                    timeout=30,
                )
            )
        time.sleep(0.1)


def test_postgres_restart_during_a_run_and_a_burst_loses_nothing_and_runs_nothing_twice(
    server: Server, private_postgres: PrivatePostgres
) -> None:
    client = server.openai("outage")
    key = server.key("outage")
    db = database(server)
    long_file = client.files.create(file=("long.jsonl", chat_lines(40)), purpose="fine-tune").id
    short_file = client.files.create(file=("short.jsonl", chat_lines(10, "b")), purpose="fine-tune").id
    running = client.fine_tuning.jobs.create(
        model="tiny-chat", training_file=long_file, seed=7, method=tiny_method(every=5)
    ).id
    wait_until(lambda: (job_row(db, running).step or 0) >= 2, timeout=180, what="the first job to train")

    seen = Recorder()
    stop_polling = threading.Event()
    poller = threading.Thread(target=_poll, args=(server, key, running, stop_polling, seen), daemon=True)
    poller.start()
    created: list[str] = []
    bodies = [
        {"model": "tiny-chat", "training_file": short_file, "seed": i, "method": tiny_method(every=5)}
        for i in range(BURST)
    ]
    keys = [f"burst-{uuid.uuid4().hex}" for _ in range(BURST)]

    def burst() -> None:
        for body, idem in zip(bodies, keys, strict=True):
            created.append(_create_until_done(server, key, body, idem, seen))
            time.sleep(0.3)

    submitter = threading.Thread(target=burst, daemon=True)
    submitter.start()
    time.sleep(0.5)
    assert job_row(db, running).status == "running"
    private_postgres.crash()
    time.sleep(OUTAGE_S)
    private_postgres.start()
    submitter.join(timeout=180)
    assert not submitter.is_alive(), "the burst never finished"
    stop_polling.set()
    poller.join(timeout=30)

    assert 500 not in seen.statuses, f"a request answered 500 during the outage: {seen.statuses}"
    assert set(seen.statuses) <= {200, 503}, seen.statuses
    assert 503 in seen.statuses, "no request ran into the outage; the test proves nothing"
    assert seen.unavailable_without_retry_after == 0

    every = [running, *created]
    for job_id in every:
        job = wait_for(server, "outage", job_id, TERMINAL, timeout=300)
        assert job.status == "succeeded", (job_id, job.error)
    listed = [job.id for job in client.fine_tuning.jobs.list(limit=100)]
    assert sorted(listed) == sorted(every), "a retried submission created a duplicate job"
    for job_id in every:
        runs = attempts(db, job_id)
        assert len(runs) == 1, f"{job_id} ran {len(runs)} times"
        with db.session() as session:
            assert "restarted" not in kinds(session, job_id)


def test_the_reaper_holds_off_for_a_lease_after_the_database_restarted(
    private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    """An outage that fell between two sweeps leaves no failed sweep behind: the server's start time tells."""
    from app.core.settings import Settings
    from app.db.session import Database
    from app.usecases.jobs.reaper import database_just_restarted

    private_postgres.crash()
    private_postgres.start()
    db = Database(private_postgres.url)
    try:
        assert database_just_restarted(db, Settings(data_dir=tmp_path, lease_seconds=60))
        time.sleep(1.5)
        assert not database_just_restarted(db, Settings(data_dir=tmp_path, lease_seconds=1))
    finally:
        db.dispose()
    embedded = Database(f"sqlite:///{tmp_path / 'x.db'}")
    assert not database_just_restarted(embedded, Settings(data_dir=tmp_path, lease_seconds=60))
