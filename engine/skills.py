"""Checkable skills of tiny-chat: seeded instruction/answer pairs for pretraining and multiple-choice probes.

Torch-free and deterministic: the same seed always gives the same conversations. Each skill has a generator of
(prompt, answer) pairs; a probe asks the model to rank the right answer above three wrong ones by likelihood,
so chance is exactly 1/4 and a score is comparable between the base model and any fine-tune of it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from engine import corpus

CHOICES = 4
CHANCE = 1 / CHOICES
_WORDS = sorted({w.lower() for w in (*corpus._NOUNS, *corpus._ADJS)} | set(corpus._NAMES))
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a concise assistant.", "Answer briefly.")
_GREETINGS = ("Hello", "Hi", "Hello!", "Hi there", "Good morning", "Good evening", "Hey")
_GREETING_ANSWERS = (
    "Hello! How can I help you today?",
    "Hi! What would you like to know?",
    "Hello! I am a small assistant. Ask me a question.",
    "Good to see you. How can I help?",
)


@dataclass(frozen=True)
class Pair:
    """One user prompt and the assistant answer it expects."""

    skill: str
    prompt: str
    answer: str


@dataclass(frozen=True)
class Probe:
    """A prompt, its right answer and wrong answers of the same shape."""

    skill: str
    prompt: str
    answer: str
    distractors: tuple[str, ...]


def _copy(rng: random.Random) -> tuple[str, str, list[str]]:
    words = rng.sample(_WORDS, rng.randrange(2, 5))
    answer = " ".join(words)
    wrong: list[str] = []
    while len(wrong) < CHOICES - 1:
        other = list(words)
        other[rng.randrange(len(other))] = rng.choice(_WORDS)
        text = " ".join(other)
        if text != answer and text not in wrong:
            wrong.append(text)
    return f"Repeat after me: {answer}", answer, wrong


def _numbers(seq: list[int]) -> str:
    return ", ".join(str(n) for n in seq) + "."


def _count(rng: random.Random) -> tuple[str, str, list[str]]:
    start = rng.randrange(1, 40)
    end = start + rng.randrange(2, 6)
    seq = list(range(start, end + 1))
    wrong: list[str] = []
    while len(wrong) < CHOICES - 1:
        other = list(seq)
        k = rng.randrange(1, len(other))
        other[k] += rng.choice((-2, -1, 1, 2))
        text = _numbers(other)
        if other != seq and text not in wrong:
            wrong.append(text)
    return f"Count from {start} to {end}.", _numbers(seq), wrong


def _add(rng: random.Random) -> tuple[str, str, list[str]]:
    a, b = rng.randrange(10), rng.randrange(10)
    offsets = rng.sample([-3, -2, -1, 1, 2, 3], CHOICES - 1)
    wrong = [f"{a} plus {b} is {a + b + d}." for d in offsets]
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", wrong


SKILLS: dict[str, Callable[[random.Random], tuple[str, str, list[str]]]] = {
    "copy": _copy,
    "count": _count,
    "add": _add,
}


def pairs(seed: int, n: int) -> Iterator[Pair]:
    """n skill pairs, skills in turn."""
    rng = random.Random(seed)
    names = list(SKILLS)
    for i in range(n):
        skill = names[i % len(names)]
        prompt, answer, _ = SKILLS[skill](rng)
        yield Pair(skill, prompt, answer)


def probes(seed: int, per_skill: int) -> list[Probe]:
    """per_skill probes of every skill (a seed other than the pretraining one, so mostly unseen prompts)."""
    rng = random.Random(seed)
    out = []
    for skill, make in SKILLS.items():
        for _ in range(per_skill):
            prompt, answer, wrong = make(rng)
            out.append(Probe(skill, prompt, answer, tuple(wrong)))
    return out


def greetings(seed: int, n: int) -> Iterator[Pair]:
    """Small talk: a greeting and a friendly, short answer."""
    rng = random.Random(seed)
    for _ in range(n):
        yield Pair("chat", rng.choice(_GREETINGS), rng.choice(_GREETING_ANSWERS))


def conversation(pair: Pair, rng: random.Random, system_share: float = 0.3) -> list[dict[str, str]]:
    """The pair as chat messages, sometimes behind a system message."""
    messages = []
    if rng.random() < system_share:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    messages += [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": pair.answer}]
    return messages
