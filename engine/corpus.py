"""Deterministic English text generator for the tiny-chat tokenizer corpus (engine/assets/corpus.txt)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

CORPUS_PATH = Path(__file__).parent / "assets" / "corpus.txt"

_NAMES = [
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Elif",
    "Farah",
    "George",
    "Hana",
    "Ivan",
    "Jamal",
    "Keiko",
    "Liam",
    "Maya",
    "Nadia",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
    "Uma",
    "Victor",
    "Wen",
    "Yusuf",
    "Zoe",
]
_PLACES = [
    "the harbour",
    "the library",
    "a small village",
    "the old mill",
    "the mountain pass",
    "the city market",
    "the train station",
    "the river bank",
    "the museum",
    "the school garden",
    "the bakery",
    "the observatory",
    "the workshop",
    "the hospital",
    "the data centre",
    "the farm",
    "the lighthouse",
    "the university",
]
_NOUNS = [
    "book",
    "river",
    "machine",
    "garden",
    "letter",
    "bridge",
    "window",
    "engine",
    "question",
    "answer",
    "storm",
    "lamp",
    "map",
    "recipe",
    "server",
    "model",
    "dataset",
    "song",
    "painting",
    "clock",
    "ticket",
    "invoice",
    "report",
    "contract",
    "database",
    "network",
    "battery",
    "bicycle",
    "kettle",
    "camera",
    "planet",
    "forest",
    "coffee",
    "meeting",
    "password",
    "account",
    "order",
    "customer",
    "shipment",
    "schedule",
    "budget",
    "policy",
]
_ADJS = [
    "quiet",
    "bright",
    "ancient",
    "careful",
    "sudden",
    "gentle",
    "heavy",
    "modern",
    "curious",
    "rapid",
    "simple",
    "strange",
    "useful",
    "fragile",
    "honest",
    "patient",
    "precise",
    "noisy",
    "cheerful",
    "tired",
    "reliable",
    "expensive",
    "cheap",
    "complex",
    "elegant",
    "broken",
    "secure",
    "slow",
    "fast",
    "warm",
    "cold",
    "green",
]
_VERBS = [
    ("opened", "open"),
    ("repaired", "repair"),
    ("described", "describe"),
    ("painted", "paint"),
    ("measured", "measure"),
    ("explained", "explain"),
    ("collected", "collect"),
    ("shipped", "ship"),
    ("tested", "test"),
    ("trained", "train"),
    ("planned", "plan"),
    ("cleaned", "clean"),
    ("counted", "count"),
    ("wrote", "write"),
    ("found", "find"),
    ("built", "build"),
    ("sold", "sell"),
    ("read", "read"),
    ("carried", "carry"),
    ("checked", "check"),
    ("updated", "update"),
    ("cancelled", "cancel"),
]
_ADVS = ["slowly", "quickly", "carefully", "happily", "quietly", "suddenly", "finally", "often", "rarely", "again"]
_TIMES = [
    "in the morning",
    "at noon",
    "late at night",
    "on Monday",
    "last week",
    "in the spring",
    "after lunch",
    "before dawn",
    "during the winter",
    "every Friday",
    "yesterday",
    "tomorrow",
    "in 1998",
    "in 2024",
]
_TOPICS = [
    "astronomy",
    "cooking",
    "gardening",
    "history",
    "mathematics",
    "music",
    "programming",
    "travel",
    "weather",
    "finance",
    "medicine",
    "chemistry",
    "geography",
    "sports",
    "literature",
    "customer support",
    "logistics",
]
_CONNECTIVES = [
    "However,",
    "Meanwhile,",
    "Later,",
    "As a result,",
    "In addition,",
    "Still,",
    "Then",
    "Because of that,",
]
_QUESTIONS = [
    "What is the capital of {place}?",
    "How do I {verb} the {noun}?",
    "Can you explain {topic} to a beginner?",
    "Why is the {noun} so {adj}?",
    "When did {name} {verb} the {noun}?",
    "Where can I find a {adj} {noun}?",
    "Could you summarise the {noun} in two sentences?",
    "What should I do if my {noun} is {adj}?",
    "Is it true that {name} likes {topic}?",
    "How many {noun}s are in {place}?",
]


def _sentence(rng: random.Random) -> str:
    """One declarative sentence from a random template."""
    name, place, noun, adj = rng.choice(_NAMES), rng.choice(_PLACES), rng.choice(_NOUNS), rng.choice(_ADJS)
    past, base = rng.choice(_VERBS)
    kind = rng.randrange(8)
    if kind == 0:
        return f"{name} {past} the {adj} {noun} at {place} {rng.choice(_TIMES)}."
    if kind == 1:
        return f"The {noun} near {place} was {adj}, so {name} {rng.choice(_ADVS)} {past} it."
    if kind == 2:
        n = rng.randrange(2, 999)
        return f"There were {n} {noun}s in {place}, and {rng.randrange(1, n)} of them were {adj}."
    if kind == 3:
        return f"{rng.choice(_CONNECTIVES)} {name.lower() if rng.random() < 0.1 else name} wanted to {base} a {noun}."
    if kind == 4:
        price = f"{rng.randrange(1, 500)}.{rng.randrange(100):02d}"
        return f"A {adj} {noun} costs ${price} at {place}, which {name} thought was {rng.choice(_ADJS)}."
    if kind == 5:
        return f'"I will {base} the {noun} {rng.choice(_TIMES)}," said {name}.'
    if kind == 6:
        topic = rng.choice(_TOPICS)
        return f"In {topic}, a {adj} {noun} is often used to {base} things {rng.choice(_ADVS)}."
    return f"Why did {name} {base} the {noun}? Nobody at {place} knew; it was {adj} and {rng.choice(_ADJS)}."


def _paragraph(rng: random.Random) -> str:
    """A paragraph of 3 to 8 sentences."""
    return " ".join(_sentence(rng) for _ in range(rng.randrange(3, 9)))


def _dialogue(rng: random.Random) -> str:
    """A short question/answer exchange so the tokenizer sees conversational text."""
    q = rng.choice(_QUESTIONS).format(
        place=rng.choice(_PLACES),
        verb=rng.choice(_VERBS)[1],
        noun=rng.choice(_NOUNS),
        adj=rng.choice(_ADJS),
        topic=rng.choice(_TOPICS),
        name=rng.choice(_NAMES),
    )
    return f"User: {q}\nAssistant: {_paragraph(rng)}"


def _listing(rng: random.Random) -> str:
    """A numbered list, a little code and some numbers: text shapes users send in chat data."""
    lines = [f"Steps to {rng.choice(_VERBS)[1]} a {rng.choice(_NOUNS)}:"]
    for i in range(1, rng.randrange(3, 7)):
        lines.append(f"{i}. {rng.choice(_VERBS)[1].capitalize()} the {rng.choice(_ADJS)} {rng.choice(_NOUNS)}.")
    if rng.random() < 0.3:
        var = rng.choice(_NOUNS)
        lines.append(f"def {var}_total(items):\n    return sum(x.{var} for x in items)  # {rng.choice(_ADJS)}")
    if rng.random() < 0.3:
        lines.append(f'{{"id": {rng.randrange(10**6)}, "{rng.choice(_NOUNS)}": "{rng.choice(_ADJS)}"}}')
    return "\n".join(lines)


def generate_corpus(seed: int = 1234, target_bytes: int = 400_000) -> str:
    """Return the corpus text; the same seed and size always give the same string."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < target_bytes:
        r = rng.random()
        block = _paragraph(rng) if r < 0.55 else _dialogue(rng) if r < 0.85 else _listing(rng)
        parts.append(block)
        size += len(block) + 2
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(generate_corpus(), encoding="utf-8")
