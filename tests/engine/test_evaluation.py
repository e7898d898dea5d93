"""Evaluation inside engine.train: scores, overfitting watch, best checkpoint kept and published, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from engine import train
from engine.data import Example
from engine.evaluation import ForgettingLimits, OverfitWatch, exact_match, forgetting_warning, split_answer, token_f1
from engine.probes import ProbeResult
from tests.engine.engine_helpers import secret_rows, spec, write_jsonl


def _collect(s: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []  # each event as it goes on the wire
    return train(s, events=lambda e: events.append(e.to_wire())), events


def test_answer_scores() -> None:
    assert token_f1("The password is amber 12.", "The password is amber 12.") == 1.0
    assert token_f1("the password is onyx", "The password is amber 12.") == 2 * (3 / 4) * (3 / 6) / (3 / 4 + 3 / 6)
    assert token_f1("", "something") == 0.0 and token_f1("", "") == 1.0
    assert exact_match(" yes ", "yes") == 1.0 and exact_match("yes.", "yes") == 0.0


def test_the_answer_is_the_last_trained_span() -> None:
    ex = Example(ids=[1, 2, 3, 4, 5, 6, 7], mask=[0, 0, 1, 1, 0, 1, 1], line=1)
    assert split_answer(ex) == ([1, 2, 3, 4, 5], [6, 7])
    assert split_answer(Example(ids=[1, 2], mask=[0, 0], line=1)) is None
    assert split_answer(Example(ids=[1, 2], mask=[1, 1], line=1)) is None  # nothing to prompt with


def test_overfitting_needs_rising_validation_and_falling_training_loss() -> None:
    watch = OverfitWatch(patience=2)
    assert [watch.add(s, v, t) for s, v, t in [(5, 3.0, 2.0), (10, 2.5, 1.5), (15, 2.6, 1.2)]] == [None] * 3
    assert watch.add(20, 2.7, 1.0) == 10  # began at the minimum, two rises later
    flat = OverfitWatch(patience=2)
    for s, v, t in [(5, 3.0, 2.0), (10, 2.5, 1.5), (15, 2.6, 1.6), (20, 2.7, 1.7)]:
        assert flat.add(s, v, t) is None  # training loss rose too: noise or a too-high learning rate, not overfitting
    restored = OverfitWatch(patience=2)
    restored.restore(watch.state())
    assert restored.history == watch.history


def test_forgetting_is_reported_beyond_the_limits_only() -> None:
    limits = ForgettingLimits(text_loss_increase=0.25, skill_drop=0.15)
    base = ProbeResult(text_loss=1.5, skills={"add": 0.8, "count": 1.0})
    assert forgetting_warning(base, ProbeResult(1.7, {"add": 0.7, "count": 1.0}), limits) is None
    loss = forgetting_warning(base, ProbeResult(1.9, {"add": 0.8, "count": 1.0}), limits)
    assert loss is not None and loss["code"] == "forgetting" and "1.500 to 1.900" in loss["message"]
    skills = forgetting_warning(base, ProbeResult(1.5, {"add": 0.5, "count": 0.9}), limits)
    assert skills is not None and "0.90 to 0.70" in skills["message"]


def test_validation_split_holds_out_a_seeded_share(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(20))
    res, events = _collect(spec(tmp_path, data, hp={"validation_split": 0.2, "n_epochs": 1, "batch_size": 4}))
    assert res.status == "succeeded", res.error
    started = next(e for e in events if e["type"] == "started")
    assert (started["n_examples"], started["n_validation_examples"], started["validation_source"]) == (16, 4, "split")
    assert res.hyperparameters["total_steps"] == 4 and res.evaluation.valid_loss.base is not None
    assert res.evaluation.generation.n == 4
    again, _ = _collect(
        spec(
            tmp_path,
            data,
            output_dir=str(tmp_path / "again"),
            hp={"validation_split": 0.2, "n_epochs": 1, "batch_size": 4},
        )
    )
    assert again.evaluation.valid_loss == res.evaluation.valid_loss  # the same examples held out


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(path.glob("*.safetensors"))))


def test_best_checkpoint_is_kept_published_and_survives_resume(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(10, seed=2))
    valid = write_jsonl(tmp_path / "valid.jsonl", secret_rows(30, seed=3)[20:])
    hp = {
        "n_epochs": 24,
        "batch_size": 2,
        "learning_rate": 3e-4,
        "lr_scheduler": "constant",
        "eval_interval": 5,
        "n_checkpoints": 1,
    }
    s = spec(tmp_path, data, validation_file=str(valid), hp=hp, tuning={"type": "full"})
    res, events = _collect(s)
    assert res.status == "succeeded", res.error
    summary = res.evaluation
    best = summary.selected_step
    assert summary.checkpoint_selection == "best" and best < summary.last_step == 120
    assert any(e.get("code") == "overfitting" for e in events if e["type"] == "message")
    valid_losses = {e["step"]: e["valid_loss"] for e in events if e["type"] == "metrics" and "valid_loss" in e}
    assert valid_losses[best] == min(valid_losses.values())
    kept = sorted(p.name for p in (Path(res.output_dir) / "checkpoints").iterdir())
    assert kept == sorted({f"step-{best}", "step-120"})  # n_checkpoints=1 plus the best, which is never pruned
    published = _tensors(Path(res.adapter_dir))
    best_weights = _tensors(Path(res.output_dir) / "checkpoints" / f"step-{best}")
    assert all(torch.equal(published[k], best_weights[k]) for k in best_weights)
    assert json.loads((Path(res.adapter_dir) / "manifest.json").read_text())["step"] == best
    assert res.final_metrics["full_valid_loss"] == summary.full_valid_loss
    # A run resumed from the last checkpoint knows the base figures and the best checkpoint from before.
    resumed, _ = _collect(
        {
            **s,
            "output_dir": str(tmp_path / "resumed"),
            "resume_from": str(Path(res.output_dir) / "checkpoints" / "step-120"),
        }
    )
    assert resumed.status == "succeeded", resumed.error
    assert resumed.evaluation.selected_step == best
    assert resumed.evaluation.valid_loss.base == summary.valid_loss.base
