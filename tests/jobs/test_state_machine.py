"""The job state machine: the transition table, and random sequences of use-case calls and faults against it.

The stateful test drives the real use cases (create, validate, claim, heartbeat, pause, resume, cancel, every
way a run ends, lease expiry and reaper sweeps, stale attempts writing) on a real database, without the HTTP
layer, and checks after every step that the stored history obeys the table.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, func, select, update

from app.core.errors import InvalidRequest
from app.core.ids import new_id, now_ns
from app.core.settings import Settings
from app.core.storage import BlobStore
from app.db.migrate import upgrade
from app.db.models import FineTuningCheckpoint, FineTuningEvent, FineTuningJob, Project, StoredFile
from app.db.session import Database
from app.usecases.jobs import control, submit
from app.usecases.jobs import run as jobs_run
from app.usecases.jobs.doorbell import Doorbell
from app.usecases.jobs.reaper import sweep_once
from app.usecases.jobs.request import JobRequest
from app.usecases.jobs.run import LeaseLost
from app.usecases.jobs.state import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    JobStatus,
    Trigger,
    allowed,
    initial,
    move,
)
from app.usecases.keys import get_or_create_project
from engine.events import CheckpointEvent, ResultEvent
from tests.conftest import _fresh_postgres

S, T = JobStatus, Trigger

# The lifecycle drawn in ARCHITECTURE.md, edge by edge.
DIAGRAM = [
    (None, S.VALIDATING_FILES, T.CREATE),
    (S.VALIDATING_FILES, S.QUEUED, T.VALIDATE),
    (S.VALIDATING_FILES, S.FAILED, T.VALIDATE),
    (S.QUEUED, S.RUNNING, T.CLAIM),
    (S.RUNNING, S.SUCCEEDED, T.FINISH),
    (S.RUNNING, S.FAILED, T.FINISH),
    (S.RUNNING, S.PAUSING, T.PAUSE),
    (S.PAUSING, S.PAUSED, T.FINISH),
    (S.PAUSED, S.QUEUED, T.RESUME),
    (S.RUNNING, S.CANCELLING, T.CANCEL),
    (S.CANCELLING, S.CANCELLED, T.FINISH),
    (S.QUEUED, S.CANCELLED, T.CANCEL),
    (S.RUNNING, S.QUEUED, T.REQUEUE),  # reaper: lease expired and attempts left
]

# Events that announce a status change: exactly one per transition, none otherwise.
TRANSITION_KINDS = {
    "created",
    "validated",
    "failed",
    "started",
    "pause_requested",
    "paused",
    "resumed",
    "cancel_requested",
    "cancelled",
    "restarted",
    "succeeded",
}

# What the API answers to each request from each status (missing: refused with invalid_job_status).
EXPECTED: dict[str, dict[JobStatus, JobStatus]] = {
    "cancel": {
        S.VALIDATING_FILES: S.CANCELLED,
        S.QUEUED: S.CANCELLED,
        S.PAUSED: S.CANCELLED,
        S.RUNNING: S.CANCELLING,
        S.PAUSING: S.CANCELLING,
        S.CANCELLING: S.CANCELLING,
    },
    "pause": {S.QUEUED: S.PAUSED, S.RUNNING: S.PAUSING, S.PAUSING: S.PAUSING, S.PAUSED: S.PAUSED},
    "resume": {S.PAUSED: S.QUEUED, S.QUEUED: S.QUEUED, S.RUNNING: S.RUNNING},
}

# --- (a) the table --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("frm", "to", "trigger"), DIAGRAM, ids=lambda v: str(v))
def test_every_edge_of_the_diagram_is_allowed(frm: JobStatus | None, to: JobStatus, trigger: Trigger) -> None:
    assert allowed(frm, to, trigger)


def test_the_table_covers_every_status_and_terminal_states_are_final() -> None:
    assert set(TRANSITIONS) == {None, *JobStatus}
    assert TERMINAL == (S.SUCCEEDED, S.FAILED, S.CANCELLED)
    assert all(not TRANSITIONS[s] for s in TERMINAL)
    assert initial() == S.VALIDATING_FILES
    assert set(ACTIVE) == {S.RUNNING, S.PAUSING, S.CANCELLING}
    assert all(to is not None for edges in TRANSITIONS.values() for to in edges)  # nothing goes back to "no job"


ILLEGAL = [
    (S.SUCCEEDED, S.CANCELLED, T.CANCEL),
    (S.FAILED, S.QUEUED, T.RESUME),
    (S.CANCELLED, S.RUNNING, T.CLAIM),
    (S.VALIDATING_FILES, S.RUNNING, T.CLAIM),
    (S.VALIDATING_FILES, S.PAUSED, T.PAUSE),
    (S.PAUSED, S.RUNNING, T.CLAIM),
    (S.QUEUED, S.SUCCEEDED, T.FINISH),
    (S.RUNNING, S.QUEUED, T.RESUME),  # the right edge, the wrong trigger
    (S.CANCELLING, S.PAUSING, T.PAUSE),
    (S.RUNNING, S.SUCCEEDED, T.CANCEL),
]


class _NoDatabase:
    """A session that fails the test if anything reaches the database."""

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an illegal transition touched the database")


NO_DATABASE: Any = _NoDatabase()  # stands in for a Session


@pytest.mark.parametrize(("frm", "to", "trigger"), ILLEGAL, ids=lambda v: str(v))
def test_illegal_moves_are_refused_before_the_database(frm: JobStatus, to: JobStatus, trigger: Trigger) -> None:
    assert not allowed(frm, to, trigger)
    with pytest.raises(IllegalTransition) as refused:
        move(NO_DATABASE, "ftjob-x", to, trigger=trigger, expect=frm)
    error = refused.value
    assert isinstance(error, InvalidRequest) and error.status_code == 400
    assert error.body()["error"]["code"] == "invalid_job_status"
    assert error.body()["error"]["param"] == "fine_tuning_job_id"
    assert error.message == f"Cannot {trigger} job ftjob-x: its status is '{frm}'."


def test_one_illegal_status_in_expect_refuses_the_whole_move() -> None:
    with pytest.raises(IllegalTransition):
        move(NO_DATABASE, "ftjob-x", S.CANCELLED, trigger=T.CANCEL, expect={S.QUEUED, S.SUCCEEDED})


# --- (b) random sequences against a real database ----------------------------------------------------------------


class _Doorbell(Doorbell):
    """Records rings instead of sending Celery messages."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.rung: list[str] = []

    def ring(self, job_ids: Any, queue: str = "") -> int:
        ids = list(job_ids)
        self.rung += ids
        return len(ids)


