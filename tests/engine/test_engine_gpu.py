"""The same training path on CUDA in bf16; skipped (never faked) on machines without a GPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine import train
from engine.events import EngineEvent, MetricsEvent
from tests.engine.engine_helpers import secret_rows, spec, write_jsonl

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; this machine has none"),
]


def test_lora_training_runs_on_cuda_in_bf16(tmp_path: Path) -> None:
    from engine.models import load_model_and_tokenizer
    from tests.engine.engine_helpers import tiny_chat_path

    model, _ = load_model_and_tokenizer(tiny_chat_path())
    assert next(model.parameters()).device.type == "cuda"
    if torch.cuda.is_bf16_supported():
        assert next(model.parameters()).dtype == torch.bfloat16
    data = write_jsonl(tmp_path / "d.jsonl", secret_rows(20))
    events: list[EngineEvent] = []
    result = train(spec(tmp_path, data, hp={"n_epochs": 3}), events=events.append)
    assert result.status == "succeeded", result.error
    losses = [e.train_loss for e in events if isinstance(e, MetricsEvent)]
    assert losses and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    assert (Path(result.adapter_dir) / "adapter_model.safetensors").is_file()
