"""Serving benchmark: continuous mixed-adapter batching vs sequential PEFT generate, and vs the base model alone.

One run on tiny-chat with K=8 LoRA adapters and 64 concurrent greedy requests. Prints a table and, on the last line,
ratio=<our tokens/s over the sequential baseline's>. Targets: >= 5x sequential, >= 85% of base-only at equal load.
Usage: python bench/serve.py [--data-dir DIR] [--requests 64] [--adapters 8] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from engine.inference.asyncio_engine import AsyncEngine
from engine.inference.engine import EngineSettings, GenerationEngine
from engine.inference.loading import LoadedBase, load_base
from engine.inference.prompting import render_chat
from engine.inference.types import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the adapter builder is test support, not the library
from tests.support.inference_testing import make_adapter  # noqa: E402

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "hello",
    "Explain LoRA in one sentence.",
    "How many legs does a spider have?",
    "Translate 'good morning' to Spanish.",
    "Tell me a short joke, please.",
    "Summarise the plot of a detective story in two lines.",
]


def prompts(loaded: LoadedBase, n: int) -> list[list[int]]:
    return [
        render_chat(loaded.tokenizer, [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}])
        for i in range(n)
    ]


def sequential(loaded: LoadedBase, adapters: dict[str, Path], work: list[tuple[list[int], str]], max_tokens: int):
    """Baseline: one PeftModel with every adapter; per request set_adapter then generate."""
    from peft import PeftModel

    names = list(adapters)
    model = PeftModel.from_pretrained(loaded.model, str(adapters[names[0]]), adapter_name="a0")
    for i, name in enumerate(names[1:], start=1):
        model.load_adapter(str(adapters[name]), adapter_name=f"a{i}")
    model.eval()
    slot = {name: f"a{i}" for i, name in enumerate(names)}
    eos = loaded.tokenizer.eos_token_id
    tokens = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for ids, name in work:
            model.set_adapter(slot[name])
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )
            new = out[0, len(ids) :].tolist()
            tokens += len([t for t in new if t != eos])
    return tokens, time.perf_counter() - start


async def concurrent(
    gen: AsyncEngine, work: list[tuple[list[int], str | None]], max_tokens: int
) -> tuple[int, float, float]:
    """Generated tokens, wall seconds and CPU seconds (all threads of this process) of one concurrent wave."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    start, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*[gen.complete(ids, params, name) for ids, name in work])
    return sum(r.completion_tokens for r in results), time.perf_counter() - start, time.process_time() - cpu


async def ttft(gen: AsyncEngine, ids: list[int], name: str) -> float:
    start = time.perf_counter()
    stream = gen.stream(ids, SamplingParams(max_tokens=4, temperature=0.0), name)
    await stream.__anext__()
    elapsed = time.perf_counter() - start
    await stream.aclose()
    return elapsed


