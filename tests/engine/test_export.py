"""`python -m engine export`: Hugging Face folders of real tiny-chat runs, loaded back with stock transformers/peft."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from engine import train
from engine.export import ExportRefused, export, merge_estimate_bytes
from engine.models import content_hash, tokenizer_hash
from tests.engine.engine_helpers import SUBPROCESS_ENV, data_dir, secret_rows, spec, tiny_chat_path, write_jsonl

TRAINING_ONLY = {"optimizer.pt", "scheduler.pt", "rng.pt", "state.json", "MANIFEST.json", "reference_logps.safetensors"}
TOKENIZER = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One LoRA run (with a checkpoint) and one full fine-tune, 2 steps each."""
    tmp = tmp_path_factory.mktemp("export-runs")
    data = write_jsonl(tmp / "train.jsonl", secret_rows(8))
    hp = {"n_epochs": 1, "batch_size": 4, "n_checkpoints": 1, "checkpoint_interval": 1}
    lora = train(spec(tmp / "lora", data, hp=hp))
    assert lora.status == "succeeded", lora.error
    full = train(spec(tmp / "full", data, tuning={"type": "full"}, hp={**hp, "learning_rate": 1e-3}))
    assert full.status == "succeeded", full.error
    lora_out, full_out = Path(lora.output_dir), Path(full.output_dir)
    return {
        "adapter": lora_out / "adapter",
        "lora_ckpt": sorted((lora_out / "checkpoints").glob("step-*"))[-1],
        "full": full_out / "model",
        "full_ckpt": sorted((full_out / "checkpoints").glob("step-*"))[-1],
        "data": data,
    }


def _export(artifact: Path, out: Path, fmt: str, **kw: Any) -> Any:
    return export(artifact, out, fmt, base="tiny-chat", data_dir=data_dir(), model_id="ft:tiny-chat:p:x:abc", **kw)  # type: ignore[arg-type]


def _cli(artifact: Path, out: Path, fmt: str, *extra: str) -> tuple[int, dict[str, Any]]:
    cmd = [sys.executable, "-m", "engine", "export", str(artifact), str(out), "--format", fmt, "--base", "tiny-chat"]
    cmd += ["--data-dir", str(data_dir()), "--model-id", "ft:tiny-chat:p:x:abc", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr[-2000:])
    return proc.returncode, json.loads(lines[0])


def _logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_adapter_folder_loads_with_stock_peft_and_names_the_public_base(runs: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "adapter"
    res = _export(runs["adapter"], out, "adapter")
    assert res.status == "ok" and not res.cached
    expected = {"adapter_model.safetensors", "adapter_config.json", "generation_config.json", "manifest.json"}
    assert set(res.files) == expected | TOKENIZER | {"README.md"}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-chat"
    man = json.loads((out / "manifest.json").read_text())
    assert tokenizer_hash(out) == man["tokenizer_sha256"]  # the tokenizer trained with, byte for byte
    card = (out / "README.md").read_text()
    assert 'base_model: "tiny-chat"' in card and man["training_file_sha256"] in card and "library_name: peft" in card

    base = AutoModelForCausalLM.from_pretrained(str(tiny_chat_path()), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(runs["adapter"]))
    ids = AutoTokenizer.from_pretrained(str(out))("Vault 3 password?")["input_ids"]
    want = _logits(reference, ids)
    fresh = AutoModelForCausalLM.from_pretrained(str(tiny_chat_path()), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(fresh, str(out))
    assert torch.equal(_logits(loaded, ids), want)
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_chat_path()), dtype=torch.float32)
    assert not torch.allclose(_logits(plain, ids), want)  # the adapter changes the answer


def test_merged_folder_is_peft_merge_and_is_built_once(runs: dict[str, Path], tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    rc, line = _cli(runs["adapter"], out, "merged", "--max-memory-mb", "16384")
    assert rc == 0 and line["status"] == "ok" and not line["cached"], line
    assert line["peak_rss_mb"] > 0 and line["seconds"] > 0 and line["estimate_mb"] > 0
    assert {"config.json", "model.safetensors", "generation_config.json", "manifest.json", "README.md"} <= set(
        line["files"]
    )
    assert set(line["files"]) >= TOKENIZER and not any(f.startswith("adapter_") for f in line["files"])
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_chat_path()), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(runs["adapter"]))
    ids = [5, 17, 42, 99, 7]
    torch.testing.assert_close(_logits(merged, ids), _logits(reference, ids), rtol=1e-4, atol=1e-4)
    assert "library_name: transformers" in (out / "README.md").read_text()

    mtime = (out / "model.safetensors").stat().st_mtime_ns
    rc, again = _cli(runs["adapter"], out, "merged")
    assert rc == 0 and again["cached"] is True and (out / "model.safetensors").stat().st_mtime_ns == mtime


def test_checkpoints_export_without_training_state(runs: dict[str, Path], tmp_path: Path) -> None:
    present = {p.name for p in runs["lora_ckpt"].iterdir()} | {p.name for p in runs["full_ckpt"].iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng.pt", "MANIFEST.json"} <= present  # what must stay behind
    for artifact, fmt in ((runs["lora_ckpt"], "adapter"), (runs["lora_ckpt"], "merged"), (runs["full_ckpt"], "merged")):
        out = tmp_path / f"{artifact.parent.parent.name}-{fmt}"
        res = _export(artifact, out, fmt)
        assert res.status == "ok" and not TRAINING_ONLY & set(res.files), res.files
        assert {p.name for p in out.iterdir()} == set(res.files)  # no folder, no hidden file either


def test_full_model_downloads_as_its_own_weights_and_has_no_adapter(runs: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full"
    res = _export(runs["full"], out, "merged")
    assert res.status == "ok"
    assert content_hash(out) == content_hash(runs["full"]) != content_hash(tiny_chat_path())
    model = AutoModelForCausalLM.from_pretrained(str(out))
    want = load_file(str(runs["full"] / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in want.items())
    assert "full" in (out / "README.md").read_text()
    rc, line = _cli(runs["full"], tmp_path / "nope", "adapter")
    assert rc == 3 and line["status"] == "refused" and line["code"] == "invalid_format"
    assert not (tmp_path / "nope").exists()


def test_merge_over_the_memory_limit_is_refused_before_loading(runs: dict[str, Path], tmp_path: Path) -> None:
    estimate = merge_estimate_bytes(tiny_chat_path(), runs["adapter"])
    weights = (tiny_chat_path() / "model.safetensors").stat().st_size  # fp32 already: the estimate covers it
    assert estimate > weights
    limit_mb = estimate // (1024 * 1024) - 1
    with pytest.raises(ExportRefused) as refused:
        _export(runs["adapter"], tmp_path / "m", "merged", max_memory_mb=limit_mb)
    assert refused.value.code == "merge_too_large" and "ft:tiny-chat:p:x:abc" in refused.value.message
    rc, line = _cli(runs["adapter"], tmp_path / "m", "merged", "--max-memory-mb", str(limit_mb))
    assert rc == 3 and line["code"] == "merge_too_large" and str(tmp_path) not in line["message"]
    assert line["peak_rss_mb"] < 300  # torch was never imported
    assert not (tmp_path / "m").exists()
    assert _export(runs["adapter"], tmp_path / "m", "merged", max_memory_mb=limit_mb + 2).status == "ok"
