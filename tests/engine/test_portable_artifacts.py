"""Portable artifacts: the base named by its public name, stock transformers/peft load them elsewhere, vLLM's LoRA
rules hold, and only the newest checkpoint keeps optimizer state."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from engine import train
from engine.checkpoint import STRIPPABLE, verify_checkpoint
from engine.manifest import read_manifest
from engine.spec import SpecError, parse_spec
from tests.engine.engine_helpers import SUBPROCESS_ENV, secret_rows, spec, tiny_chat_path, write_jsonl

LORA_KEY = re.compile(r"^base_model\.model\.model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.lora_[AB]\.weight$")


def _run(tmp: Path, kind: str = "lora", **over: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Four steps, a checkpoint after each, three kept; the base given as a server path, named `tiny-chat`."""
    data = write_jsonl(tmp / "train.jsonl", secret_rows(8))
    s = spec(
        tmp,
        data,
        base_model=str(tiny_chat_path()),
        base_model_name="tiny-chat",
        hp={"batch_size": 2, "checkpoint_interval": 1, "n_checkpoints": 3},
        tuning={"type": kind},
        evaluation={"enabled": False},
    )
    s.update(over)
    events: list[dict[str, Any]] = []
    res = train(s, events=lambda e: events.append(e.to_wire()))
    assert res.status == "succeeded", res.error
    return res, events


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    return _run(tmp_path_factory.mktemp("lora"))


def _disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _sealed_size(ckpt: Path) -> int:
    """What the checkpoint held when it was written (MANIFEST.json lists every file, stripped ones included)."""
    files = json.loads((ckpt / "MANIFEST.json").read_text())["files"]
    return sum(int(meta["size"]) for meta in files.values()) + (ckpt / "MANIFEST.json").stat().st_size


