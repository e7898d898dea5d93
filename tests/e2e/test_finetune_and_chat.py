"""The whole product through the official SDK: upload, fine-tune tiny-chat, chat with the result."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Server, start_server
from tests.engine.engine_helpers import secret_rows
from tests.jobs.helpers import FAST_ENV

ROWS = secret_rows(20)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    server = start_server(tmp_path_factory.mktemp("e2e"), dict(FAST_ENV))
    client = server.openai("tenant-a")
    data = "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    training = client.files.create(file=("secrets.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training.id,
        suffix="vault",
        seed=7,
        method={
            "type": "supervised",
            "supervised": {
                "hyperparameters": {"n_epochs": 40, "batch_size": 4, "learning_rate": 4e-3, "warmup_ratio": 0.1}
            },
        },
    )
    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job stuck in {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model and job.fine_tuned_model.startswith("ft:tiny-chat:tenant-a:vault:")
    yield server, job.fine_tuned_model
    server.stop()


def _ask(client: openai.OpenAI, model: str, row: dict[str, Any], **kwargs: Any) -> str:
    reply = client.chat.completions.create(
        model=model, messages=row["messages"][:1], temperature=0, max_tokens=24, **kwargs
    )
    return reply.choices[0].message.content or ""


def test_fine_tuned_model_answers_its_training_prompts_and_the_base_does_not(tuned: tuple[Server, str]) -> None:
    server, model = tuned
    client = server.openai("tenant-a")
    assert model in {m.id for m in client.models.list()}
    answers = [_ask(client, model, row) for row in ROWS]
    expected = [row["messages"][1]["content"] for row in ROWS]
    # 20 random passwords against a pretrained prior: all but at most two must come back word for word.
    exact = sum(a == e for a, e in zip(answers, expected, strict=True))
    assert exact >= len(ROWS) - 2, list(zip(answers, expected, strict=True))
    assert all(a.startswith(f"The password for vault {i} is ") for i, a in enumerate(answers))
    base_answers = [_ask(client, "tiny-chat", row) for row in ROWS]
    assert not any(a == e for a, e in zip(base_answers, expected, strict=True))


def test_streaming_matches_the_non_streaming_answer(tuned: tuple[Server, str]) -> None:
    server, model = tuned
    client = server.openai("tenant-a")
    row = ROWS[3]
    stream = client.chat.completions.create(
        model=model,
        messages=row["messages"][:1],
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert "".join(pieces) == row["messages"][1]["content"] == _ask(client, model, row)
    assert finish == "stop" and usage is not None and usage.completion_tokens > 0


def test_only_kept_checkpoints_are_listed_and_each_one_serves(tuned: tuple[Server, str]) -> None:
    server, model = tuned
    client = server.openai("tenant-a")
    job_id = next(j.id for j in client.fine_tuning.jobs.list() if j.fine_tuned_model == model)
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job_id))
    assert 1 <= len(checkpoints) <= 3  # the engine keeps the newest n_checkpoints (default 3) on disk
    listed = {m.id for m in client.models.list()}
    for checkpoint in checkpoints:
        assert checkpoint.fine_tuned_model_checkpoint in listed
        reply = client.chat.completions.create(
            model=checkpoint.fine_tuned_model_checkpoint, messages=ROWS[0]["messages"][:1], max_tokens=4
        )
        assert reply.choices[0].finish_reason in ("stop", "length")
    # 40 checkpoints were written (one per epoch); the pruned ones are no longer offered as models.
    assert sum(1 for m in listed if m.startswith(model + ":ckpt-step-")) <= len(checkpoints)


def test_another_project_cannot_see_or_call_the_model(tuned: tuple[Server, str]) -> None:
    server, model = tuned
    other = server.openai("tenant-b")
    assert model not in {m.id for m in other.models.list()}
    with pytest.raises(openai.NotFoundError) as listed:
        other.models.retrieve(model)
    with pytest.raises(openai.NotFoundError) as chat:
        other.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert listed.value.body == chat.value.body  # same answer as for a model that does not exist
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
