"""Jobs API through the official openai SDK against `tuneforge serve` (embedded worker), on both backends."""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from app.db.models import RegisteredModel
from tests.app.datasets import chat_jsonl, preference_jsonl
from tests.conftest import Server
from tests.jobs.helpers import attempts, chat_lines, database, post, tiny_method, wait_for


def test_upload_to_succeeded_through_the_sdk(jobs_server: Server) -> None:
    client = jobs_server.openai("alpha")
    training = client.files.create(file=("train.jsonl", chat_lines(12)), purpose="fine-tune")
    created = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training.id,
        suffix="my_demo",
        seed=7,
        metadata={"team": "a b"},
        method=tiny_method(lora_r=4, lora_alpha=8, warmup_ratio=0.1),
    )
    assert created.id.startswith("ftjob-") and len(created.id) == len("ftjob-") + 24
    assert created.status == "validating_files"
    assert (created.error, created.fine_tuned_model, created.finished_at, created.trained_tokens) == (
        None,
        None,
        None,
        None,
    )
    assert created.result_files == [] and created.seed == 7 and created.integrations == []
    assert created.hyperparameters.model_dump() == {"batch_size": 1, "learning_rate_multiplier": "auto", "n_epochs": 1}
    echoed = created.method.supervised.hyperparameters.model_dump()  # type: ignore[union-attr]
    assert echoed["lora_r"] == 4 and echoed["warmup_ratio"] == 0.1 and echoed["learning_rate_multiplier"] == "auto"

    job = wait_for(jobs_server, "alpha", created.id, ("succeeded", "failed", "cancelled"))
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny-chat:alpha:my-demo:{job.id[-8:]}"
    assert job.user_provided_suffix == "my_demo"  # type: ignore[attr-defined]
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at
    assert isinstance(job.hyperparameters.learning_rate_multiplier, float)
    assert job.hyperparameters.n_epochs == 1 and job.error is None

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)][::-1]
    assert messages[:4] == [
        f"Created fine-tuning job: {job.id}",
        f"Validating training file: {training.id}",
        "Files validated, moving job to queued state",
        "Fine-tuning job started",
    ]
    assert messages[-2:] == [
        f"New fine-tuned model created: {job.fine_tuned_model}",
        "The job has successfully completed",
    ]
    assert any(m.startswith("Step 1/12: training loss=") for m in messages)
    assert f"Checkpoint created at step 2 with Snapshot ID: {job.fine_tuned_model}:ckpt-step-2" in messages
    page = client.fine_tuning.jobs.list_events(job.id, limit=3)
    assert page.has_more and len(page.data) == 3
    older = client.fine_tuning.jobs.list_events(job.id, limit=3, after=page.data[-1].id)
    assert [e.id for e in older.data][0] != page.data[-1].id
    metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert metrics and {"step", "train_loss", "total_steps"} <= set(metrics[0].data or {})

    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=2))
    steps = [c.step_number for c in ckpts]
    assert steps == sorted(steps, reverse=True) and steps[0] == 12 and 2 in steps
    assert ckpts[0].fine_tuned_model_checkpoint == job.fine_tuned_model
    assert ckpts[-1].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-2"
    assert ckpts[0].metrics.train_loss is not None and ckpts[0].metrics.step == 12
    raw = client.fine_tuning.jobs.checkpoints.list(job.id, limit=3).model_dump()
    assert raw["first_id"] == raw["data"][0]["id"] and raw["has_more"] is True

    (result_id,) = job.result_files
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).read().decode())))
    assert len(rows) == 12 and "train_loss" in rows[0]

    db = database(jobs_server)
    with db.session() as session:
        model = session.get(RegisteredModel, job.fine_tuned_model)
        assert model is not None and (model.kind, model.job_id, model.base_model) == ("fine_tuned", job.id, "tiny-chat")
        ckpt_model = session.get(RegisteredModel, f"{job.fine_tuned_model}:ckpt-step-2")
        assert ckpt_model is not None and ckpt_model.kind == "checkpoint" and ckpt_model.step == 2
    assert [a.attempt for a in attempts(db, job.id)] == [1]

    listed = client.fine_tuning.jobs.list(metadata={"team": "a b"})
    assert [j.id for j in listed.data] == [job.id] and listed.has_more is False
    assert job.id not in [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "x"})]
    assert client.fine_tuning.jobs.retrieve(job.id).model_dump() == job.model_dump()

    # Every knob echoed, resolved: the run's learning rate and evaluation interval, the engine's defaults.
    final = job.method.supervised.hyperparameters.model_dump()  # type: ignore[union-attr]
    assert final["lora_r"] == 4 and final["lr_scheduler"] == "linear" and final["tuning"] == "lora"
    assert isinstance(final["learning_rate"], float) and isinstance(final["eval_interval"], int)
    assert isinstance(final["learning_rate_multiplier"], float)
    # Continuing from the fine-tuned model trains its adapter: a different shape is refused, not ignored.
    other_shape = {"model": job.fine_tuned_model, "training_file": training.id, "method": tiny_method(lora_r=8)}
    refused = post(jobs_server, "alpha", "/v1/fine_tuning/jobs", json=other_shape)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "method.supervised.hyperparameters.lora_r"
    continued = client.fine_tuning.jobs.create(model=job.fine_tuned_model, training_file=training.id)
    inherited = continued.method.supervised.hyperparameters.model_dump()  # type: ignore[union-attr]
    assert (inherited["lora_r"], inherited["lora_alpha"]) == (4, 8)
    client.fine_tuning.jobs.cancel(continued.id)


