"""The generation engine: continuous batching of many requests, each on its own adapter, over one base model."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from engine.inference.adapters import AdapterEntry, AdapterRegistry, LoadedAdapters
from engine.inference.detok import IncrementalText
from engine.inference.kvbatch import PaddedKV
from engine.inference.manifest import BaseIdentity
from engine.inference.sampling import sample_batch
from engine.inference.types import (
    BASE_ADAPTER,
    ChoiceDelta,
    EngineError,
    EngineShutdown,
    FinishReason,
    SamplingParams,
)

log = logging.getLogger(__name__)

Sink = Callable[[ChoiceDelta | BaseException], None]


@dataclass
class EngineSettings:
    """Capacity knobs of one engine."""

    max_batch_size: int = 64  # sequences decoded together
    max_loaded_adapters: int = 8  # LRU capacity of resident adapters
    max_prefill_tokens: int = 4096  # prompt tokens admitted per step, so decoding rows are not starved
    stacked_lora: bool = True  # two-matmul mixed-adapter LoRA (lora_batch); False: PEFT's adapter_names loop


@dataclass(frozen=True)
class EngineLoad:
    """What the engine holds right now: all zero once every request has ended, however it ended."""

    active_sequences: int  # rows in the running batch
    starting_sequences: int  # admitted rows not yet prefilled
    pending_requests: int  # queued, not admitted
    pinned_adapters: int  # adapter pins held by rows
    kv_rows: int  # rows of the batch's KV cache


@dataclass(eq=False)
class _Request:
    id: int
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None  # public adapter name, None for the base model
    sink: Sink
    submitted: float = field(default_factory=time.perf_counter)
    open_choices: int = 0


@dataclass(eq=False)
class _Seq:
    request: _Request
    index: int
    slot: str  # PEFT adapter name for this row, BASE_ADAPTER for the base
    generator: torch.Generator
    text: IncrementalText
    stop_ids: frozenset[int]
    position: int  # position id of the next token fed to the model
    last_token: int = -1
    generated: list[int] = field(default_factory=list)
    done: bool = False


class GenerationEngine:
    """Owns the model; a single engine thread runs step() while other threads submit and abort requests."""

    def __init__(self, model: Any, tokenizer: Any, base: BaseIdentity, settings: EngineSettings | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.tokenizer = tokenizer
        self.base = base
        model.eval()
        self.device = next(model.parameters()).device
        self.registry = AdapterRegistry(base)
        self.loaded = LoadedAdapters(model, self.settings.max_loaded_adapters, self.settings.stacked_lora)
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.eos_ids = _eos_ids(model, tokenizer)
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._ids = itertools.count(1)
        self._pending: deque[_Request] = deque()
        self._running: list[_Seq] = []
        self._starting: list[_Seq] = []  # admitted, not yet prefilled
        self._kv: PaddedKV | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self.steps = 0
        self.aborted_rows = 0  # rows stopped because their client went away

    # ---- thread-safe API -------------------------------------------------------------------------------------

    def register_adapter(self, name: str, path: str | Path) -> AdapterEntry:
        """Validate (manifest vs base) and register an adapter; it is loaded on first use."""
        entry = self.registry.register(name, path)
        self._wake.set()
        return entry

    def unregister_adapter(self, name: str) -> bool:
        """Forget an adapter; running requests on it finish, its weights are unloaded once idle."""
        removed = self.registry.unregister(name)
        self._wake.set()
        return removed

    def submit(self, prompt_ids: list[int], params: SamplingParams, adapter: str | None, sink: Sink) -> int:
        """Queue a request; sink gets ChoiceDelta objects (then an exception on failure) from the engine thread."""
        if not prompt_ids:
            raise ValueError("prompt must contain at least one token")
        if len(prompt_ids) >= self.max_context:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens; the model's context is {self.max_context}")
        if params.n > self.settings.max_batch_size:
            raise ValueError(f"n must be <= {self.settings.max_batch_size}")
        if adapter is not None:
            self.registry.get(adapter)  # raises AdapterNotFoundError early
        request = _Request(next(self._ids), list(prompt_ids), params, adapter, sink)
        with self._lock:  # close() flips _closed under the lock, so no request slips in after the final drain
            if self._closed:
                raise EngineShutdown("the inference engine is shutting down")
            self._inbox.put(("submit", request))
            self._start_locked()
        self._wake.set()
        return request.id

    def abort(self, request_id: int) -> None:
        """Stop a request (client gone); its rows leave the batch before the next step."""
        if self._closed:
            return  # close() ends every request itself; a late abort would only sit in the inbox
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def start(self) -> None:
        """Start the engine thread (idempotent; not after close)."""
        with self._lock:
            if not self._closed:
                self._start_locked()

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="inference-engine", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the engine: running and queued requests end with EngineShutdown, later submits are refused."""
        with self._lock:
            self._closed = True
            thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
        if thread is None or not thread.is_alive():
            self._end_all(EngineShutdown("the inference engine is shutting down"))  # no engine thread left

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active_sequences(self) -> int:
        return len(self._running)

    def load(self) -> EngineLoad:
        """A snapshot of held resources, read from another thread (good enough for health and tests)."""
        kv = self._kv
        return EngineLoad(
            active_sequences=len(self._running),
            starting_sequences=len(self._starting),
            pending_requests=len(self._pending) + self._inbox.qsize(),
            pinned_adapters=self.loaded.pinned(),
            kv_rows=kv.batch_size if kv is not None else 0,
        )

    # ---- engine thread ---------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    busy = self.step()
                except Exception as exc:  # a bug must not wedge every waiting client
                    log.exception("engine step failed")
                    self._fail_batch(exc)
                    busy = False
                if not busy:
                    self._wake.wait(timeout=0.5)
                    self._wake.clear()
        finally:
            if self._closed:
                self._end_all(EngineShutdown("the inference engine is shutting down"))

    @torch.inference_mode()
    def step(self) -> bool:
        """Decode one token for every running row, then admit waiting requests (prefill). True if it did work."""
        self._drain_inbox()
        self.loaded.sweep(self.registry.names())
        if self._running:
            self._decode()  # first, so a steady stream of arrivals can never starve running rows
        admitted = self._admit()
        if admitted:
            self._starting = admitted
            self._prefill()
        self.steps += 1
        return bool(self._running or self._pending or admitted)

    def _drain_inbox(self) -> None:
        aborted: set[int] = set()
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "submit":
                self._pending.append(item)
            else:
                aborted.add(item)
        if aborted:
            self._pending = deque(r for r in self._pending if r.id not in aborted)
            for seq in self._running:
                if seq.request.id in aborted and not seq.done:
                    seq.done = True
                    self.aborted_rows += 1
            self._compact()

    def _admit(self) -> list[_Seq]:
        free = self.settings.max_batch_size - len(self._running)
        budget = self.settings.max_prefill_tokens
        admitted: list[_Seq] = []
        kept: deque[_Request] = deque()
        registered = self.registry.names()
        while self._pending:
            request = self._pending.popleft()
            cost = len(request.prompt_ids) * request.params.n
            fits = request.params.n <= free and (cost <= budget or not admitted)
            entry = registered.get(request.adapter) if request.adapter is not None else None
            if request.adapter is not None and entry is None:
                request.sink(EngineError(f"adapter {request.adapter!r} is no longer registered"))
                continue
            if fits and entry is not None and not (self.loaded.is_loaded(entry) or self.loaded.can_make_room()):
                fits = False  # every resident adapter is busy; wait for one to go idle
            if not fits:
                kept.append(request)
                continue
            try:
                admitted.extend(self._make_seqs(request, entry))
            except Exception:
                # the exception may name server paths (PEFT's errors do): it goes to the log, not to the client
                log.exception("could not start request on adapter %r", request.adapter)
                what = f"adapter {request.adapter!r}" if request.adapter is not None else "the request"
                request.sink(EngineError(f"could not start {what}"))
                continue
            free -= request.params.n
            budget -= cost
        self._pending = kept
        return admitted

    def _make_seqs(self, request: _Request, entry: AdapterEntry | None) -> list[_Seq]:
        seqs: list[_Seq] = []
        try:
            return self._fill_seqs(request, entry, seqs)
        except BaseException:
            # Unpin what was pinned before the failure: a leaked pin keeps an adapter slot busy for good.
            for seq in seqs:
                if seq.slot != BASE_ADAPTER:
                    self.loaded.release(seq.slot)
            raise

    def _fill_seqs(self, request: _Request, entry: AdapterEntry | None, seqs: list[_Seq]) -> list[_Seq]:
        stop_ids = set(self.eos_ids) | set(request.params.stop_token_ids)
        for index in range(request.params.n):
            generator = torch.Generator()
            seed = request.params.seed
            generator.manual_seed(seed + index if seed is not None else int(torch.randint(0, 2**62, ()).item()))
            slot = self.loaded.acquire(entry) if entry is not None else BASE_ADAPTER
            seqs.append(
                _Seq(
                    request=request,
                    index=index,
                    slot=slot,
                    generator=generator,
                    text=IncrementalText(self.tokenizer, request.params.stop),
                    stop_ids=frozenset(stop_ids),
                    position=len(request.prompt_ids),
                )
            )
        request.open_choices = request.params.n
        return seqs

    def _forward(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
        slots: list[str],
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        model = self.loaded.model
        if self.loaded.stacked is not None and self.loaded.peft is not None:
            self.loaded.stacked.set_rows(slots)
            model = self.loaded.peft.base_model.model  # the transformers model, LoRA layers injected
        elif self.loaded.peft is not None:
            kwargs["adapter_names"] = slots
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        # sampling runs on the CPU: per-request torch.Generator objects live there, and [B, V] is small
        last: torch.Tensor = out.logits[:, -1, :].float().cpu()
        return last

    def _prefill(self) -> None:
        # rows of equal prompt length prefill together with no padding, so a prompt's KV is the same alone or not
        groups: dict[int, list[_Seq]] = {}
        for seq in self._starting:
            groups.setdefault(len(seq.request.prompt_ids), []).append(seq)
        for length, group in groups.items():
            self._starting = [s for s in self._starting if s not in group]
            ids = torch.tensor([s.request.prompt_ids for s in group], dtype=torch.long, device=self.device)
            mask = torch.ones_like(ids)
            positions = torch.arange(length, device=self.device).unsqueeze(0).expand(len(group), -1)
            cache = DynamicCache()
            try:
                logits = self._forward(ids, mask, positions, cache, [s.slot for s in group])
            except Exception as exc:
                log.exception("prefill failed")
                self._fail(group, exc)
                continue
            part = PaddedKV(cache, mask)
            self._kv = part if self._kv is None else self._kv.merge(part)
            self._running.extend(group)
            self._advance(group, logits)
        self._compact()

    def _decode(self) -> None:
        assert self._kv is not None
        ids = torch.tensor([[s.last_token] for s in self._running], dtype=torch.long, device=self.device)
        positions = torch.tensor([[s.position] for s in self._running], dtype=torch.long, device=self.device)
        mask = self._kv.step_mask()
        logits = self._forward(ids, mask, positions, self._kv.cache, [s.slot for s in self._running])
        for seq in self._running:
            seq.position += 1  # the token sampled from these logits is fed at the next position
        self._advance(list(self._running), logits)
        self._compact()

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        tokens = sample_batch(
            logits,
            [s.request.params.temperature for s in seqs],
            [s.request.params.top_p for s in seqs],
            [s.generator for s in seqs],
        )
        for seq, token in zip(seqs, tokens, strict=True):
            self._accept(seq, token)

    def _accept(self, seq: _Seq, token: int) -> None:
        params = seq.request.params
        if token in seq.stop_ids:
            self._finish(seq, seq.text.finish(), [], "stop")
            return
        seq.generated.append(token)
        seq.last_token = token
        delta = seq.text.add(token)
        if seq.text.stopped:
            self._finish(seq, delta, [token], "stop")
        elif len(seq.generated) >= params.max_tokens or seq.position >= self.max_context:
            self._finish(seq, delta + seq.text.finish(), [token], "length")
        else:
            seq.request.sink(ChoiceDelta(seq.index, delta, [token]))

    def _finish(self, seq: _Seq, text: str, tokens: list[int], reason: FinishReason) -> None:
        seq.done = True
        seq.request.sink(ChoiceDelta(seq.index, text, tokens, reason))

    def _compact(self) -> None:
        """Drop finished rows from the running batch and their KV, unpinning their adapters."""
        keep = [i for i, s in enumerate(self._running) if not s.done]
        if len(keep) == len(self._running):
            return
        for seq in self._running:
            if seq.done and seq.slot != BASE_ADAPTER:
                self.loaded.release(seq.slot)
        self._running = [self._running[i] for i in keep]
        if not self._running:
            self._kv = None
        elif self._kv is not None:
            self._kv = self._kv.select(keep)

    def _fail(self, seqs: list[_Seq], exc: BaseException) -> None:
        """Fail rows that are not (or no longer) in the running batch, unpinning their adapters."""
        error = exc if isinstance(exc, EngineError) else EngineError("generation failed")  # exc goes to the log only
        for seq in seqs:
            if seq.slot != BASE_ADAPTER:
                self.loaded.release(seq.slot)
            if not seq.done:
                seq.done = True
                seq.request.sink(error)

    def _fail_batch(self, exc: BaseException) -> None:
        """A step failed: its rows end with an error; queued requests were not part of it and stay queued."""
        self._fail(self._running + self._starting, exc)
        self._running, self._starting, self._kv = [], [], None

    def _end_all(self, error: EngineError) -> None:
        """Fail every request the engine still holds (only with no engine thread running)."""
        self._drain_inbox()
        self._fail_batch(error)
        while self._pending:
            self._pending.popleft().sink(error)


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