def test_artifacts_name_the_base_by_its_public_name(lora_run: tuple[Any, list[dict[str, Any]]]) -> None:
    res, _ = lora_run
    out = Path(res.output_dir)
    dirs = [out / "adapter", *sorted((out / "checkpoints").iterdir())]
    for d in dirs:
        config = json.loads((d / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "tiny-chat" and config["revision"] is None, d.name
        assert not config.get("modules_to_save"), d.name  # vLLM refuses adapters carrying full layer copies
        assert read_manifest(d).base_model == "tiny-chat", d.name
        with safe_open(str(d / "adapter_model.safetensors"), framework="numpy") as fh:
            keys = list(fh.keys())
        # Only LoRA factors of the block projections: no embedding, lm_head or other full tensors.
        assert keys and all(LORA_KEY.match(k) for k in keys), [k for k in keys if not LORA_KEY.match(k)][:3]
        for f in d.glob("*.json"):
            text = f.read_text()
            assert str(tiny_chat_path()) not in text and str(out) not in text, f  # no server path anywhere


def test_public_name_is_checked_and_defaults_to_the_offered_name(tmp_path: Path) -> None:
    base = {"base_model": "/srv/models/qwen", "data_dir": "/d", "training_file": "t", "output_dir": "o"}
    for bad in ("/srv/models/qwen", "../qwen", "~/qwen", "C:\\models\\qwen"):
        with pytest.raises(SpecError, match="base_model_name"):
            parse_spec({**base, "base_model_name": bad})
    assert parse_spec({**base, "base_model_name": "Qwen/Qwen2.5-0.5B"}).base_model_name == "Qwen/Qwen2.5-0.5B"
    # A hub-style public name carries into adapter_config.json, so stock peft fetches that base elsewhere.
    res, _ = _run(
        tmp_path, base_model_name="acme/tiny-chat", hyperparameters={"batch_size": 4, "n_epochs": 1, "n_checkpoints": 0}
    )
    config = json.loads((Path(res.adapter_dir) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "acme/tiny-chat"
    assert read_manifest(Path(res.adapter_dir)).base_model == "acme/tiny-chat"


_LOAD_ELSEWHERE = textwrap.dedent(
    """
    import json, sys, torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained("tiny-chat")
    ids = torch.tensor([json.loads(sys.argv[1])])
    auto = AutoPeftModelForCausalLM.from_pretrained("adapter")  # finds the base by adapter_config.json's name
    stock = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("tiny-chat"), "adapter")
    out = {}
    for name, model in (("auto", auto), ("stock", stock)):
        model.eval()
        gen = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        out[name] = gen[0, ids.shape[1]:].tolist()
    print(json.dumps(out))
    """
)


def test_stock_peft_loads_the_adapter_from_another_directory(
    lora_run: tuple[Any, list[dict[str, Any]]], tmp_path: Path
) -> None:
    from peft import PeftModel

    from engine.chat import render_prompt
    from engine.models import load_model_and_tokenizer

    res, _ = lora_run
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(res.adapter_dir, elsewhere / "adapter")
    shutil.copytree(tiny_chat_path(), elsewhere / "tiny-chat")  # the base placed beside it, under its public name
    env = {**SUBPROCESS_ENV, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    import torch

    model, tok = load_model_and_tokenizer(tiny_chat_path())
    tuned = PeftModel.from_pretrained(model, res.adapter_dir)
    ids = torch.tensor([render_prompt(tok, [{"role": "user", "content": "Vault 3 password?"}])])
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_ELSEWHERE, json.dumps(ids[0].tolist())],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        want = tuned.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert got["auto"] == got["stock"] == want[0, ids.shape[1] :].tolist()


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_only_the_newest_checkpoint_keeps_optimizer_state(kind: str, tmp_path: Path) -> None:
    res, events = _run(tmp_path, kind)
    root = Path(res.output_dir) / "checkpoints"
    ckpts = sorted(root.iterdir(), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in ckpts] == ["step-2", "step-3", "step-4"]
    *older, newest = ckpts
    assert all((newest / f).is_file() for f in STRIPPABLE)
    assert not any((p / f).exists() for p in older for f in STRIPPABLE)
    # Still sealed, with the sha256 the run announced (the database's record of it stays true).
    announced = {e["step"]: e["sha256"] for e in events if e["type"] == "checkpoint"}
    for p in ckpts:
        assert verify_checkpoint(p) == announced[int(p.name.split("-")[1])]
    before, after = sum(_sealed_size(p) for p in ckpts), _disk(root)
    print(f"{kind}: 3 checkpoints {before / 1e6:.1f} MB as written, {after / 1e6:.1f} MB on disk")
    # The optimizer holds two moments per trainable weight: stripping two of three checkpoints saves about 40 %.
    assert after < 0.65 * before
    # A stripped checkpoint still holds what serving and best-checkpoint selection read.
    for p in older:
        assert read_manifest(p).step == int(p.name.split("-")[1])
        assert (p / ("adapter_model.safetensors" if kind == "lora" else "model.safetensors")).is_file()


def test_older_checkpoint_serves_and_resumes(lora_run: tuple[Any, list[dict[str, Any]]], tmp_path: Path) -> None:
    from peft import PeftModel

    from engine.models import load_model_and_tokenizer

    res, _ = lora_run
    older = Path(res.output_dir) / "checkpoints" / "step-2"
    model, _tok = load_model_and_tokenizer(tiny_chat_path())
    PeftModel.from_pretrained(model, str(older))  # what serving does with a checkpoint model
    # Resuming from it (only after a crash lost the newer checkpoint's record) goes on with a fresh optimizer.
    resumed, events = _run(tmp_path, resume_from=str(older), output_dir=str(tmp_path / "resumed"))
    codes = [e.get("code") for e in events if e["type"] == "message"]
    assert "resumed_without_optimizer_state" in codes
    assert [e["step"] for e in events if e["type"] == "metrics"] == [3, 4]
    assert resumed.trained_tokens == res.trained_tokens


def test_newest_checkpoint_resume_keeps_working(lora_run: tuple[Any, list[dict[str, Any]]], tmp_path: Path) -> None:
    res, _ = lora_run
    newest = Path(res.output_dir) / "checkpoints" / "step-4"
    resumed, events = _run(tmp_path, resume_from=str(newest), output_dir=str(tmp_path / "resumed"))
    codes = [e.get("code") for e in events if e["type"] == "message"]
    assert "resumed" in codes and "resumed_without_optimizer_state" not in codes
    assert os.path.isdir(resumed.adapter_dir)