def test_list_pagination_newest_first(jobs_server: Server) -> None:
    client = jobs_server.openai("pager")
    training = client.files.create(file=("t.jsonl", chat_lines(10)), purpose="fine-tune")
    ids = [
        client.fine_tuning.jobs.create(
            model="tiny-chat", training_file=training.id, method=tiny_method(), metadata={"i": str(i)}
        ).id
        for i in range(3)
    ]
    for job_id in ids:
        client.fine_tuning.jobs.cancel(job_id)
    assert [j.id for j in client.fine_tuning.jobs.list(limit=2)] == ids[::-1]  # auto-paginates with after
    first = client.fine_tuning.jobs.list(limit=2)
    assert first.has_more is True and "first_id" not in first.model_dump()
    params = {"metadata[i]": "1"}
    raw = httpx.get(
        f"{jobs_server.base_url}/v1/fine_tuning/jobs",
        params=params,
        headers={"authorization": f"Bearer {jobs_server.key('pager')}"},
    ).json()
    assert [j["id"] for j in raw["data"]] == [ids[1]]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"training_file": "file-x"}, "model"),
        ({"model": "tiny-chat"}, "training_file"),
        (
            {
                "model": "tiny-chat",
                "training_file": "F",
                "method": {"type": "reinforcement", "reinforcement": {"grader": {}}},
            },
            "method.type",
        ),
        (
            {
                "model": "tiny-chat",
                "training_file": "F",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}},
            },
            "method.supervised.hyperparameters.n_epochs",
        ),
        (
            {
                "model": "tiny-chat",
                "training_file": "F",
                "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 11}}},  # engine.spec: beta <= 10
            },
            "method.dpo.hyperparameters.beta",
        ),
        (
            {
                "model": "tiny-chat",
                "training_file": "F",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"lora_r": 0}}},
            },
            "method.supervised.hyperparameters.lora_r",
        ),
        (
            {
                "model": "tiny-chat",
                "training_file": "F",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"lr_scheduler": "bogus"}}},
            },
            "method.supervised.hyperparameters.lr_scheduler",
        ),
        (
            {
                "model": "tiny-chat",
                "training_file": "F",
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"nonsense": 1}}},
            },
            "method.supervised.hyperparameters.nonsense",
        ),
        ({"model": "tiny-chat", "training_file": "F", "suffix": "a:b"}, "suffix"),
        ({"model": "tiny-chat", "training_file": "F", "seed": -1}, "seed"),
        ({"model": "tiny-chat", "training_file": "F", "metadata": {"k": 1}}, "metadata.k"),
        ({"model": "gpt-4o-mini", "training_file": "F"}, "model"),
        ({"model": "tiny-chat", "training_file": "file-doesnotexist"}, "training_file"),
        ({"model": "tiny-chat", "training_file": "FOREIGN"}, "training_file"),
        ({"model": "tiny-chat", "training_file": "BATCH"}, "training_file"),
        ({"model": "tiny-chat", "training_file": "F", "validation_file": "FOREIGN"}, "validation_file"),
        ({"model": "ft:tiny-chat:other:x:abcdefgh", "training_file": "F"}, "model"),
    ],
)
def test_malformed_requests_are_400_naming_the_param(jobs_server: Server, body: dict, param: str) -> None:
    client = jobs_server.openai("checker")
    ids = {
        "F": client.files.create(file=("t.jsonl", chat_lines(10)), purpose="fine-tune").id,
        "FOREIGN": jobs_server.openai("stranger")
        .files.create(file=("t.jsonl", chat_lines(10)), purpose="fine-tune")
        .id,
        "BATCH": client.files.create(file=("b.jsonl", b'{"custom_id": "1"}\n'), purpose="batch").id,
    }
    body = json.loads(json.dumps(body))
    for key in ("training_file", "validation_file"):
        if body.get(key) in ids:
            body[key] = ids[body[key]]
    answer = post(jobs_server, "checker", "/v1/fine_tuning/jobs", json=body)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    if "model" in body and "training_file" in body:
        with pytest.raises(openai.BadRequestError):
            client.fine_tuning.jobs.create(**body)
    assert client.fine_tuning.jobs.list().data == []


