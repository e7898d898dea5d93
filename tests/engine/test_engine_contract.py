"""The typed engine boundary: events round-trip, bad lines are refused, manifests are checked, the doc is current."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.contract_doc import DOC_PATH, render
from engine.events import (
    EVENT_TYPES,
    BaseEvaluationEvent,
    CheckpointEvent,
    EngineEvent,
    EventError,
    FinalEvaluationEvent,
    MessageEvent,
    MetricsEvent,
    ResultEvent,
    StartedEvent,
    parse_event,
)
from engine.inference.manifest import BaseIdentity, check_manifest, read_manifest
from engine.inference.types import AdapterMismatchError
from engine.manifest import ArtifactManifest, ResolvedSpec

SUMMARY: dict[str, Any] = {
    "selected_step": 4,
    "last_step": 6,
    "checkpoint_selection": "best",
    "stopped_early_at": None,
    "valid_loss": {"base": 2.5, "tuned": 1.25},
    "valid_mean_token_accuracy": {"base": 0.5, "tuned": 0.75},
    "full_valid_loss": 1.3,
    "full_valid_mean_token_accuracy": 0.7,
    "generation": {
        "metric": "token_f1",
        "base": 0.1,
        "tuned": 0.9,
        "exact_match": {"base": 0.0, "tuned": 0.5},
        "n": 2,
        "examples": [{"generated": "a b", "reference": "a b"}],
    },
    "preference": None,
    "forgetting": {
        "metric": "general_text_loss",
        "base": 3.0,
        "tuned": 3.1,
        "skills": {"base": 0.5, "tuned": 0.5},
        "skills_by_name": {"base": {"add": 0.5}, "tuned": {"add": 0.5}},
    },
    "warnings": [{"code": "overfitting", "message": "valid loss rose"}],
    "seconds": 1.5,
    "helped": True,
}
PROBES = {"text_loss": 3.0, "skills": {"add": 0.5}, "skills_mean": 0.5}

# One of every event type, as the trainer writes it (fields it leaves out stay out).
EXAMPLES: list[EngineEvent] = [
    StartedEvent(
        total_steps=6,
        hyperparameters={"n_epochs": 3, "batch_size": 2, "learning_rate": 0.001, "lr_scheduler": "linear"},
        n_examples=4,
        n_validation_examples=2,
        validation_source="file",
        trained_tokens_estimate=300,
        method="supervised",
        tuning="lora",
        device="cpu",
    ),
    MetricsEvent(
        step=1, total_steps=6, train_loss=2.0, train_mean_token_accuracy=0.4, grad_norm=1.5, learning_rate=1e-3
    ),
    MetricsEvent(
        step=2, total_steps=6, train_loss=1.5, valid_loss=1.7, valid_mean_token_accuracy=0.5, trained_tokens=9
    ),
    CheckpointEvent(
        step=2, path="/data/ckpt/step-2", sha256="a" * 64, metrics={"step": 2, "valid_loss": 1.7}, best_step=2
    ),
    MessageEvent(level="warn", message="too long", code="too_long", file="training_file", count=1, lines=[3]),
    MessageEvent.model_validate(
        {"level": "warn", "code": "forgetting", "message": "forgot", "base": PROBES, "tuned": PROBES}
    ),
    BaseEvaluationEvent.model_validate(
        {
            "step": 0,
            "valid_loss": 2.5,
            "valid_mean_token_accuracy": 0.5,
            "generation": {"n": 2, "token_f1": 0.1, "exact_match": 0.0, "examples": []},
            "preference": None,
            "probes": PROBES,
        }
    ),
    FinalEvaluationEvent.model_validate({"step": 4, "evaluation": SUMMARY}),
    ResultEvent.model_validate(
        {
            "status": "succeeded",
            "output_dir": "/data/out",
            "adapter_dir": "/data/out/adapter",
            "metrics_csv": None,
            "trained_tokens": 600,
            "hyperparameters": {"n_epochs": 3},
            "error": None,
            "checkpoint": {"step": 6, "path": "/data/out/checkpoints/step-6", "sha256": "b" * 64},
            "metrics": {"step": 4, "valid_loss": 1.25},
            "evaluation": SUMMARY,
            "selected_step": 4,
        }
    ),
    ResultEvent.model_validate(
        {"status": "failed", "output_dir": "", "error": {"code": "invalid_spec", "message": "bad"}}
    ),
]


def test_every_event_type_round_trips_through_one_line() -> None:
    assert {type(e) for e in EXAMPLES} == set(EVENT_TYPES)
    for event in EXAMPLES:
        line = event.to_line()
        assert "\n" not in line
        again = parse_event(line)
        assert type(again) is type(event) and again == event
        assert again.to_wire() == json.loads(line) == event.to_wire()


def test_fields_the_writer_left_out_stay_off_the_wire() -> None:
    wire = MetricsEvent(step=1, total_steps=2, train_loss=1.0).to_wire()
    assert wire == {"type": "metrics", "step": 1, "total_steps": 2, "train_loss": 1.0}
    assert BaseEvaluationEvent().to_wire() == {"type": "evaluation", "stage": "base"}  # the tags always go out
    result = ResultEvent(status="paused", output_dir="/x").to_wire()
    assert result["type"] == "result" and "checkpoint" not in result


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        "[1, 2]",
        '"started"',
        "{}",
        '{"type": "progress", "step": 1}',  # an unknown type
        '{"type": "metrics", "step": 1}',  # required fields missing
        '{"type": "metrics", "step": "one", "total_steps": 2, "train_loss": 1}',
        '{"type": "metrics", "step": 1, "total_steps": 2, "train_loss": 1, "lossy": 3}',  # unknown field
        '{"type": "evaluation", "stage": "middle", "step": 1}',
        '{"type": "result", "status": "exploded"}',
        '{"type": "message", "level": "shout", "message": "x"}',
    ],
)
def test_a_malformed_or_unknown_line_is_refused(line: str) -> None:
    with pytest.raises(EventError, match="not an engine event"):
        parse_event(line)


def _manifest(**overrides: Any) -> dict[str, Any]:
    good = ArtifactManifest(
        kind="lora",
        base_model="tiny-chat",
        base_model_sha256="a" * 64,
        tokenizer_sha256="b" * 64,
        chat_template="{{ messages }}",
        special_tokens={"eos_token": "<|im_end|>"},
        stop_tokens=["<|im_end|>"],
        stop_token_ids=[2],
        training_file_sha256="c" * 64,
        validation_file_sha256=None,
        spec=ResolvedSpec(method="supervised", tuning={"type": "lora", "lora_r": 8}, hyperparameters={}, seed=1),
        step=3,
        trained_tokens=100,
    ).model_dump(mode="json")
    return {**good, **overrides}


BASE = BaseIdentity(name="tiny-chat", content_hash="a" * 64, tokenizer_hash="b" * 64)


def test_a_complete_manifest_is_served(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest()))
    manifest = read_manifest(tmp_path, "ft:ok")
    check_manifest(manifest, BASE, "ft:ok")
    assert manifest.stop_strings == ("<|im_end|>",) and manifest.base_model == "tiny-chat"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"base_model": "/srv/models/tiny-chat"}, "server path"),
        ({"base_model": "~/models/x"}, "server path"),
        ({"base_model": "../models/x"}, "relative path"),
        ({"base_model_sha256": "abc"}, "base_model_sha256"),
        ({"legacy_hash": "a" * 64}, "legacy_hash"),  # one key per fact: no second name for anything
        ({"manifest_version": 1}, "manifest_version"),
    ],
)
def test_a_manifest_naming_a_server_path_or_malformed_is_refused(
    tmp_path: Path, change: dict[str, Any], why: str
) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest(**change)))
    with pytest.raises(AdapterMismatchError, match=why) as refused:
        read_manifest(tmp_path, "ft:bad")
    assert str(tmp_path) not in str(refused.value) and "ft:bad" in str(refused.value)


@pytest.mark.parametrize(
    "fact",
    ["base_model", "base_model_sha256", "tokenizer_sha256", "chat_template", "stop_token_ids", "spec", "kind"],
)
def test_a_manifest_missing_a_fact_is_refused(tmp_path: Path, fact: str) -> None:
    data = _manifest()
    del data[fact]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(AdapterMismatchError, match=fact):
        read_manifest(tmp_path, "ft:bad")


def test_the_contract_modules_import_only_stdlib_and_pydantic() -> None:
    code = (
        "import sys, engine.events, engine.manifest\n"
        "allowed = set(sys.stdlib_module_names) | {'engine', 'pydantic', 'pydantic_core', 'annotated_types',"
        " 'typing_extensions', 'typing_inspection', '__main__'}\n"
        "print(sorted(m for m in {n.split('.')[0] for n in sys.modules} - allowed if not m.startswith('_')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_committed_contract_doc_is_generated_from_the_models() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render(), (
        "docs/engine-contract.md is stale: python -m engine.contract_doc"
    )
