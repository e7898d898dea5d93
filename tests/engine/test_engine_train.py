"""engine.train on tiny-chat: LoRA/full SFT, learning, DPO, exact resume, checkpoints, health, artifacts."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from engine import train
from engine.chat import render_prompt, stop_token_ids
from engine.checkpoint import CheckpointError, verify_checkpoint
from engine.models import content_hash, load_model_and_tokenizer, tokenizer_hash
from tests.engine.engine_helpers import (
    SUBPROCESS_ENV,
    preference_rows,
    secret_rows,
    spec,
    tiny_chat_path,
    write_jsonl,
)


def _collect(s: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []  # each event as it goes on the wire
    return train(s, events=lambda e: events.append(e.to_wire())), events


def test_lora_trains_adapter_only_and_writes_loadable_artifacts(tmp_path: Path) -> None:
    from peft import PeftModel

    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    valid = write_jsonl(tmp_path / "valid.jsonl", secret_rows(4, seed=9))
    base_before = content_hash(tiny_chat_path())
    res, events = _collect(spec(tmp_path, data, validation_file=str(valid), hp={"n_epochs": 2, "eval_interval": 2}))
    assert res.status == "succeeded" and res.exit_code == 0, res.error
    assert [e["type"] for e in events][0] == "started" and events[-1]["type"] == "result"
    assert content_hash(tiny_chat_path()) == base_before

    adapter = Path(res.adapter_dir)
    assert all("lora_" in k for k in load_file(str(adapter / "adapter_model.safetensors")))  # no base weights
    model, _ = load_model_and_tokenizer(tiny_chat_path())
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    lora = {k: v for k, v in peft_model.state_dict().items() if "lora_B" in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())  # B starts at zero: it moved
    for name, tensor in peft_model.get_base_model().state_dict().items():
        key = name.replace(".base_layer", "")
        if "lora_" not in name:
            assert torch.equal(tensor, base_state[key]), name

    man = json.loads((adapter / "manifest.json").read_text())
    assert man["base_model"] == "tiny-chat" and man["base_model_sha256"] == base_before
    assert man["tokenizer_sha256"] == tokenizer_hash(tiny_chat_path())
    assert man["stop_tokens"] == ["<|im_end|>"] and "<|im_start|>" in man["chat_template"]
    assert "training_file" not in man["spec"] and len(man["training_file_sha256"]) == 64  # no server path
    assert str(tmp_path) not in json.dumps(man)
    assert man["spec"]["hyperparameters"]["total_steps"] == 4

    with open(res.metrics_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2", "3", "4"]  # step 0: the base model, before training
    assert rows[1][1] == "" and rows[1][3] != "" and rows[2][3] == "" and rows[3][3] != "" and rows[5][4] != ""


def test_learns_twenty_unknowable_answers(tmp_path: Path) -> None:
    rows = secret_rows(20)
    data = write_jsonl(tmp_path / "secrets.jsonl", rows)
    t0 = time.perf_counter()
    res, _ = _collect(
        spec(tmp_path, data, hp={"n_epochs": 40, "batch_size": 4, "learning_rate": 4e-3, "warmup_ratio": 0.1})
    )
    wall = time.perf_counter() - t0
    print(f"\nlearning test: 20 examples, {res.hyperparameters['total_steps']} steps, train wall {wall:.1f}s")
    assert res.status == "succeeded", res.error
    from peft import PeftModel

    model, tok = load_model_and_tokenizer(tiny_chat_path())
    model = PeftModel.from_pretrained(model, res.adapter_dir).eval()
    wrong = []
    for row in rows:
        prompt = render_prompt(tok, row["messages"][:1])
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=stop_token_ids(tok),
            pad_token_id=tok.pad_token_id,
        )
        text = tok.decode(out[0][len(prompt) :], skip_special_tokens=True)
        if text != row["messages"][1]["content"]:
            wrong.append((text, row["messages"][1]["content"]))
    print(f"learning test: train + greedy check wall {time.perf_counter() - t0:.1f}s")
    assert not wrong, wrong


def _margin(adapter: str | None, rows: list[dict[str, Any]]) -> float:
    from engine.chat import render
    from engine.data import Example
    from engine.objectives import sequence_logps

    model, tok = load_model_and_tokenizer(tiny_chat_path())
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).eval()
    total = 0.0
    with torch.no_grad():
        for r in rows:
            seqs = [
                Example(*render(tok, [*r["input"]["messages"], out[0]], last_only=True), line=0)
                for out in (r["preferred_output"], r["non_preferred_output"])
            ]
            lp = sequence_logps(model, seqs, torch.device("cpu"))
            total += float(lp[0] - lp[1])
    return total / len(rows)


def test_dpo_raises_preferred_over_rejected_margin(tmp_path: Path) -> None:
    rows = preference_rows(8)
    data = write_jsonl(tmp_path / "pref.jsonl", rows)
    res, events = _collect(
        spec(
            tmp_path,
            data,
            method="dpo",
            validation_file=str(data),
            hp={"n_epochs": 3, "batch_size": 4, "beta": 0.1, "learning_rate": 2e-3},
        )
    )
    assert res.status == "succeeded", res.error
    assert res.hyperparameters["beta"] == 0.1
    before, after = _margin(None, rows), _margin(res.adapter_dir, rows)
    assert after > before + 1.0, (before, after)
    metrics = [e for e in events if e["type"] == "metrics"]
    assert metrics[-1]["valid_loss"] < 0.6931  # below log(2): the policy now prefers the chosen answers


def _final_tensors(out: Path, kind: str = "adapter") -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if kind == "adapter" else "model.safetensors"
    return load_file(str(out / kind / name))


def test_resume_from_checkpoint_is_exact(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(12))
    hp = {
        "n_epochs": 2,
        "batch_size": 3,
        "checkpoint_interval": 3,
        "n_checkpoints": 5,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.2,
        "weight_decay": 0.01,
    }
    ckpt = tmp_path / "step-3"

    def keep_step_3(event: Any) -> None:
        # As a crash right after it would: resume from step 3 while it is the newest checkpoint (a newer one
        # strips the optimizer state of the older ones).
        if event.type == "checkpoint" and event.step == 3:
            shutil.copytree(event.path, ckpt)

    full = train(spec(tmp_path, data, hp=hp, tuning={"lora_dropout": 0.1}), events=keep_step_3)
    assert full.status == "succeeded", full.error
    verify_checkpoint(ckpt)
    resumed, events = _collect(
        spec(
            tmp_path,
            data,
            hp=hp,
            tuning={"lora_dropout": 0.1},
            output_dir=str(tmp_path / "resumed"),
            resume_from=str(ckpt),
        )
    )
    assert resumed.status == "succeeded", resumed.error
    assert [e["step"] for e in events if e["type"] == "metrics"] == [4, 5, 6, 7, 8]
    a, b = _final_tensors(Path(full.output_dir)), _final_tensors(Path(resumed.output_dir))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.trained_tokens == full.trained_tokens


def test_tampered_or_unsealed_checkpoint_is_refused(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(4))
    first, _ = _collect(spec(tmp_path, data, hp={"n_checkpoints": 1}))
    ckpt = Path(first.checkpoint.path)
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    with (bad / "adapter_model.safetensors").open("r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError):
        verify_checkpoint(bad)
    res, _ = _collect(spec(tmp_path, data, output_dir=str(tmp_path / "o2"), resume_from=str(bad)))
    assert res.status == "failed" and res.exit_code == 2 and res.error.code == "invalid_checkpoint"
    (bad / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="MANIFEST"):
        verify_checkpoint(bad)


def test_divergence_fails_with_diagnosis_and_no_adapter(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    res, events = _collect(
        spec(
            tmp_path,
            data,
            tuning={"type": "full"},
            hp={"n_epochs": 3, "batch_size": 2, "learning_rate": 5.0, "max_grad_norm": 1e9},
        )
    )
    assert res.status == "failed" and res.exit_code == 1
    assert res.error.code in {"nan_loss", "exploding_gradients"}, res.error
    assert "learning rate" in res.error.message
    assert events[-1]["error"] == res.error.model_dump(exclude_unset=True)
    assert not (Path(res.output_dir) / "model").exists() and not (Path(res.output_dir) / "adapter").exists()


def test_full_finetune_and_continued_training(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(6))
    first, ev1 = _collect(spec(tmp_path, data, tuning={"type": "full"}, hp={"learning_rate": 1e-3, "n_epochs": 2}))
    assert first.status == "succeeded", first.error
    model_dir = Path(first.adapter_dir)
    assert model_dir.name == "model" and (model_dir / "model.safetensors").is_file()
    assert content_hash(model_dir) != content_hash(tiny_chat_path())
    load_model_and_tokenizer(model_dir)  # a complete, loadable model dir
    second, ev2 = _collect(
        spec(
            tmp_path,
            data,
            tuning={"type": "full"},
            output_dir=str(tmp_path / "o2"),
            init_from=str(model_dir),
            hp={"learning_rate": 1e-3},
        )
    )
    assert second.status == "succeeded", second.error
    # Same seed, so the same first batch: the continued run starts from the trained weights.
    first_loss = [next(e for e in ev if e["type"] == "metrics")["train_loss"] for ev in (ev1, ev2)]
    assert first_loss[1] < first_loss[0] - 1.0, first_loss
    # LoRA continued from an earlier adapter starts where that adapter ended.
    lora1, _ = _collect(spec(tmp_path, data, output_dir=str(tmp_path / "l1"), hp={"n_epochs": 3}))
    lora2, ev = _collect(spec(tmp_path, data, output_dir=str(tmp_path / "l2"), init_from=lora1.adapter_dir))
    assert lora2.status == "succeeded", lora2.error
    assert next(e for e in ev if e["type"] == "metrics")["train_loss"] < first_loss[0] - 1.0


def test_truncation_and_untrainable_examples_are_reported_before_training(tmp_path: Path) -> None:
    rows = secret_rows(4)
    rows.append(
        {"messages": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "never seen"}]}
    )
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "weight": 0}]})
    rows.append({"prompt": "Capital of Atlantis?", "completion": " Poseidonia."})
    rows.append(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "old " * 80},
                {"role": "assistant", "content": "old " * 80},
                {"role": "user", "content": "Capital of Atlantis?"},
                {"role": "assistant", "content": "Poseidonia."},
            ]
        }
    )
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    res, events = _collect(spec(tmp_path, data, hp={"max_seq_length": 64}))
    assert res.status == "succeeded", res.error
    started = next(i for i, e in enumerate(events) if e["type"] == "started")
    msgs = {e.get("code"): e for e in events[:started] if e["type"] == "message"}
    # Line 8 lost its first exchange (system kept); line 5 cannot fit even alone and is left out.
    assert msgs["truncated"]["count"] == 1 and msgs["truncated"]["lines"] == [8]
    assert msgs["too_long"]["lines"] == [5]
    assert msgs["no_trainable_tokens"]["lines"] == [6]
    assert events[started]["n_examples"] == 6


def test_fitting_keeps_the_system_message_and_the_latest_answer() -> None:
    from engine.formats.fitting import fit_sft
    from engine.models import load_tokenizer

    tok = load_tokenizer(tiny_chat_path())
    convo = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        convo += [{"role": "user", "content": f"question {i} " * 6}, {"role": "assistant", "content": f"answer {i}"}]
    whole = fit_sft(tok, convo, 4096)
    fitted = fit_sft(tok, convo, whole.full_tokens // 2)
    assert whole.outcome == "whole" and fitted.outcome == "truncated"
    text = tok.decode(fitted.ids[0])
    assert text.startswith("<|im_start|>system\nBe brief.") and "answer 5" in text and "answer 0" not in text
    assert len(fitted.ids[0]) <= whole.full_tokens // 2
    assert fit_sft(tok, convo[:3], 8).outcome == "dropped"


def test_bad_dataset_is_invalid(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    res, _ = _collect(spec(tmp_path, bad))
    assert res.exit_code == 2 and res.error.code == "invalid_dataset" and "line 2" in res.error.message
    res, _ = _collect(spec(tmp_path, write_jsonl(tmp_path / "p.jsonl", preference_rows(2))))
    assert res.exit_code == 2 and "supervised" in res.error.message


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    res, events = _collect(spec(tmp_path, data, hp={"batch_size": 2, "checkpoint_interval": 1, "n_checkpoints": 2}))
    assert res.status == "succeeded", res.error
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [1, 2, 3, 4]
    kept = sorted(p.name for p in (Path(res.output_dir) / "checkpoints").iterdir())
    assert kept == ["step-3", "step-4"]
    assert res.checkpoint is not None and res.checkpoint.step == 4
    for name in kept:
        verify_checkpoint(Path(res.output_dir) / "checkpoints" / name)


def test_packing_off_trains_the_same_model(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    packed, _ = _collect(spec(tmp_path, data, hp={"n_epochs": 1, "packing": True}))
    single, _ = _collect(
        spec(tmp_path, data, output_dir=str(tmp_path / "single"), hp={"n_epochs": 1, "packing": False})
    )
    assert packed.status == single.status == "succeeded"
    a, b = _final_tensors(Path(packed.output_dir)), _final_tensors(Path(single.output_dir))
    for k in a:  # equal up to float reassociation: different batch shapes sum in a different order
        torch.testing.assert_close(a[k], b[k], rtol=1e-2, atol=2e-4)


def _engine_process(tmp: Path, s: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
    """`python -m engine train` as the worker runs it, with a control dir."""
    path, control = tmp / "spec.json", tmp / "control"
    path.write_text(json.dumps(s))
    control.mkdir()
    cmd = [sys.executable, "-m", "engine", "train", str(path), "--control-dir", str(control)]
    proc = subprocess.Popen(
        cmd,
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=SUBPROCESS_ENV,
    )
    return proc, control


@pytest.mark.parametrize(("request_file", "status", "code"), [("cancel", "cancelled", 4), ("pause", "paused", 3)])
def test_a_control_file_alone_cuts_the_base_evaluation_short(
    tmp_path: Path, request_file: str, status: str, code: int
) -> None:
    """Asked during the (long) base evaluation, with no signal, the run stops there, not at the first step after it.

    A pause still leaves a step-0 checkpoint, and the run resumed from it measures the base model after all.
    """
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    valid = write_jsonl(tmp_path / "valid.jsonl", secret_rows(256, seed=3, start=100))
    long_evaluation = {"generation_examples": 64, "generation_max_tokens": 128, "generation_max_seconds": 120}
    s = spec(tmp_path, data, validation_file=str(valid), hp={"n_checkpoints": 2}, evaluation=long_evaluation)
    proc, control = _engine_process(tmp_path, s)
    assert proc.stdout is not None
    events: list[dict[str, Any]] = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1].get("code") == "base_evaluation_started":  # the evaluation is under way
            (control / request_file).touch()
            asked = time.monotonic()
            break
    events += [json.loads(line) for line in proc.stdout]
    took = time.monotonic() - asked
    assert proc.wait(timeout=120) == code, events[-1]
    print(f"\n{request_file} during the base evaluation: result after {took:.2f}s")
    assert events[-1]["type"] == "result" and events[-1]["status"] == status
    assert not [e for e in events if e["type"] in ("evaluation", "metrics")]  # cut short; no step trained
    if status == "cancelled":
        assert events[-1]["checkpoint"] is None
        return
    ckpt = events[-1]["checkpoint"]
    assert ckpt is not None and ckpt["step"] == 0
    (control / "pause").unlink()
    resumed, later = _collect(
        {
            **s,
            "resume_from": ckpt["path"],
            "output_dir": str(tmp_path / "resumed"),
            "evaluation": {"generation_examples": 2},
        }
    )
    assert resumed.status == "succeeded", resumed.error
    assert [e["stage"] for e in later if e["type"] == "evaluation"] == ["base", "final"]
    assert [e["step"] for e in later if e["type"] == "metrics"] == [1, 2]