def _bad_line_file() -> bytes:
    good = chat_lines(11).decode().splitlines()
    good.insert(3, '{"messages": [{"role": "wizard", "content": "hi"}]}')
    return ("\n".join(good) + "\n").encode()


@pytest.mark.parametrize(
    ("training", "validation", "method", "code", "param", "needle"),
    [
        (
            chat_lines(7),
            None,
            "supervised",
            "invalid_n_examples",
            "training_file",
            "Training file has 7 example(s), but must have at least 10 examples",
        ),
        (_bad_line_file(), None, "supervised", "invalid_training_file", "training_file", "Line 4"),
        (b"not json\n" * 12, None, "supervised", "invalid_training_file", "training_file", "Line 1"),
        (
            preference_jsonl(12),
            None,
            "supervised",
            "invalid_training_file",
            "training_file",
            "fine-tune-preference format",
        ),
        (chat_lines(12), None, "dpo", "invalid_training_file", "training_file", "fine-tune-chat format"),
        (chat_lines(12), b'{"messages": 3}\n', "supervised", "invalid_validation_file", "validation_file", "Line 1"),
    ],
)
def test_dataset_that_cannot_train_fails_with_its_code(
    jobs_server: Server,
    training: bytes,
    validation: bytes | None,
    method: str,
    code: str,
    param: str,
    needle: str,
) -> None:
    client = jobs_server.openai("datasets")
    train_id = client.files.create(file=("t.jsonl", training), purpose="fine-tune").id
    valid_id = client.files.create(file=("v.jsonl", validation), purpose="fine-tune").id if validation else None
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=train_id,
        validation_file=valid_id,
        method={"type": method},  # type: ignore[arg-type]
    )
    assert job.status == "validating_files"
    job = wait_for(jobs_server, "datasets", job.id, ("failed", "succeeded", "cancelled"), timeout=60)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.param) == (code, param)
    assert needle in job.error.message
    assert job.finished_at is not None and job.fine_tuned_model is None
    last = client.fine_tuning.jobs.list_events(job.id, limit=1).data[0]
    assert (last.level, last.message) == ("error", job.error.message)


def test_idempotency_key_on_jobs_and_files(jobs_server: Server) -> None:
    key_headers = {"Idempotency-Key": "job-key-1"}
    file_id = post(
        jobs_server,
        "idem",
        "/v1/files",
        headers={"Idempotency-Key": "file-key-1"},
        files={"file": ("t.jsonl", chat_lines(10))},
        data={"purpose": "fine-tune"},
    ).json()["id"]
    again = post(
        jobs_server,
        "idem",
        "/v1/files",
        headers={"Idempotency-Key": "file-key-1"},
        files={"file": ("t.jsonl", chat_lines(10))},
        data={"purpose": "fine-tune"},
    )
    assert again.status_code == 200 and again.json()["id"] == file_id
    other = post(
        jobs_server,
        "idem",
        "/v1/files",
        headers={"Idempotency-Key": "file-key-1"},
        files={"file": ("t.jsonl", chat_lines(11))},
        data={"purpose": "fine-tune"},
    )
    assert other.status_code == 422 and other.json()["error"]["param"] == "Idempotency-Key"
    assert len(jobs_server.openai("idem").files.list().data) == 1

    body = {"model": "tiny-chat", "training_file": file_id, "method": tiny_method()}
    first = post(jobs_server, "idem", "/v1/fine_tuning/jobs", headers=key_headers, json=body)
    replay = post(jobs_server, "idem", "/v1/fine_tuning/jobs", headers=key_headers, json=body)
    assert first.status_code == replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    changed = post(jobs_server, "idem", "/v1/fine_tuning/jobs", headers=key_headers, json={**body, "seed": 3})
    assert changed.status_code == 422

    race_body = {**body, "suffix": "race"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda _: post(
                    jobs_server, "idem", "/v1/fine_tuning/jobs", headers={"Idempotency-Key": "race"}, json=race_body
                ),
                range(8),
            )
        )
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["id"] for a in answers}) == 1
    jobs = jobs_server.openai("idem").fine_tuning.jobs.list(limit=100).data
    assert len(jobs) == 2
    for job in jobs:
        jobs_server.openai("idem").fine_tuning.jobs.cancel(job.id)


