"""Fitting one example into max_seq_length without cutting what it trains on.

An over-long conversation loses its oldest turns (leading system/developer messages are kept) until it fits; one
that cannot fit with at least its last trained answer whole is dropped. Training (engine.data) and the dataset
doctor (engine.formats.doctor) share this, so the doctor's counts are what training does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from engine.chat import render

Outcome = Literal["whole", "truncated", "dropped"]
_HEAD_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class Fitted:
    """The sequence (or sequences, for a preference pair) kept for one example."""

    outcome: Outcome
    full_tokens: int  # tokens before fitting (the longest side of a pair)
    ids: tuple[list[int], ...] = ()
    masks: tuple[list[int], ...] = ()

    @property
    def n_trainable(self) -> int:
        """Tokens carrying loss (a sequence's first token predicts nothing, so it never counts)."""
        return sum(sum(mask[1:]) for mask in self.masks)

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids in self.ids)


def prompt_completion_messages(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A legacy {prompt, completion} line as the one exchange it stands for."""
    return [
        {"role": "user", "content": str(obj.get("prompt", ""))},
        {"role": "assistant", "content": str(obj.get("completion", ""))},
    ]


def _turn_starts(messages: Sequence[Mapping[str, Any]], head: int) -> list[int]:
    """Indices where a later exchange begins (a user message after the head's first turn)."""
    return [i for i in range(head + 1, len(messages)) if messages[i].get("role") == "user"]


def _head_len(messages: Sequence[Mapping[str, Any]]) -> int:
    n = 0
    while n < len(messages) and messages[n].get("role") in _HEAD_ROLES:
        n += 1
    return n


def _fit(
    messages: Sequence[Mapping[str, Any]],
    tails: Sequence[Sequence[Mapping[str, Any]]],
    max_len: int,
    render_one: Any,
) -> Fitted:
    """Render messages + each tail; if any is too long, drop the fewest oldest turns that make all fit."""
    rendered = [render_one([*messages, *tail]) for tail in tails]
    full = max(len(ids) for ids, _ in rendered)
    if full <= max_len:
        return Fitted("whole", full, tuple(r[0] for r in rendered), tuple(r[1] for r in rendered))
    head = _head_len(messages)
    starts = _turn_starts(messages, head)
    # Length falls as more turns go, so a binary search finds the latest start that still fits in few renders.
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        kept = [*messages[:head], *messages[starts[mid] :]]
        attempt = [render_one([*kept, *tail]) for tail in tails]
        if max(len(ids) for ids, _ in attempt) <= max_len:
            best, hi = attempt, mid - 1
        else:
            lo = mid + 1
    if best is None:
        return Fitted("dropped", full)
    fitted = Fitted("truncated", full, tuple(r[0] for r in best), tuple(r[1] for r in best))
    return fitted if all(sum(mask[1:]) for mask in fitted.masks) else Fitted("dropped", full)


def fit_sft(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_len: int, *, train_on_inputs: bool = False
) -> Fitted:
    """Fit a supervised conversation; its masks follow the weights and `train_on_inputs`."""
    return _fit(messages, [()], max_len, lambda msgs: render(tokenizer, msgs, train_on_inputs=train_on_inputs))


def fit_pair(
    tokenizer: Any,
    prompt: Sequence[Mapping[str, Any]],
    chosen: Mapping[str, Any],
    rejected: Mapping[str, Any],
    max_len: int,
) -> Fitted:
    """Fit a preference pair: both completions whole after the same shortened prompt, else dropped."""
    return _fit(prompt, [(chosen,), (rejected,)], max_len, lambda msgs: render(tokenizer, msgs, last_only=True))
