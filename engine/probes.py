"""Forgetting probes: loss on shipped general text and multiple-choice skill accuracy, for any model."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import skills
from engine.chat import render
from engine.data import Example
from engine.objectives import micro_batches, sequence_logps, sft_forward

PROBE_TEXT_PATH = Path(__file__).parent / "assets" / "probe_text.txt"
PROBE_SEED = 777  # not the pretraining seed: most probe prompts were never seen in training
PROBE_TOKENS = 4096
PER_SKILL = 16


@dataclass(frozen=True)
class ProbeResult:
    """Loss per token on general text, and skill accuracy (chance is skills.CHANCE)."""

    text_loss: float
    skills: dict[str, float] | None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text_loss": round(self.text_loss, 4)}
        if self.skills is not None:
            out["skills"] = {k: round(v, 4) for k, v in self.skills.items()}
            out["skills_mean"] = round(sum(self.skills.values()) / max(1, len(self.skills)), 4)
        return out


def probe_texts() -> list[str]:
    """The shipped general-text probe paragraphs."""
    return [p.strip() for p in PROBE_TEXT_PATH.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def _text_examples(tokenizer: Any, max_tokens: int, max_seq: int) -> list[Example]:
    out, total = [], 0
    for text in probe_texts():
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])[:max_seq]
        out.append(Example(ids=ids, mask=[1] * len(ids), line=0))
        total += len(ids)
        if total >= max_tokens:
            break
    return out


@torch.no_grad()
def text_loss(
    model: Any,
    tokenizer: Any,
    device: Any,
    *,
    max_tokens: int = PROBE_TOKENS,
    max_seq: int = 512,
    micro_batch_tokens: int = 8192,
) -> float:
    """Mean next-token loss (nats per token) on the probe text."""
    examples = _text_examples(tokenizer, max_tokens, max_seq)
    loss_sum, n = 0.0, 0
    for group in micro_batches([len(e.ids) for e in examples], micro_batch_tokens):
        stats = sft_forward(model, [examples[i] for i in group], device)
        loss_sum += float(stats.loss_sum)
        n += stats.n_tokens
    return loss_sum / max(1, n)


def _choice_examples(tokenizer: Any, probe: skills.Probe) -> list[Example]:
    out = []
    for answer in (probe.answer, *probe.distractors):
        messages = [{"role": "user", "content": probe.prompt}, {"role": "assistant", "content": answer}]
        ids, mask = render(tokenizer, messages)
        out.append(Example(ids=ids, mask=mask, line=0))
    return out


@torch.no_grad()
def skill_accuracy(
    model: Any, tokenizer: Any, device: Any, probes: Sequence[skills.Probe], micro_batch_tokens: int = 8192
) -> dict[str, float]:
    """Share of probes, per skill, whose right answer has the highest log-likelihood of the choices.

    Every choice of every probe goes through a few packed forwards rather than one forward per probe.
    """
    choices = [_choice_examples(tokenizer, probe) for probe in probes]
    flat = [e for group in choices for e in group]
    logps: list[float] = []
    for batch in micro_batches([len(e.ids) for e in flat], micro_batch_tokens):
        logps += sequence_logps(model, [flat[i] for i in batch], device).tolist()
    right: dict[str, int] = {}
    seen: dict[str, int] = {}
    k = 0
    for probe, group in zip(probes, choices, strict=True):
        scores = logps[k : k + len(group)]
        k += len(group)
        seen[probe.skill] = seen.get(probe.skill, 0) + 1
        right[probe.skill] = right.get(probe.skill, 0) + int(max(range(len(scores)), key=scores.__getitem__) == 0)
    return {name: right.get(name, 0) / seen[name] for name in seen}


def run_probes(
    model: Any,
    tokenizer: Any,
    device: Any,
    *,
    with_skills: bool,
    per_skill: int = PER_SKILL,
    max_tokens: int = PROBE_TOKENS,
) -> ProbeResult:
    """Both probes with the model in eval mode (its training mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        loss = text_loss(model, tokenizer, device, max_tokens=max_tokens)
        acc = skill_accuracy(model, tokenizer, device, skills.probes(PROBE_SEED, per_skill)) if with_skills else None
    finally:
        model.train(was_training)
    return ProbeResult(text_loss=loss, skills=acc)


def _cache_path(data_dir: str | Path, base_key: str, with_skills: bool, per_skill: int, max_tokens: int) -> Path:
    key = hashlib.sha256(f"{base_key}-{int(with_skills)}-{per_skill}-{max_tokens}".encode()).hexdigest()[:32]
    return Path(data_dir) / "eval-cache" / f"probes-{key}.json"


def cached_probes(
    model: Any,
    tokenizer: Any,
    device: Any,
    *,
    data_dir: str | Path,
    base_key: str,
    with_skills: bool,
    per_skill: int = PER_SKILL,
    max_tokens: int = PROBE_TOKENS,
) -> ProbeResult:
    """run_probes for an untouched base model, remembered under data_dir by base_key (weights hash and dtype)."""
    path = _cache_path(data_dir, base_key, with_skills, per_skill, max_tokens)
    try:
        saved = json.loads(path.read_text())
        return ProbeResult(text_loss=float(saved["text_loss"]), skills=saved.get("skills"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = run_probes(model, tokenizer, device, with_skills=with_skills, per_skill=per_skill, max_tokens=max_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"text_loss": result.text_loss, "skills": result.skills}))
    os.replace(tmp, path)  # readers see the whole file or none
    return result
