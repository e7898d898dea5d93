"""tiny-chat construction, hashing, safe loading and the chat renderer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.chat import render, render_prompt, stop_token_ids
from engine.models import content_hash, ensure_base_model, load_model_and_tokenizer, tokenizer_hash
from engine.tinychat import Recipe
from tests.engine.engine_helpers import SUBPROCESS_ENV, tiny_chat_path

REPO = Path(__file__).resolve().parents[2]


SHORT = Recipe(steps=3, batch_tokens=512, skill_pairs=60, greetings=10)


def test_tiny_chat_is_byte_identical_across_builds(tmp_path: Path) -> None:
    # The full recipe pretrains for minutes; the same code path with a 3-step recipe shows the determinism.
    first = ensure_base_model("tiny-chat", tmp_path / "a", recipe=SHORT)
    again = ensure_base_model("tiny-chat", tmp_path / "b", recipe=SHORT)
    assert content_hash(again) == content_hash(first) != content_hash(tiny_chat_path())
    assert tokenizer_hash(again) == tokenizer_hash(first) == tokenizer_hash(tiny_chat_path())
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name
    # tinychat.json also records how long pretraining took (wall time); everything else in it is identical.
    records = [json.loads((d / "tinychat.json").read_text()) for d in (first, again)]
    for record in records:
        assert record["pretraining"].pop("seconds") >= 0
    assert records[0] == records[1]


def test_the_build_records_its_recipe_and_content_hash() -> None:
    record = json.loads((tiny_chat_path() / "tinychat.json").read_text())
    assert record["recipe"] == Recipe().as_dict()
    assert record["content_sha256"] == content_hash(tiny_chat_path())
    assert record["tokenizer_sha256"] == tokenizer_hash(tiny_chat_path())
    assert record["pretraining"]["loss_last"] < record["pretraining"]["loss_first"] / 3


def test_concurrent_first_use_builds_once_and_safely(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "engine", "build-tiny-chat", str(tmp_path), "--steps", "2"]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=SUBPROCESS_ENV)
        for _ in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir() if not p.name.endswith(".lock")) == ["tiny-chat"]
    record = json.loads((models / "tiny-chat" / "tinychat.json").read_text())
    assert record["recipe"]["steps"] == 2 and record["content_sha256"] == content_hash(models / "tiny-chat")


def test_loaded_model_is_a_llama_chat_model() -> None:
    model, tok = load_model_and_tokenizer(tiny_chat_path())
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tok)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert tokenizer_hash(tok) == tokenizer_hash(tiny_chat_path())


def test_non_safetensors_and_unknown_models_are_refused(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        ensure_base_model(str(tmp_path / "m"), tmp_path)
    with pytest.raises(ValueError, match="unknown base model"):
        ensure_base_model("some-org/some-model", tmp_path, allowed_hub_ids=[])


def test_render_matches_chat_template_and_masks_assistant_only() -> None:
    _, tok = load_model_and_tokenizer(tiny_chat_path())
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there, how are you?"},
        {"role": "assistant", "content": "Fine, thanks!"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "content": "Busy.", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": [{"type": "text", "text": "Bye now."}]},
    ]
    ids, mask = render(tok, msgs)
    plain = [
        {"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "Bye now."} for m in msgs
    ]
    assert ids == list(tok.apply_chat_template(plain, tokenize=True, return_dict=False))
    trained = tok.decode([i for i, k in zip(ids, mask, strict=True) if k])
    assert trained == "Fine, thanks!<|im_end|>Bye now.<|im_end|>"
    _, all_mask = render(tok, msgs, train_on_inputs=True)
    assert sum(all_mask) > sum(mask) and "Busy" not in tok.decode([i for i, k in zip(ids, all_mask, strict=True) if k])
    prompt = render_prompt(tok, msgs[:2])
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert ids[: len(prompt)] == prompt
