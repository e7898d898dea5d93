"""Benchmark the dataset checks against a bare json.loads loop over the same chat JSONL file.

Two sides are measured against the baseline: the format check (engine.formats.check_path) alone, and the check
followed by the token-level dataset doctor (tiny-chat's tokenizer and chat template, fitting, duplicates,
MinHash near-duplicates, labels) with its caps lifted so it reads the whole file.

Usage: python bench/formats.py [--mb 100] [--repeat 3]. Each measurement runs in a fresh child process so its
peak RSS is its own. The last line printed is `ratio=<check+doctor MB/s / baseline MB/s>`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_VOCABULARY = (
    "the a model data train answer question customer order invoice refund shipping account password reset "
    "please thanks help issue error update price plan upgrade cancel subscription weather city today "
    "tomorrow temperature report summary draft email meeting schedule translate french german code python "
    "function bug fix test deploy server latency memory cpu disk network request response token context"
)
_WORDS = _VOCABULARY.split()
_TOOL = {
    "type": "function",
    "function": {
        "name": "get_order_status",
        "description": "Look up the status of a customer's order",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"],
        },
    },
}


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(_WORDS, k=rng.randint(low, high))).capitalize() + "."


def _example(rng: random.Random) -> dict[str, object]:
    """A chat example like real support/assistant data: a system prompt, 1-4 turns, some tools and weights."""
    messages: list[dict[str, object]] = [{"role": "system", "content": _text(rng, 8, 30)}]
    for turn in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": _text(rng, 5, 60)})
        reply: dict[str, object] = {"role": "assistant", "content": _text(rng, 10, 120)}
        if turn == 0 and rng.random() < 0.2:
            reply["weight"] = 0
        messages.append(reply)
    example: dict[str, object] = {"messages": messages}
    if rng.random() < 0.1:
        arguments = json.dumps({"order_id": str(rng.randint(10_000, 99_999))})
        function = {"name": "get_order_status", "arguments": arguments}
        call = {"id": "call_1", "type": "function", "function": function}
        messages[1:1] = [
            {"role": "user", "content": _text(rng, 5, 20)},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        ]
        example["tools"] = [_TOOL]
    return example


def generate(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write a chat JSONL file of about `megabytes` MB; return its size in bytes."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            batch = "".join(json.dumps(_example(rng), ensure_ascii=False) + "\n" for _ in range(500))
            f.write(batch)
            written += len(batch.encode())
    return path.stat().st_size


def _child(kind: str, path: str) -> None:
    """Run one measurement in this process and print its seconds and peak RSS as JSON."""
    if kind == "ours":
        from engine.formats import check_path

        start = time.perf_counter()
        report = check_path(path, max_line_bytes=1_048_576)
        seconds = time.perf_counter() - start
        extra = {"examples": report.n_examples, "errors": report.n_errors, "duplicates": report.duplicates}
    elif kind == "doctor":
        from engine.formats import check_path
        from engine.formats.doctor import DoctorLimits, diagnose
        from engine.formats.tokenizer import tiny_chat_text_tokenizer

        tokenizer = tiny_chat_text_tokenizer()  # trained before the clock starts, as a server has it loaded
        start = time.perf_counter()
        report = check_path(path, max_line_bytes=1_048_576)
        doctor, _ = diagnose(path, tokenizer, DoctorLimits(max_examples=10**9, max_seconds=1e9))
        seconds = time.perf_counter() - start
        extra = {
            "examples": doctor.examined,
            "truncated": doctor.truncated.count,
            "tokens_p95": doctor.tokens.p95,
            "near_duplicates": doctor.near_duplicates.count,
        }
    else:
        start = time.perf_counter()
        n = 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                json.loads(line)
                n += 1
        seconds = time.perf_counter() - start
        extra = {"examples": n}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, **extra}))


def _measure(kind: str, path: Path, repeat: int) -> dict[str, float]:
    """Best time and largest peak RSS over `repeat` fresh child processes."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(path)],
            check=True,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated file in MB")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the best time counts")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory(prefix="tf-bench-formats-") as tmp:
        path = Path(tmp) / "chat.jsonl"
        size = generate(path, args.mb)
        with open(path, "rb") as f:  # warm the page cache so neither side pays for the first read
            while f.read(1 << 24):
                pass
        base = _measure("baseline", path, args.repeat)
        ours = _measure("ours", path, args.repeat)
        doctor = _measure("doctor", path, args.repeat)
    mb = size / 1_000_000
    rows = [("baseline json.loads loop", base), ("engine.formats.check_path", ours), ("check + doctor", doctor)]
    print(f"file: {mb:.1f} MB, {int(ours['examples'])} examples, cpu count {os.cpu_count()}")
    print(f"{'side':<28}{'seconds':>9}{'MB/s':>9}{'peak RSS MB':>13}")
    for name, run in rows:
        print(f"{name:<28}{run['seconds']:>9.2f}{mb / run['seconds']:>9.1f}{run['peak_rss_mb']:>13.1f}")
    print(f"check: errors={int(ours['errors'])} duplicates={int(ours['duplicates'])}")
    print(
        f"doctor: examples={int(doctor['examples'])} truncated={int(doctor['truncated'])} "
        f"tokens_p95={int(doctor['tokens_p95'])} near_duplicates={int(doctor['near_duplicates'])}"
    )
    print(f"check alone vs baseline: ratio={base['seconds'] / ours['seconds']:.3f}")
    print(f"ratio={base['seconds'] / doctor['seconds']:.3f}")


if __name__ == "__main__":
    main()
