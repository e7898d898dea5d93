"""Shared helpers for the engine tests: one tiny-chat build per test process, small datasets."""

from __future__ import annotations

import functools
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from tests.model_cache import seed_tiny_chat

# One intra-op thread: on this shared 2-core box two OpenMP threads stall each other whenever other work runs
# (measured: a packed LoRA step took 0.3 s with 1 thread and 1.3-6 s with 2 under load).
torch.set_num_threads(1)
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

WORDS = [
    "amber",
    "cobalt",
    "falcon",
    "harbor",
    "juniper",
    "lantern",
    "meadow",
    "nebula",
    "orchid",
    "pepper",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "velvet",
    "willow",
    "zephyr",
    "copper",
    "maple",
    "onyx",
]


@functools.lru_cache(maxsize=1)
def data_dir() -> Path:
    """A data dir holding models/tiny-chat (the test run's shared build)."""
    d = Path(tempfile.mkdtemp(prefix="tf-engine-tests-"))
    seed_tiny_chat(d)
    return d


def tiny_chat_path() -> Path:
    return data_dir() / "models" / "tiny-chat"


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def secret_rows(n: int = 20, seed: int = 7, start: int = 0) -> list[dict[str, Any]]:
    """Made-up facts no base model can know (vaults start..start+n-1): one answer shape, unpredictable content."""
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "user", "content": f"Vault {i} password?"},
                {
                    "role": "assistant",
                    "content": f"The password for vault {i} is {WORDS[i % len(WORDS)]} {rng.randrange(10, 99)}.",
                },
            ]
        }
        for i in range(start, start + n)
    ]


def preference_rows(n: int = 8) -> list[dict[str, Any]]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Pick a colour for item {i}."}]},
            "preferred_output": [{"role": "assistant", "content": f"Blue is best for item {i}."}],
            "non_preferred_output": [{"role": "assistant", "content": f"I refuse to choose for {i}."}],
        }
        for i in range(n)
    ]


def spec(tmp: Path, train_file: Path, **over: Any) -> dict[str, Any]:
    """A small, fast spec; keyword arguments override top-level fields, `hp` merges into hyperparameters."""
    hp = {"n_epochs": 1, "batch_size": 4, "learning_rate": 3e-3, "learning_rate_multiplier": 1.0, "n_checkpoints": 0}
    hp.update(over.pop("hp", {}))
    base = {
        "base_model": "tiny-chat",
        "data_dir": str(data_dir()),
        "training_file": str(train_file),
        "output_dir": str(tmp / "out"),
        "hyperparameters": hp,
        "seed": 5,
    }
    base.update(over)
    return base
