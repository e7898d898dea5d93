"""Generation engine: continuous mixed-adapter batching, greedy invariance, LRU adapters, sampling, stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from engine.chat import render, stop_token_ids
from engine.inference.asyncio_engine import AsyncEngine
from engine.inference.detok import IncrementalText
from engine.inference.engine import EngineLoad, EngineSettings, GenerationEngine
from engine.inference.loading import LoadedBase, load_base
from engine.inference.prompting import render_chat
from engine.inference.types import AdapterMismatchError, EngineError, EngineShutdown, SamplingParams
from tests.support.inference_testing import build_random_base, make_adapter

torch.set_num_threads(2)
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inference")
    base = build_random_base(root / "base")
    return {
        "base": base,
        "a1": make_adapter(base, root / "a1", seed=1),
        "a2": make_adapter(base, root / "a2", seed=2, target_modules=ALL_LINEAR),
        "a3": make_adapter(base, root / "a3", seed=3, target_modules=("o_proj", "down_proj"), rank=4),
        "root": root,
    }


@pytest.fixture(scope="module")
def loaded(world: dict[str, Path]) -> LoadedBase:
    return load_base(str(world["base"]), world["root"])


@contextlib.contextmanager
def make_engine(loaded: LoadedBase, world: dict[str, Path], **settings: Any) -> Iterator[GenerationEngine]:
    fresh = load_base(str(world["base"]), world["root"])  # an engine owns its model: PEFT wraps it in place
    engine = GenerationEngine(fresh.model, fresh.tokenizer, fresh.identity, EngineSettings(**settings))
    for name in ("a1", "a2", "a3"):
        engine.register_adapter(f"ft:{name}", world[name])
    try:
        yield engine
    finally:
        engine.close()


def prompt(loaded: LoadedBase, text: str) -> list[int]:
    return render_chat(loaded.tokenizer, [{"role": "user", "content": text}])


PROMPTS = ["hello", "the quick brown fox jumps over the lazy dog", "café 東京", "how are you today? I am fine"]
ADAPTERS: list[str | None] = [None, "ft:a1", "ft:a2", "ft:a3"]


def test_greedy_output_is_the_same_alone_and_in_a_continuous_mixed_adapter_batch(
    loaded: LoadedBase, world: dict[str, Path]
) -> None:
    cases = [(ad, text) for ad in ADAPTERS for text in PROMPTS]
    assert len({len(prompt(loaded, t)) for t in PROMPTS}) == len(PROMPTS)  # different prompt lengths
    with make_engine(loaded, world) as engine:
        gen = AsyncEngine(engine)

        async def alone() -> list[list[int]]:
            return [(await gen.complete(prompt(loaded, t), GREEDY, ad)).token_ids[0] for ad, t in cases]

        async def together() -> list[list[int]]:
            long_params = SamplingParams(max_tokens=40, temperature=0.0)
            first = gen.stream(prompt(loaded, PROMPTS[1]), long_params, "ft:a2")
            head = [await first.__anext__() for _ in range(3)]  # this row is mid-decode when the others join
            rest = asyncio.gather(*[gen.complete(prompt(loaded, t), GREEDY, ad) for ad, t in cases])
            tail = [d async for d in first]
            results = await rest
            return [r.token_ids[0] for r in results] + [[t for d in head + tail for t in d.token_ids]]

        solo = asyncio.run(alone())
        long_alone = asyncio.run(gen.complete(prompt(loaded, PROMPTS[1]), SamplingParams(40, 0.0), "ft:a2"))
        batched = asyncio.run(together())
    assert all(len(s) > 0 for s in solo)
    assert batched[:-1] == solo
    assert batched[-1] == long_alone.token_ids[0]
    # the adapters really change the output, so the comparison above covers mixed-adapter rows
    by_adapter = [tuple(map(tuple, solo[i * len(PROMPTS) : (i + 1) * len(PROMPTS)])) for i in range(len(ADAPTERS))]
    assert len(set(by_adapter)) == len(ADAPTERS)


def test_stacked_lora_batching_matches_peft_adapter_names(loaded: LoadedBase, world: dict[str, Path]) -> None:
    cases = [(ad, text) for ad in ADAPTERS for text in PROMPTS]

    def run(stacked: bool) -> list[list[int]]:
        with make_engine(loaded, world, stacked_lora=stacked) as engine:
            gen = AsyncEngine(engine)

            async def together() -> list[list[int]]:
                rs = await asyncio.gather(*[gen.complete(prompt(loaded, t), GREEDY, ad) for ad, t in cases])
                return [r.token_ids[0] for r in rs]

            out = asyncio.run(together())
            assert (engine.loaded.stacked is not None) == stacked
            return out

    assert run(stacked=True) == run(stacked=False)


def test_adapters_load_on_first_use_into_an_lru_of_limited_size(loaded: LoadedBase, world: dict[str, Path]) -> None:
    with make_engine(loaded, world, max_loaded_adapters=2) as engine:
        gen = AsyncEngine(engine)
        p = prompt(loaded, "hello")
        assert engine.loaded.loaded_names() == []
        first = asyncio.run(gen.complete(p, GREEDY, "ft:a1")).token_ids[0]
        assert engine.loaded.loaded_names() == ["ft:a1"]
        asyncio.run(gen.complete(p, GREEDY, "ft:a2"))
        asyncio.run(gen.complete(p, GREEDY, "ft:a1"))  # refreshes a1, so a2 is now the least recently used
        asyncio.run(gen.complete(p, GREEDY, "ft:a3"))
        assert sorted(engine.loaded.loaded_names()) == ["ft:a1", "ft:a3"]
        assert engine.loaded.loads == 3
        asyncio.run(gen.complete(p, GREEDY, "ft:a2"))  # evicts a1
        again = asyncio.run(gen.complete(p, GREEDY, "ft:a1")).token_ids[0]
        assert engine.loaded.loads == 5
        assert again == first


def test_more_adapters_in_flight_than_cache_slots_all_complete(loaded: LoadedBase, world: dict[str, Path]) -> None:
    with make_engine(loaded, world, max_loaded_adapters=1) as engine:
        gen = AsyncEngine(engine)
        p = prompt(loaded, "hello")

        async def run() -> list[list[int]]:
            rs = await asyncio.gather(*[gen.complete(p, GREEDY, ad) for ad in ADAPTERS * 2])
            return [r.token_ids[0] for r in rs]

        out = asyncio.run(run())
    assert out[:4] == out[4:]


def test_a_request_that_fails_to_start_releases_its_adapter_slot(loaded: LoadedBase, world: dict[str, Path]) -> None:
    """The second choice's seed (2**64) is one torch refuses: the first choice's pin must be released too."""
    with make_engine(loaded, world, max_loaded_adapters=1) as engine:
        gen = AsyncEngine(engine)
        p = prompt(loaded, "hello")
        for adapter in ("ft:a1", "ft:a2"):
            with pytest.raises(Exception, match="could not"):
                asyncio.run(gen.complete(p, SamplingParams(8, 1.0, 1.0, 2, seed=2**64 - 1), adapter))
        assert engine.loaded._in_use == {}
        # With one slot, a leaked pin on either adapter would leave ft:a3 waiting forever.
        out = asyncio.run(asyncio.wait_for(gen.complete(p, GREEDY, "ft:a3"), timeout=120))
        assert out.token_ids[0]


def _idle(engine: GenerationEngine, timeout: float = 60) -> None:
    """Wait until the engine holds nothing: no rows, queued requests, adapter pins or KV."""
    deadline = time.monotonic() + timeout
    while True:
        load = engine.load()
        if load == EngineLoad(0, 0, 0, 0, 0):
            return
        assert time.monotonic() < deadline, load
        time.sleep(0.02)


def test_a_failed_decode_step_fails_its_batch_only_and_frees_it(loaded: LoadedBase, world: dict[str, Path]) -> None:
    """A request queued behind the failed batch was never part of it: it runs; the failed rows free their pins."""
    with make_engine(loaded, world, max_batch_size=1) as engine:
        gen = AsyncEngine(engine)
        forward = engine._forward
        decodes = 0

        def fail_third_decode(input_ids: torch.Tensor, *args: Any) -> torch.Tensor:
            nonlocal decodes
            if input_ids.shape[1] == 1:
                decodes += 1
                if decodes == 3:
                    raise RuntimeError(f"device lost under {world['root']}")
            return forward(input_ids, *args)

        engine._forward = fail_third_decode  # type: ignore[method-assign]
        p = prompt(loaded, "hello")

        async def run() -> list[Any]:
            return await asyncio.gather(
                gen.complete(p, SamplingParams(max_tokens=20, temperature=0.0), "ft:a1"),
                gen.complete(p, SamplingParams(max_tokens=5, temperature=0.0), "ft:a2"),
                return_exceptions=True,
            )

        first, queued = asyncio.run(asyncio.wait_for(run(), timeout=120))
        assert isinstance(first, EngineError) and str(world["root"]) not in str(first)
        assert not isinstance(queued, BaseException) and len(queued.token_ids[0]) == 5
        _idle(engine)


def test_close_ends_running_and_queued_requests_and_refuses_new_ones(
    loaded: LoadedBase, world: dict[str, Path]
) -> None:
    with make_engine(loaded, world, max_batch_size=1) as engine:
        gen = AsyncEngine(engine)
        forward = engine._forward

        def slow(*args: Any) -> torch.Tensor:
            time.sleep(0.05)
            return forward(*args)

        engine._forward = slow  # type: ignore[method-assign]
        p = prompt(loaded, "hello")
        long = SamplingParams(max_tokens=500, temperature=1.0, seed=1)

        async def run() -> list[Any]:
            tasks = [asyncio.ensure_future(gen.complete(p, long, ad)) for ad in ("ft:a1", None)]
            while engine.load().active_sequences < 1 or engine.load().pending_requests < 1:
                await asyncio.sleep(0.02)  # one running, one queued behind it (batch of one)
            await asyncio.to_thread(engine.close)
            return await asyncio.gather(*tasks, return_exceptions=True)

        started = time.monotonic()
        results = asyncio.run(asyncio.wait_for(run(), timeout=60))
        assert time.monotonic() - started < 20  # not 500 slow tokens
        assert all(isinstance(r, EngineShutdown) for r in results), results
        load = engine.load()
        assert load.active_sequences == load.pending_requests == load.pinned_adapters == load.kv_rows == 0
        with pytest.raises(EngineShutdown):
            engine.submit(p, long, None, lambda _: None)
        assert not (engine._thread and engine._thread.is_alive())


def test_adapter_whose_manifest_pins_another_base_is_refused(loaded: LoadedBase, world: dict[str, Path]) -> None:
    bad = make_adapter(world["base"], world["root"] / "bad", seed=5, manifest_overrides={"base_model_sha256": "0" * 64})
    other_tok = make_adapter(
        world["base"], world["root"] / "badtok", seed=5, manifest_overrides={"tokenizer_sha256": "1" * 64}
    )
    bare = make_adapter(world["base"], world["root"] / "bare", seed=5)
    (bare / "manifest.json").unlink()
    with make_engine(loaded, world) as engine:
        with pytest.raises(AdapterMismatchError, match="different base model"):
            engine.register_adapter("ft:bad", bad)
        with pytest.raises(AdapterMismatchError, match="different tokenizer"):
            engine.register_adapter("ft:badtok", other_tok)
        with pytest.raises(AdapterMismatchError, match="no manifest.json") as missing:
            engine.register_adapter("ft:bare", bare)
        assert "ft:bad" not in engine.registry.names()
        (bare / "manifest.json").write_text("{not json")
        with pytest.raises(AdapterMismatchError, match="unreadable manifest.json") as unreadable:
            engine.register_adapter("ft:bare", bare)
        with pytest.raises(AdapterMismatchError, match="not a PEFT adapter") as empty:
            engine.register_adapter("ft:empty", world["root"])
    for refused in (missing, unreadable, empty):  # these messages reach API clients: the model id, never a path
        assert str(world["root"]) not in str(refused.value) and "ft:" in str(refused.value)


def test_seeded_sampling_is_reproducible_and_n_choices_differ(loaded: LoadedBase, world: dict[str, Path]) -> None:
    with make_engine(loaded, world) as engine:
        gen = AsyncEngine(engine)
        p = prompt(loaded, "hello")
        params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.95, n=3, seed=7)
        a = asyncio.run(gen.complete(p, params, "ft:a1"))
        b = asyncio.run(gen.complete(p, params, "ft:a1"))
        c = asyncio.run(gen.complete(p, SamplingParams(16, 1.0, 0.95, 3, seed=8), "ft:a1"))
    assert a.token_ids == b.token_ids
    assert len(set(map(tuple, a.token_ids))) > 1
    assert c.token_ids != a.token_ids


def test_stop_string_stop_token_and_length(loaded: LoadedBase, world: dict[str, Path]) -> None:
    with make_engine(loaded, world) as engine:
        gen = AsyncEngine(engine)
        p = prompt(loaded, "the quick brown fox")
        full = asyncio.run(gen.complete(p, SamplingParams(max_tokens=20, temperature=0.0), "ft:a2"))
        assert full.finish_reasons == ["length"] and len(full.token_ids[0]) == 20
        text = full.texts[0]
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        cut = asyncio.run(gen.complete(p, SamplingParams(20, 0.0, stop=(stop,)), "ft:a2"))
        assert cut.finish_reasons == ["stop"] and cut.texts[0] == text[: text.index(stop)]
        tokens = full.token_ids[0]
        stop_id = tokens[5]
        by_id = asyncio.run(gen.complete(p, SamplingParams(20, 0.0, stop_token_ids=(stop_id,)), "ft:a2"))
        assert by_id.finish_reasons == ["stop"] and by_id.token_ids[0] == tokens[: tokens.index(stop_id)]


def test_streamed_text_never_contains_a_stop_string(loaded: LoadedBase) -> None:
    tok = loaded.tokenizer
    ids = tok("hello world, how are you today?", add_special_tokens=False)["input_ids"]
    detok = IncrementalText(tok, ("how are",))
    pieces = [detok.add(i) for i in ids]
    assert detok.stopped and "".join(pieces) == "hello world, "


def test_leaving_a_stream_early_frees_its_rows(loaded: LoadedBase, world: dict[str, Path]) -> None:
    with make_engine(loaded, world) as engine:
        gen = AsyncEngine(engine)

        async def run() -> None:
            stream = gen.stream(prompt(loaded, "hello"), SamplingParams(max_tokens=500, temperature=0.0), "ft:a1")
            await stream.__anext__()
            await stream.aclose()

        asyncio.run(run())
        deadline = time.monotonic() + 30
        while engine.active_sequences and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.active_sequences == 0


def test_serving_prompt_matches_the_training_formatter(loaded: LoadedBase, world: dict[str, Path]) -> None:
    tok = loaded.tokenizer
    manifest = json.loads((world["a1"] / "manifest.json").read_text())
    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "café?"}]
    served = render_chat(tok, convo, manifest["chat_template"])
    trained, _mask = render(tok, [*convo, {"role": "assistant", "content": "yes"}])
    assert trained[: len(served)] == served and len(trained) > len(served)
    assert manifest["stop_token_ids"] == stop_token_ids(tok)


@pytest.mark.parametrize("adapter", [None, "a2"])
def test_greedy_tokens_match_transformers_generate(
    loaded: LoadedBase, world: dict[str, Path], adapter: str | None
) -> None:
    """The engine's cache, positions and LoRA path reproduce the reference implementation token for token."""
    from peft import PeftModel

    reference = load_base(str(world["base"]), world["root"])
    model = reference.model
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(world[adapter])).eval()
    params = SamplingParams(max_tokens=24, temperature=0.0)
    with make_engine(loaded, world) as engine:
        gen = AsyncEngine(engine)
        for text in PROMPTS:
            ids = prompt(loaded, text)
            ours = asyncio.run(gen.complete(ids, params, f"ft:{adapter}" if adapter else None)).token_ids[0]
            with torch.no_grad():
                out = model.generate(
                    input_ids=torch.tensor([ids]),
                    attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                    max_new_tokens=len(ours),
                    min_new_tokens=len(ours),
                    do_sample=False,
                    pad_token_id=reference.tokenizer.pad_token_id,
                )
            assert out[0][len(ids) :].tolist() == ours, text
