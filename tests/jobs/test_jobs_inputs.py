"""Vanishing inputs, on both backends: a file in use cannot be deleted, and one that vanishes anyway fails the job
at once with OpenAI's invalid-file error (never a run that hangs until its lease runs out, then `worker_lost`)."""

from __future__ import annotations

import time

import openai
import pytest
from sqlalchemy import delete, select

from app.core.storage import BlobStore
from app.db.models import StoredFile
from tests.conftest import Server
from tests.jobs.conftest import MakeServer
from tests.jobs.helpers import attempts, chat_lines, database, tiny_method, wait_for

PROMPT_S = 30.0  # from resume to failed; the lease alone is 3 s here, but `worker_lost` needs three of them


@pytest.fixture(scope="module")
def server(make_server: MakeServer) -> Server:
    return make_server()


def _paused_job(server: Server, project: str, *, validation: bool = False) -> tuple[str, str, str | None]:
    """A job parked in `paused` (pausing a queued job is immediate); returns (job, training, validation) ids."""
    client = server.openai(project)
    training = client.files.create(file=("t.jsonl", chat_lines(40)), purpose="fine-tune").id
    valid = client.files.create(file=("v.jsonl", chat_lines(10, "v")), purpose="fine-tune").id if validation else None
    extra = {"validation_file": valid} if valid else {}
    job_id = client.fine_tuning.jobs.create(
        model="tiny-chat", training_file=training, method=tiny_method(n_epochs=3, every=5), **extra
    ).id
    wait_for(server, project, job_id, ("queued", "running"))
    assert client.fine_tuning.jobs.pause(job_id).status in ("paused", "pausing")
    wait_for(server, project, job_id, ("paused",))
    return job_id, training, valid


def test_a_file_in_use_cannot_be_deleted_until_its_job_ends(server: Server) -> None:
    client = server.openai("in-use")
    job_id, training, valid = _paused_job(server, "in-use", validation=True)
    for file_id in (training, valid):
        assert file_id is not None
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.delete(file_id)
        error = refused.value.body
        assert isinstance(error, dict) and error["code"] == "file_in_use" and job_id in error["message"]
        assert refused.value.response.status_code == 400  # not 409: the SDK would retry that
    assert client.files.retrieve(training).id == training  # still there
    assert client.fine_tuning.jobs.cancel(job_id).status == "cancelled"
    assert client.files.delete(training).deleted is True
    assert client.files.delete(valid).deleted is True  # type: ignore[arg-type]


@pytest.mark.parametrize("gone", ["training row", "validation bytes"])
def test_a_file_that_vanishes_anyway_fails_the_job_at_once(server: Server, gone: str) -> None:
    project = f"vanish-{gone.split()[0]}"
    client = server.openai(project)
    db = database(server)
    job_id, training, valid = _paused_job(server, project, validation=True)
    runs_before = len(attempts(db, job_id))
    with db.session() as session:  # behind the API's back, as a concurrent delete or an operator would
        if gone == "training row":
            session.execute(delete(StoredFile).where(StoredFile.id == training))
        else:
            row = session.scalar(select(StoredFile).where(StoredFile.id == valid))
            assert row is not None
            BlobStore(server.data_dir / "blobs").path_for(row.storage_key).unlink()
    assert client.fine_tuning.jobs.resume(job_id).status == "queued"
    resumed = time.monotonic()
    job = wait_for(server, project, job_id, ("failed", "succeeded", "cancelled"), timeout=120)
    took = time.monotonic() - resumed
    kind = "training" if gone == "training row" else "validation"
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.param) == (f"invalid_{kind}_file", f"{kind}_file"), job.error
    assert took < PROMPT_S, f"the job took {took:.1f}s to fail"
    assert len(attempts(db, job_id)) == runs_before + 1  # one run, which never started a training process
    assert attempts(db, job_id)[-1].child_pid is None
