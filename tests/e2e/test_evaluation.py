"""Every job says, with numbers, whether it helped and what it cost: through the official SDK, embedded default."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.conftest import Server, start_server
from tests.engine.engine_helpers import secret_rows
from tests.jobs.helpers import FAST_ENV

TERMINAL = ("succeeded", "failed", "cancelled")


def facts(start: int, stop: int, seed: int) -> list[dict[str, Any]]:
    return secret_rows(stop - start, seed=seed, start=start)


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handle = start_server(tmp_path_factory.mktemp("evaluation"), dict(FAST_ENV))
    yield handle
    handle.stop()


def run_job(
    client: openai.OpenAI, train: bytes, valid: bytes | None, hyperparameters: dict[str, Any], suffix: str
) -> Any:
    training = client.files.create(file=(f"{suffix}.jsonl", train), purpose="fine-tune")
    extra: dict[str, Any] = {}
    if valid is not None:
        extra["validation_file"] = client.files.create(file=(f"{suffix}-valid.jsonl", valid), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=training.id,
        suffix=suffix,
        seed=11,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        **extra,
    )
    deadline = time.monotonic() + 600
    while job.status not in TERMINAL:
        assert time.monotonic() < deadline, f"{job.id} stuck in {job.status}"
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    return job


def events(client: openai.OpenAI, job_id: str) -> list[Any]:
    return list(client.fine_tuning.jobs.list_events(job_id, limit=1000))[::-1]


def warning_codes(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.data["code"] for e in events(client, job_id) if e.level == "warn" and e.data and "code" in e.data]


def evaluation_of(job: Any) -> dict[str, Any]:
    summary = job.model_extra.get("evaluation") if job.model_extra else None
    assert isinstance(summary, dict), "the job object has no evaluation"
    return summary


def test_a_job_on_made_up_facts_reports_that_it_helped(server: Server) -> None:
    client = server.openai("facts")
    job = run_job(
        client,
        jsonl(facts(0, 32, seed=1)),
        None,
        {"n_epochs": 8, "batch_size": 4, "learning_rate": 3e-3, "validation_split": 0.25},
        "facts",
    )
    summary = evaluation_of(job)
    assert summary["valid_loss"]["tuned"] < summary["valid_loss"]["base"] - 1.0
    assert summary["generation"]["metric"] == "token_f1" and summary["generation"]["n"] == 8
    assert summary["generation"]["tuned"] > summary["generation"]["base"]
    assert summary["full_valid_loss"] is not None and summary["helped"] is True
    assert summary["forgetting"]["base"] > 0 and summary["forgetting"]["tuned"] > 0
    assert set(summary["forgetting"]["skills"]) == {"base", "tuned"}
    # The same figures in events and in the results file.
    evaluation_events = [e for e in events(client, job.id) if e.data and e.data.get("stage")]
    assert [e.data["stage"] for e in evaluation_events] == ["base", "final"]
    assert evaluation_events[0].message.startswith("Base model before training: validation loss=")
    assert evaluation_events[0].data["valid_loss"] == summary["valid_loss"]["base"]
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    assert rows[0]["step"] == "0" and float(rows[0]["valid_loss"]) == pytest.approx(
        summary["valid_loss"]["base"], rel=1e-4
    )
    selected = next(r for r in rows if r["step"] == str(summary["selected_step"]))
    assert float(selected["full_valid_loss"]) == pytest.approx(summary["full_valid_loss"], rel=1e-4)
    # The official SDK, strict response validation included, parses the job object with its extension.
    strict = server.openai("facts", _strict_response_validation=True)
    assert strict.fine_tuning.jobs.retrieve(job.id).id == job.id
    assert any(j.id == job.id for j in strict.fine_tuning.jobs.list())


def test_an_overfitting_job_warns_stops_early_and_serves_its_best_checkpoint(server: Server) -> None:
    client = server.openai("overfit")
    job = run_job(
        client,
        jsonl(facts(0, 10, seed=2)),
        jsonl(facts(20, 30, seed=3)),
        {
            "n_epochs": 30,
            "batch_size": 2,
            "learning_rate": 3e-3,
            "lr_scheduler": "constant",
            "eval_interval": 5,
            "n_checkpoints": 2,
            "early_stopping_patience": 2,
        },
        "overfit",
    )
    summary = evaluation_of(job)
    history = events(client, job.id)
    overfit = [e for e in history if e.data and e.data.get("code") == "overfitting"]
    assert (
        len(overfit) == 1
        and overfit[0].level == "warn"
        and f"since step {overfit[0].data['step']}" in (overfit[0].message)
    )
    assert any(e.data and e.data.get("code") == "early_stopping" for e in history)
    assert summary["stopped_early_at"] is not None and summary["stopped_early_at"] < 150
    assert summary["checkpoint_selection"] == "best" and summary["selected_step"] < summary["last_step"]
    assert "overfitting" in [w["code"] for w in summary["warnings"]]
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
    published = [c for c in checkpoints if c.fine_tuned_model_checkpoint == job.fine_tuned_model]
    assert len(published) == 1 and published[0].step_number == summary["selected_step"]
    losses = {c.step_number: c.metrics.valid_loss for c in checkpoints}
    assert all(v is not None for v in losses.values()) and len(losses) >= 2
    assert losses[summary["selected_step"]] == min(losses.values())
    assert published[0].metrics.full_valid_loss == pytest.approx(summary["full_valid_loss"], rel=1e-4)
    reply = client.chat.completions.create(
        model=job.fine_tuned_model,
        temperature=0,
        max_tokens=16,
        messages=[{"role": "user", "content": "Vault 3 password?"}],
    )
    assert (reply.choices[0].message.content or "").startswith("The password for vault 3 is")


def test_an_aggressive_full_fine_tune_warns_about_forgetting(server: Server) -> None:
    client = server.openai("forget")
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Say the code {i}."},
                {"role": "assistant", "content": "zzz zzz zzz zzz zzz zzz zzz zzz"},
            ]
        }
        for i in range(12)
    ]
    job = run_job(
        client,
        jsonl(rows),
        None,
        {"n_epochs": 6, "batch_size": 2, "learning_rate": 2e-3, "lr_scheduler": "constant", "tuning": "full"},
        "forget",
    )
    summary = evaluation_of(job)
    assert summary["forgetting"]["tuned"] > summary["forgetting"]["base"] + 0.25
    assert "forgetting" in warning_codes(client, job.id)
    warning = next(w for w in summary["warnings"] if w["code"] == "forgetting")
    assert "general text" in warning["message"] and summary["checkpoint_selection"] == "last"