def test_empty_json_body_posts_and_state_errors(jobs_server: Server) -> None:
    client = jobs_server.openai("empty")
    file_id = client.files.create(file=("t.jsonl", chat_lines(10)), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(model="tiny-chat", training_file=file_id, method=tiny_method())
    headers = {"content-type": "application/json"}
    cancelled = post(jobs_server, "empty", f"/v1/fine_tuning/jobs/{job.id}/cancel", headers=headers, content=b"")
    assert cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelled", "cancelling")
    wait_for(jobs_server, "empty", job.id, ("cancelled",))
    again = post(jobs_server, "empty", f"/v1/fine_tuning/jobs/{job.id}/resume", headers=headers, content=b"")
    assert again.status_code == 400 and again.json()["error"]["param"] == "fine_tuning_job_id"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-" + "x" * 24)


def test_all_untrainable_file_fails_in_validating_files_naming_its_lines(jobs_server: Server) -> None:
    """Passes the format check, but at this max_seq_length nothing can train: the doctor stops it before the queue."""
    client = jobs_server.openai("engine-check")
    rows = [
        {"messages": [{"role": "user", "content": "word " * 200 + str(i)}, {"role": "assistant", "content": "ok"}]}
        for i in range(8)
    ] + [
        {"messages": [{"role": "user", "content": f"hi {i}"}, {"role": "assistant", "content": "x", "weight": 0}]}
        for i in range(2)
    ]
    data = ("\n".join(json.dumps(x) for x in rows) + "\n").encode()
    file_id = client.files.create(file=("long.jsonl", data), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-chat", training_file=file_id, method=tiny_method(max_seq_length=32)
    )
    job = wait_for(jobs_server, "engine-check", job.id, ("failed", "succeeded", "cancelled"))
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.param) == ("invalid_training_file", "training_file")
    assert job.error.message.startswith("The job failed due to an invalid training file. No example can be trained")
    assert "(lines 1, 2, 3, 4, 5, 6, 7, 8)" in job.error.message and "(lines 9, 10)" in job.error.message
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert not any("validated" in m or "started" in m.lower() for m in messages), messages
    doctor = job.to_dict()["doctor"]
    assert doctor["training"]["dropped"]["lines"] == list(range(1, 9))
    assert doctor["training"]["untrainable"]["lines"] == [9, 10]


def test_doctor_findings_at_validation_warn_and_estimate_tokens(jobs_server: Server) -> None:
    client = jobs_server.openai("doctor-check")
    train = chat_jsonl(12)
    lines = train.decode().splitlines()
    valid = ("\n".join([lines[2], lines[5], *chat_jsonl(2, tag="v").decode().splitlines()]) + "\n").encode()
    train_id = client.files.create(file=("train.jsonl", train), purpose="fine-tune").id
    valid_id = client.files.create(file=("valid.jsonl", valid), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=train_id,
        validation_file=valid_id,
        method=tiny_method(n_epochs=2, max_seq_length=128),
    )
    job = wait_for(jobs_server, "doctor-check", job.id, ("queued", "running", "succeeded", "failed"))
    client.fine_tuning.jobs.cancel(job.id)
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    overlap = [e for e in events if (e.data or {}).get("code") == "train_valid_overlap"]
    assert len(overlap) == 1 and overlap[0].level == "warn"
    assert "3->1" in overlap[0].message and "6->2" in overlap[0].message
    validated = next(e for e in events if e.message.startswith("Files validated"))
    doctor = client.fine_tuning.jobs.retrieve(job.id).to_dict()["doctor"]
    per_epoch = doctor["training"]["trainable_tokens"]
    assert per_epoch > 0 and doctor["estimated_trained_tokens"] == 2 * per_epoch
    assert validated.data == {"estimated_trained_tokens": 2 * per_epoch}
    assert doctor["validation"]["validation_overlap"]["exact"] == [[3, 1], [6, 2]]
