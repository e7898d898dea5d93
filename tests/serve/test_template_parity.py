"""Serving renders a conversation exactly as training did: same template, same token ids, same stop tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.errors import TuneForgeError
from engine import train
from engine.chat import render
from engine.inference.loading import load_base
from serve.protocol import ChatMessage
from serve.service import InferenceService
from serve.settings import ServeSettings
from tests.engine.engine_helpers import data_dir, secret_rows, spec, tiny_chat_path, write_jsonl

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You keep secrets."},
    {"role": "user", "content": "Vault 3 password?"},
    {"role": "assistant", "content": "Ask the keeper.", "weight": 0},
    {"role": "user", "content": "Please, vault 3?"},
    {"role": "assistant", "content": "The password for vault 3 is harbor 93."},
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("parity")
    data = write_jsonl(tmp / "d.jsonl", secret_rows(12))
    result = train(spec(tmp, data, hp={"n_epochs": 1}))
    assert result.status == "succeeded", result.error
    return Path(result.adapter_dir)


def test_serving_prompt_is_the_training_prefix_of_the_same_conversation(adapter: Path) -> None:
    base = load_base(str(tiny_chat_path()), data_dir())
    service = InferenceService(base, ServeSettings(), data_dir=adapter.parent)  # adapters load from under it
    service.load_adapter("ft:parity", str(adapter))
    target = service.resolve("ft:parity")
    assert target.chat_template == base.tokenizer.chat_template  # pinned in the adapter's manifest

    trained_ids, labels = render(base.tokenizer, CONVERSATION)
    served_ids = service.chat_prompt(target, [ChatMessage.model_validate(m) for m in CONVERSATION[:-1]])
    assert trained_ids[: len(served_ids)] == served_ids
    # What training taught the model to produce right after that prompt is exactly the last answer.
    answer = [i for i, keep in zip(trained_ids[len(served_ids) :], labels[len(served_ids) :], strict=True) if keep]
    assert base.tokenizer.decode(answer) == CONVERSATION[-1]["content"] + "<|im_end|>"
    assert base.tokenizer.convert_tokens_to_ids("<|im_end|>") in target.stop_token_ids


def test_an_adapter_for_another_base_model_is_refused(adapter: Path, tmp_path: Path) -> None:
    import json
    import shutil

    foreign = tmp_path / "foreign"
    shutil.copytree(adapter, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["base_model_sha256"] = "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    base = load_base(str(tiny_chat_path()), data_dir())
    service = InferenceService(base, ServeSettings(), data_dir=tmp_path)
    with pytest.raises(TuneForgeError) as err:
        service.load_adapter("ft:foreign", str(foreign))
    assert err.value.status_code == 400 and err.value.code == "adapter_mismatch"
