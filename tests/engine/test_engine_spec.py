"""Spec validation (errors name the field) and "auto" hyperparameter resolution."""

from __future__ import annotations

import pytest

from engine.hparams import auto_batch_size, auto_lr_multiplier, auto_n_epochs, resolve
from engine.spec import SpecError, parse_spec

BASE = {"base_model": "tiny-chat", "data_dir": "d", "training_file": "t.jsonl", "output_dir": "o"}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"learning_rate_multiplier": "fast"}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"lr_scheduler": "step"}}, "hyperparameters.lr_scheduler"),
        ({"hyperparameters": {"warmup_ratio": 1.5}}, "hyperparameters.warmup_ratio"),
        ({"tuning": {"type": "qlora"}}, "tuning.type"),
        ({"tuning": {"lora_r": 0}}, "tuning.lora_r"),
        ({"tuning": {"target_modules": []}}, "tuning.target_modules"),
        ({"method": "ppo"}, "method"),
        ({"surprise": 1}, "surprise"),
        ({"training_file": None}, "training_file"),
    ],
)
def test_invalid_spec_names_the_field(patch: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **patch})
    assert str(info.value).startswith(field + ":") or f"; {field}:" in str(info.value), str(info.value)


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(SpecError, match="output_dir"):
        parse_spec({k: v for k, v in BASE.items() if k != "output_dir"})


def test_auto_epochs_follow_the_cookbook_heuristic() -> None:
    assert auto_n_epochs(10) == 10  # 30 < 100 -> min(25, 100 // 10)
    assert auto_n_epochs(2) == 25
    assert auto_n_epochs(100) == 3
    assert auto_n_epochs(10_000) == 2  # 30000 > 25000 -> 25000 // 10000
    assert auto_n_epochs(100_000) == 1


def test_auto_batch_and_multiplier() -> None:
    assert auto_batch_size(20) == 1 and auto_batch_size(4000) == 8 and auto_batch_size(10**6) == 256
    assert auto_lr_multiplier(1) == 0.5 and auto_lr_multiplier(8) == 1.0 and auto_lr_multiplier(256) == 2.0


def test_resolved_values_are_concrete() -> None:
    spec = parse_spec({**BASE, "method": "dpo", "tuning": {"type": "full"}})
    r = resolve(spec, 50)
    assert (r.n_epochs, r.batch_size, r.beta, r.learning_rate) == (3, 1, 0.1, 1e-4)
    assert r.total_steps == 150 and r.effective_learning_rate == pytest.approx(0.5e-4)