def _median(runs: list[tuple[int, float, float]]) -> tuple[int, float, float]:
    ordered = sorted(runs, key=lambda t: t[0] / t[1])
    return ordered[len(ordered) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--base-model", default="tiny-chat")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 1 by default: on shared cores 2 threads made small ops ~20x slower",
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved runs of (ours, base alone); median")
    parser.add_argument(
        "--sequential-sample",
        type=int,
        default=64,
        help="requests the sequential baseline runs (its tok/s does not depend on the count)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    scratch = None if args.data_dir else tempfile.TemporaryDirectory(prefix="bench-serve-")
    try:
        run(args, Path(args.data_dir) if args.data_dir else Path(scratch.name))  # type: ignore[union-attr]
    finally:
        if scratch is not None:
            scratch.cleanup()


def run(args: argparse.Namespace, data: Path) -> None:
    """Build the base model and adapters under data, measure, print the table and the ratio line."""

    t0 = time.perf_counter()
    loaded = load_base(args.base_model, data)
    adapters = {
        f"ft:bench:{i}": make_adapter(loaded.path, data / "adapters" / f"a{i}", seed=100 + i, target_modules=ALL_LINEAR)
        for i in range(args.adapters + 1)  # the extra one is cold for the time-to-first-token probe
    }
    cold_name = f"ft:bench:{args.adapters}"
    warm_names = [n for n in adapters if n != cold_name]
    ps = prompts(loaded, args.requests)
    work = [(ids, warm_names[i % len(warm_names)]) for i, ids in enumerate(ps)]
    setup = time.perf_counter() - t0

    sample = work[: args.sequential_sample]
    seq_tokens, seq_s = sequential(
        load_base(args.base_model, data), {n: adapters[n] for n in warm_names}, sample, args.max_tokens
    )

    fresh = load_base(args.base_model, data)
    engine = GenerationEngine(
        fresh.model,
        fresh.tokenizer,
        fresh.identity,
        EngineSettings(max_batch_size=args.requests, max_loaded_adapters=args.adapters + 1),
    )
    for name, path in adapters.items():
        engine.register_adapter(name, path)
    gen = AsyncEngine(engine)
    # (b) the same engine over the base model alone: nothing registered, so no LoRA layer in its forward
    plain = load_base(args.base_model, data)
    base_engine = GenerationEngine(
        plain.model, plain.tokenizer, plain.identity, EngineSettings(max_batch_size=args.requests)
    )
    base_gen = AsyncEngine(base_engine)

    async def ours() -> dict[str, float]:
        await concurrent(gen, [(ps[0], n) for n in warm_names], 2)  # load the K adapters (warm cache)
        await concurrent(base_gen, [(ps[0], None)], 2)
        # interleaved rounds, median tok/s: the cores are shared, so one slow moment must not decide the ratio
        mixed: list[tuple[int, float, float]] = []
        alone: list[tuple[int, float, float]] = []
        for i in range(args.rounds):  # alternate which goes first, so neither always runs on a warmer cache
            for which in ("mixed", "alone") if i % 2 == 0 else ("alone", "mixed"):
                if which == "mixed":
                    mixed.append(await concurrent(gen, list(work), args.max_tokens))
                else:
                    alone.append(await concurrent(base_gen, [(ids, None) for ids, _ in work], args.max_tokens))
        cold = await ttft(gen, ps[1], cold_name)
        warm = await ttft(gen, ps[2], cold_name)
        mixed_tokens, mixed_s, _ = _median(mixed)
        base_tokens, base_s, _ = _median(alone)
        cpu_ratio = sum(t / c for t, _, c in mixed) / sum(t / c for t, _, c in alone)
        return {
            "cpu_ratio": cpu_ratio,
            "mixed_tokens": mixed_tokens,
            "mixed_s": mixed_s,
            "base_tokens": base_tokens,
            "base_s": base_s,
            "cold": cold,
            "warm": warm,
        }

    r = asyncio.run(ours())
    engine.close()
    base_engine.close()
    seq_tps = seq_tokens / seq_s
    mixed_tps = r["mixed_tokens"] / r["mixed_s"]
    base_tps = r["base_tokens"] / r["base_s"]
    print(
        f"base={args.base_model} adapters={args.adapters} requests={args.requests} max_tokens={args.max_tokens} "
        f"threads={args.threads} setup={setup:.1f}s"
    )
    print(f"median of {args.rounds} interleaved rounds for the two concurrent rows")
    print(f"{'configuration':<44}{'tokens':>8}{'seconds':>9}{'tok/s':>9}")
    print(
        f"{f'(a) sequential PEFT set_adapter+generate ({len(sample)})':<44}{seq_tokens:>8}{seq_s:>9.2f}{seq_tps:>9.1f}"
    )
    print(
        f"{'(b) ours, base model alone, 64 concurrent':<44}{r['base_tokens']:>8.0f}{r['base_s']:>9.2f}{base_tps:>9.1f}"
    )
    print(
        f"{'ours, K mixed adapters, 64 concurrent':<44}{r['mixed_tokens']:>8.0f}{r['mixed_s']:>9.2f}{mixed_tps:>9.1f}"
    )
    print(
        f"ours/sequential={mixed_tps / seq_tps:.2f}x (target >= 5)  ours/base-only={mixed_tps / base_tps:.1%} "
        f"(target >= 85%)"
    )
    print(f"per CPU-second (less sensitive to other load on shared cores): ours/base-only={r['cpu_ratio']:.1%}")
    print(f"time to first token: cold adapter {r['cold'] * 1000:.0f} ms, warm adapter {r['warm'] * 1000:.0f} ms")
    print(f"ratio={mixed_tps / seq_tps:.2f}")


if __name__ == "__main__":
    main()
