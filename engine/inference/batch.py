"""Blocking batch generation over the engine: many prompts in, one text each out, under a time budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from engine.inference.engine import EngineSettings, GenerationEngine
from engine.inference.manifest import BaseIdentity
from engine.inference.types import ChoiceDelta, SamplingParams

_NO_IDENTITY = BaseIdentity(name="in-process", content_hash="", tokenizer_hash="")


def generate_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    max_seconds: float | None = None,
    max_batch_size: int = 32,
) -> list[str | None]:
    """Run every prompt through a private engine over `model` (continuous batching); None where time ran out.

    The engine puts the model in eval mode; the caller restores training mode if it needs it.
    """
    per_prompt = list(params) if isinstance(params, Sequence) else [params] * len(prompts)
    engine = GenerationEngine(model, tokenizer, _NO_IDENTITY, EngineSettings(max_batch_size=max_batch_size))
    texts: list[list[str]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    failed = [False] * len(prompts)
    remaining = [len(prompts)]
    done = threading.Event()
    lock = threading.Lock()

    def sink_for(i: int) -> Any:
        def sink(item: ChoiceDelta | BaseException) -> None:
            with lock:
                if finished[i]:
                    return
                if isinstance(item, BaseException) or item.finish_reason is not None:
                    if isinstance(item, BaseException):
                        failed[i] = True
                    else:
                        texts[i].append(item.text)
                    finished[i] = True
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()
                    return
                texts[i].append(item.text)

        return sink

    if not prompts:
        return []
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    pairs = zip(prompts, per_prompt, strict=True)
    request_ids = [engine.submit(list(p), sp, None, sink_for(i)) for i, (p, sp) in enumerate(pairs)]
    try:
        done.wait(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        with lock:
            unfinished = [i for i, f in enumerate(finished) if not f]
        for i in unfinished:
            engine.abort(request_ids[i])
    finally:
        engine.close()
    with lock:
        return ["".join(texts[i]) if finished[i] and not failed[i] else None for i in range(len(prompts))]
