"""Did the fine-tune help, and what did it cost: generation scores, preference scores, overfitting and forgetting."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.data import Example
from engine.inference.batch import generate_texts
from engine.inference.types import SamplingParams
from engine.probes import ProbeResult

_WORD = re.compile(r"\w+|[^\w\s]")


def split_answer(example: Example) -> tuple[list[int], list[int]] | None:
    """(prompt ids, answer ids) of an example: its last run of trained tokens is the answer to generate."""
    mask = example.mask
    end = max((i for i, m in enumerate(mask) if m), default=-1)
    if end <= 0:
        return None
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    if start == 0:
        return None
    return example.ids[:start], example.ids[start : end + 1]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_f1(predicted: str, reference: str) -> float:
    """SQuAD-style overlap of words and punctuation between a generated and a reference answer."""
    pred, ref = _words(predicted), _words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(predicted: str, reference: str) -> float:
    return float(predicted.strip() == reference.strip())


@dataclass(frozen=True)
class GenerationSample:
    """The prompts and reference answers of the validation examples generation is scored on."""

    prompts: list[list[int]]
    references: list[str]
    answer_tokens: list[int]


def generation_sample(
    examples: Sequence[Example], tokenizer: Any, stop_ids: Sequence[int], n: int, seed: int
) -> GenerationSample:
    """A seeded sample of at most n examples that have a prompt and an answer."""
    stops = set(stop_ids)
    usable = [s for s in (split_answer(e) for e in examples) if s is not None]
    picked = random.Random(seed).sample(usable, min(n, len(usable)))
    prompts, refs, lengths = [], [], []
    for prompt, answer in picked:
        text_ids = [t for t in answer if t not in stops]
        prompts.append(prompt)
        refs.append(tokenizer.decode(text_ids, skip_special_tokens=True))
        lengths.append(len(answer))
    return GenerationSample(prompts, refs, lengths)


def score_generation(
    model: Any,
    tokenizer: Any,
    sample: GenerationSample,
    *,
    max_tokens: int,
    max_seconds: float,
    stop_ids: Sequence[int],
) -> dict[str, Any] | None:
    """Greedy answers through the batched inference engine, scored against the references."""
    if not sample.prompts:
        return None
    # Greedy, and seeded so that evaluating never draws from the training run's random state.
    params = [
        SamplingParams(
            max_tokens=max(1, min(max_tokens, n + 8)), temperature=0.0, seed=0, stop_token_ids=tuple(stop_ids)
        )
        for n in sample.answer_tokens
    ]
    texts = generate_texts(model, tokenizer, sample.prompts, params, max_seconds=max_seconds)
    scored = [(t, r) for t, r in zip(texts, sample.references, strict=True) if t is not None]
    if not scored:
        return None
    n = len(scored)
    return {
        "n": n,
        "token_f1": round(sum(token_f1(t, r) for t, r in scored) / n, 4),
        "exact_match": round(sum(exact_match(t, r) for t, r in scored) / n, 4),
        "examples": [{"generated": t, "reference": r} for t, r in scored[:3]],
    }


def preference_scores(
    chosen: Sequence[float],
    rejected: Sequence[float],
    ref_chosen: Sequence[float],
    ref_rejected: Sequence[float],
    beta: float,
) -> dict[str, float]:
    """Share of pairs whose chosen answer is the likelier one, and the mean implicit reward margin."""
    n = max(1, len(chosen))
    accuracy = sum(1 for c, r in zip(chosen, rejected, strict=True) if c > r) / n
    margin = (
        sum(
            beta * ((c - rc) - (r - rr))
            for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected, strict=True)
        )
        / n
    )
    return {"accuracy": round(accuracy, 4), "reward_margin": round(margin, 4)}


@dataclass
class OverfitWatch:
    """Spots validation loss rising for `patience` evaluations in a row while training loss falls."""

    patience: int
    history: list[tuple[int, float, float]] = field(default_factory=list)  # (step, valid loss, train loss)

    def add(self, step: int, valid_loss: float, train_loss: float) -> int | None:
        """Record an evaluation; return the step where overfitting began once the pattern holds, else None."""
        self.history.append((step, valid_loss, train_loss))
        if len(self.history) <= self.patience:
            return None
        window = self.history[-(self.patience + 1) :]
        valid_rising = all(b[1] > a[1] for a, b in zip(window, window[1:], strict=False))
        train_falling = window[-1][2] < window[0][2]
        return window[0][0] if valid_rising and train_falling else None

    def state(self) -> list[list[float]]:
        return [list(h) for h in self.history]

    def restore(self, saved: Sequence[Sequence[float]]) -> None:
        self.history = [(int(s), float(v), float(t)) for s, v, t in saved]


@dataclass(frozen=True)
class ForgettingLimits:
    """How much worse the tuned model may get on the probes before a `forgetting` warning."""

    text_loss_increase: float
    skill_drop: float


def forgetting_warning(base: ProbeResult, tuned: ProbeResult, limits: ForgettingLimits) -> dict[str, Any] | None:
    """A `forgetting` warning with the figures when a probe got worse beyond its limit, else None."""
    parts = []
    rise = tuned.text_loss - base.text_loss
    if rise > limits.text_loss_increase:
        parts.append(
            f"loss on general text rose from {base.text_loss:.3f} to {tuned.text_loss:.3f} nats per token "
            f"(+{rise:.3f}, limit {limits.text_loss_increase:g})"
        )
    if base.skills is not None and tuned.skills is not None:
        base_mean = sum(base.skills.values()) / max(1, len(base.skills))
        tuned_mean = sum(tuned.skills.values()) / max(1, len(tuned.skills))
        if base_mean - tuned_mean > limits.skill_drop:
            parts.append(
                f"skill probe accuracy fell from {base_mean:.2f} to {tuned_mean:.2f} (limit {limits.skill_drop:g})"
            )
    if not parts:
        return None
    return {
        "code": "forgetting",
        "message": "The fine-tuned model forgot part of what the base model knew: "
        + "; ".join(parts)
        + ". Consider fewer epochs, a lower learning rate, LoRA instead of full "
        "fine-tuning, or mixing general data into the training file.",
    }