@dataclass
class World:
    """One database and its settings, shared by every example of a run (each example uses its own project)."""

    db: Database
    settings: Settings
    storage: BlobStore


@dataclass(frozen=True)
class Row:
    status: JobStatus
    attempt: int
    transitions: int  # events of TRANSITION_KINDS
    checkpoints: int


def _chat_lines(n: int) -> bytes:
    lines = [
        {"messages": [{"role": "user", "content": f"What is {i}?"}, {"role": "assistant", "content": f"{i * 3}."}]}
        for i in range(n)
    ]
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


_projects = itertools.count()


class JobMachine(RuleBasedStateMachine):
    """API calls, run writes and faults on a few jobs; every step's result is checked against the table."""

    world: World

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[str] = []
        self.claimed: dict[str, list[int]] = {}  # every attempt number a claim handed out, per job
        self.before: dict[str, Row] = {}

    # -- setup and helpers --

    @initialize()
    def project(self) -> None:
        world = self.world
        with world.db.session() as session:
            self.project_id = get_or_create_project(session, f"sm-{next(_projects)}-{new_id('')}").id
            self.files = {ok: self._file(session, _chat_lines(4 if ok else 1)) for ok in (True, False)}

    def _file(self, session: Any, data: bytes) -> str:
        file_id = new_id("file-")
        _, sha = self.world.storage.put_bytes(file_id, data)
        session.add(
            StoredFile(
                id=file_id,
                project_id=self.project_id,
                purpose="fine-tune",
                filename="train.jsonl",
                bytes=len(data),
                sha256=sha,
                storage_key=file_id,
                status="processed",
                created_ns=now_ns(),
            )
        )
        return file_id

    def _rows(self) -> dict[str, Row]:
        with self.world.db.session() as session:
            jobs = session.execute(
                select(FineTuningJob.id, FineTuningJob.status, FineTuningJob.attempt).where(
                    FineTuningJob.project_id == self.project_id
                )
            ).all()
            events = dict(
                session.execute(
                    select(FineTuningEvent.job_id, func.count())
                    .where(FineTuningEvent.job_id.in_(self.jobs), FineTuningEvent.kind.in_(TRANSITION_KINDS))
                    .group_by(FineTuningEvent.job_id)
                ).all()
            )
            ckpts = dict(
                session.execute(
                    select(FineTuningCheckpoint.job_id, func.count())
                    .where(FineTuningCheckpoint.job_id.in_(self.jobs))
                    .group_by(FineTuningCheckpoint.job_id)
                ).all()
            )
        return {
            job_id: Row(JobStatus(status), attempt, int(events.get(job_id, 0)), int(ckpts.get(job_id, 0)))
            for job_id, status, attempt in jobs
        }

    def _check_step(self, triggers: set[Trigger]) -> dict[str, Row]:
        """Every job that moved took one edge of the table for one of these triggers, announced by one event."""
        after = self._rows()
        for job_id, row in after.items():
            old = self.before.get(job_id)
            if old is None:  # created by this step
                assert allowed(None, row.status, T.CREATE) or (
                    T.VALIDATE in triggers and allowed(S.VALIDATING_FILES, row.status, T.VALIDATE)
                )
                continue
            if old.status in TERMINAL:
                assert row == old, f"{job_id}: a terminal job changed: {old} -> {row}"
            assert row.attempt >= old.attempt
            if row.status == old.status:
                assert row.transitions == old.transitions, f"{job_id}: an event without a transition"
                assert row.attempt == old.attempt
                continue
            assert any(allowed(old.status, row.status, t) for t in triggers), (
                f"{job_id}: {old.status} -> {row.status} is no edge for {sorted(triggers)}"
            )
            assert row.transitions == old.transitions + 1, f"{job_id}: {old.status} -> {row.status} events"
            assert row.attempt == old.attempt + (1 if row.status == S.RUNNING else 0)
        self.before = after
        return after

    def _live(self) -> list[str]:
        return [j for j in self.jobs if self.before[j].status not in TERMINAL]

    def _job(self, data: st.DataObject) -> str:
        """Mostly a job that can still move (so runs go deep), sometimes any job (terminal ones included)."""
        live = self._live()
        pool = live if live and data.draw(st.integers(0, 4)) > 0 else self.jobs
        return data.draw(st.sampled_from(pool))

    def _attempt(self, job_id: str, pick: int) -> int:
        """An attempt number for a run write: mostly the newest claimed, else a stale one or one never claimed."""
        known = self.claimed.get(job_id) or [0]
        if pick < 4:
            return known[-1]
        options = [*known, max(known) + 1]
        return options[pick % len(options)]

    def _run_write(self, job_id: str, attempt: int, write: Callable[[], object], triggers: set[Trigger]) -> None:
        """A run's write succeeds only for the owning attempt of an active job; otherwise it changes nothing."""
        old = self.before[job_id]
        owner = old.attempt == attempt and old.status in ACTIVE
        try:
            write()
        except LeaseLost:
            assert not owner, f"{job_id}: the owning attempt {attempt} was refused in {old.status}"
            assert self._rows()[job_id] == old, f"{job_id}: fenced-out attempt {attempt} wrote"
            return
        assert owner, f"{job_id}: attempt {attempt} wrote while {old.status} at attempt {old.attempt}"
        self._check_step(triggers)

    # -- API calls --

    @precondition(lambda self: len(self.jobs) < 6 and not self._live())
    @rule(ok=st.sampled_from([True, True, True, False]), validate=st.sampled_from([True, True, False]))
    def create(self, ok: bool, validate: bool) -> None:
        world = self.world
        request = JobRequest(
            model="tiny-chat",
            training_file=self.files[ok],
            validation_file=None,
            method={"type": "supervised", "supervised": {"hyperparameters": {}}},
            suffix=None,
            seed=1,
            metadata=None,
            integrations=[],
        )
        with world.db.session() as session:
            job = submit.create_job(session, world.settings, self.project_id, request)
            assert job.status == S.VALIDATING_FILES
            self.jobs.append(job.id)
        if validate:
            with world.db.session() as session:
                assert submit.validate_job(session, world.settings, world.storage, job.id) == (
                    S.QUEUED if ok else S.FAILED
                )
        row = self._check_step({T.CREATE, T.VALIDATE})[job.id]
        assert row.transitions == (2 if validate else 1)  # created (+ validated or failed)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def validate(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        old = self.before[job_id].status
        with self.world.db.session() as session:
            status = submit.validate_job(session, self.world.settings, self.world.storage, job_id)
        assert (status is None) == (old != S.VALIDATING_FILES)
        self._check_step({T.VALIDATE})

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), action=st.sampled_from(["cancel", "pause", "resume"]))
    def user_asks(self, data: st.DataObject, action: str) -> None:
        """Cancel, pause or resume as the API calls them; the answer is what the table allows from where it was."""
        job_id = self._job(data)
        old = self.before[job_id].status
        expected = EXPECTED[action].get(old)  # None: refused
        use_case = {"cancel": control.cancel_job, "pause": control.pause_job, "resume": control.resume_job}[action]
        try:
            with self.world.db.session() as session:
                answered = use_case(session, self.project_id, job_id).status
        except IllegalTransition:
            assert expected is None, f"{action} of a {old} job refused, expected {expected}"
            assert self._rows()[job_id] == self.before[job_id]
            return
        assert answered == expected, f"{action} of a {old} job answered {answered}"
        self._check_step({Trigger(action)})

    # -- the worker's writes --

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def claim(self, data: st.DataObject) -> None:
        job_id = self._job(data)
        old = self.before[job_id]
        got = jobs_run.claim(self.world.db, job_id, "w", self.world.settings.lease_seconds)
        assert (got is not None) == (old.status == S.QUEUED), f"claim of a {old.status} job: {got}"
        if got is not None:
            assert got.attempt == old.attempt + 1
            self.claimed.setdefault(job_id, []).append(got.attempt)
        self._check_step({T.CLAIM})

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), pick=st.integers(0, 7), step=st.integers(0, 9))
    def run_progress(self, data: st.DataObject, pick: int, step: int) -> None:
        """A heartbeat (step 0) or a checkpoint: never a status change, and only the owning attempt's."""
        job_id = self._job(data)
        attempt = self._attempt(job_id, pick)
        world = self.world
        write: Callable[[], object]
        if step == 0:
            write = lambda: jobs_run.heartbeat(world.db, job_id, attempt, world.settings.lease_seconds)  # noqa: E731
        else:
            folder = world.settings.data_dir / "ckpt" / job_id / f"{attempt}-{step}"
            folder.mkdir(parents=True, exist_ok=True)
            event = CheckpointEvent(step=step, path=str(folder), sha256="0" * 64, metrics={})
            write = lambda: jobs_run.record_checkpoint(world.db, job_id, attempt, event)  # noqa: E731
        self._run_write(job_id, attempt, write, set())

    @precondition(lambda self: self.jobs)
    @rule(
        data=st.data(),
        pick=st.integers(0, 7),
        how=st.sampled_from(["succeeded", "failed", "paused", "cancelled", "crashed"]),
    )
    def finish(self, data: st.DataObject, pick: int, how: str) -> None:
        job_id = self._job(data)
        attempt = self._attempt(job_id, pick)
        world = self.world
        result = ResultEvent(status="succeeded", adapter_dir=str(world.settings.data_dir), trained_tokens=1)
        ends: dict[str, Callable[[], object]] = {
            "succeeded": lambda: jobs_run.finish_succeeded(world.db, world.storage, job_id, attempt, result),
            "failed": lambda: jobs_run.finish_failed(world.db, job_id, attempt, {"code": "x", "message": "y"}),
            "paused": lambda: jobs_run.finish_paused(world.db, job_id, attempt),
            "cancelled": lambda: jobs_run.finish_cancelled(world.db, job_id, attempt),
            "crashed": lambda: jobs_run.child_crashed(world.db, job_id, attempt, "test"),
        }
        self._run_write(job_id, attempt, ends[how], {T.FINISH, T.REQUEUE})

    # -- faults --

    @precondition(lambda self: self.jobs)
    @rule(data=st.data())
    def lease_expires(self, data: st.DataObject) -> None:
        """The worker went silent: its lease runs out (a fault, not a status write)."""
        job_id = self._job(data)
        with self.world.db.session() as session:
            session.execute(update(FineTuningJob).where(FineTuningJob.id == job_id).values(lease_expires_ns=0))
        self._check_step(set())

    @precondition(lambda self: self.jobs)
    @rule()
    def reaper_sweep(self) -> None:
        world = self.world
        doorbell = _Doorbell(world.settings)
        sweep = sweep_once(world.db, world.settings, world.storage, doorbell)
        after = self._check_step({T.REQUEUE, T.VALIDATE})
        for job_id in sweep.requeued:
            assert job_id not in after or after[job_id].status == S.QUEUED
        for job_id in set(doorbell.rung) & set(after):
            assert after[job_id].status == S.QUEUED  # only runnable jobs are rung

    def teardown(self) -> None:
        """Drop this example's project (and by cascade its jobs), so no later example's sweep sees them."""
        with self.world.db.session() as session:
            session.execute(delete(Project).where(Project.id == self.project_id))

    # -- invariants --

    @invariant()
    def stored_history_is_consistent(self) -> None:
        if not self.jobs:
            return
        with self.world.db.session() as session:
            for job in session.scalars(select(FineTuningJob).where(FineTuningJob.id.in_(self.jobs))):
                status = JobStatus(job.status)
                assert (job.lease_owner is not None) <= (status in ACTIVE)  # only a run holds a lease
                assert (job.finished_ns is not None) == (status in TERMINAL)
                if status == S.SUCCEEDED:
                    assert job.fine_tuned_model is not None


@pytest.fixture(scope="module")
def world_url(
    job_backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per backend for the whole module."""
    if job_backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('sm') / 'sm.db'}"
        upgrade(url)
        yield url
        return
    for url in _fresh_postgres(request.getfixturevalue("postgres_url")):
        upgrade(url)
        yield url


def test_random_sequences_obey_the_table(world_url: str, job_backend: str, tmp_path: Path) -> None:
    # Postgres commits cost ~10x SQLite's on a small box: fewer, equally long sequences keep it well under a minute.
    examples = 60 if job_backend == "sqlite" else 25
    world = World(
        db=Database(world_url),
        settings=Settings(
            data_dir=tmp_path,
            database_url=world_url,
            doctor_enabled=False,
            min_examples=2,
            max_attempts=2,
            lease_seconds=60,
            doorbell_resend_seconds=1e-9,
        ),
        storage=BlobStore(tmp_path / "blobs"),
    )
    JobMachine.world = world
    try:
        run_state_machine_as_test(
            JobMachine,
            settings=settings(
                max_examples=examples,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                database=None,
            ),
        )
    finally:
        world.db.dispose()
