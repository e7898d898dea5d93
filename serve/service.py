"""The inference service behind the routes: adapters, full models, model resolution, prompts, limits, generation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from jinja2 import TemplateError

from app.core.errors import InvalidRequest, NotFound, Unavailable, model_not_found
from app.core.limits import KeyLimiter
from engine.chat import stop_token_ids
from engine.inference.adapters import AdapterEntry
from engine.inference.asyncio_engine import AsyncEngine
from engine.inference.engine import EngineSettings, GenerationEngine
from engine.inference.full_models import (
    MIB,
    FullModelEntry,
    FullModelLoadFailed,
    FullModels,
    FullModelsBusy,
    FullModelTooLarge,
    engine_loader,
    is_full_model_dir,
)
from engine.inference.loading import LoadedBase
from engine.inference.prompting import render_chat
from engine.inference.types import (
    AdapterMismatchError,
    AdapterNotFoundError,
    ChoiceDelta,
    SamplingParams,
)
from serve.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, ModelCard
from serve.settings import ServeSettings

log = logging.getLogger(__name__)
_DONE = object()


@dataclass(frozen=True)
class Target:
    """What a request's model id resolved to."""

    model: str
    adapter: str | None  # None: the base model (or a full model)
    chat_template: str | None
    stop_token_ids: tuple[int, ...]
    full: str | None = None  # a full fine-tune: generation runs on that whole model's own engine


@dataclass
class Held:
    """The engine a request generates on, held (not evicted) until release(), which is idempotent."""

    generator: AsyncEngine
    on_release: Callable[[], None] | None = None
    released: bool = field(default=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self.on_release is not None:
                self.on_release()


def _manifest_kind(directory: Path) -> object:
    try:
        data = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def _is_full(directory: Path) -> bool:
    """Complete weights rather than a PEFT adapter: config.json without adapter_config.json, or a `full` manifest."""
    if (directory / "adapter_config.json").is_file():
        return False
    return is_full_model_dir(directory) or _manifest_kind(directory) == "full"


class InferenceService:
    """One base model, its adapters and full fine-tunes of it, served under the limits in settings."""

    def __init__(
        self,
        base: LoadedBase,
        settings: ServeSettings,
        adapters_root: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.base = base
        self.base_name = base.identity.name
        self.settings = settings
        self.adapters_root = adapters_root.resolve() if adapters_root is not None else None
        # load_lora_adapter serves only directories under these (artifacts live under the data directory)
        self.adapter_roots = tuple(r.resolve() for r in (data_dir, adapters_root) if r is not None)
        engine_settings = EngineSettings(
            settings.max_batch_size, settings.max_loaded_adapters, settings.max_prefill_tokens
        )
        self.engine = GenerationEngine(base.model, base.tokenizer, base.identity, engine_settings)
        self.generator = AsyncEngine(self.engine)
        self.full_models = FullModels(
            base.identity,
            settings.max_loaded_full_models,
            settings.max_full_models_memory_mib * MIB,
            engine_loader(base.model, base.tokenizer, engine_settings),
        )
        self.limiter = KeyLimiter(settings.max_concurrent_per_key, settings.retry_after_s)
        self.created = int(time.time())
        self._registered_at: dict[str, int] = {}
        self._base_stops = tuple(stop_token_ids(base.tokenizer))

    # ---- adapters -------------------------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str) -> bool:
        """Register an adapter or a full fine-tune (manifest checked); False if this exact one was already there.

        A full model's weights load on its first request, not here (like an adapter's).
        """
        if name == self.base_name:
            raise InvalidRequest(f"'{name}' is the base model's name", param="lora_name")
        directory = self._confined(name, path)
        current = self._registered(name)
        if current is not None:
            if current.path == directory:
                return False
            raise InvalidRequest(f"The lora adapter '{name}' has already been loaded.", param="lora_name")
        if not directory.is_dir():
            raise NotFound(f"No adapter directory for '{name}'.", param="lora_path", code="adapter_not_found")
        try:
            if _is_full(directory):
                self.full_models.register(name, directory)
            else:
                self.engine.register_adapter(name, directory)
        except AdapterMismatchError as exc:  # its messages name the adapter or model, not the directory
            raise InvalidRequest(str(exc), param="lora_path", code="adapter_mismatch") from None
        self._registered_at[name] = int(time.time())
        return True

    def _registered(self, name: str) -> AdapterEntry | FullModelEntry | None:
        adapter = self.engine.registry.names().get(name)
        return adapter if adapter is not None else self.full_models.names().get(name)

    def _confined(self, name: str, path: str) -> Path:
        """The artifact directory, resolved, if it and its files stay under an adapter root (symlinks included)."""
        refused = InvalidRequest(
            f"The lora_path of '{name}' must be an absolute path inside this server's data directory.",
            param="lora_path",
            code="adapter_path_refused",
        )
        given = Path(path)
        if not given.is_absolute() or ".." in given.parts or "\0" in path:
            raise refused
        directory = given.resolve()
        # every file the directory holds, not just the ones we read: a full model is config, shards and tokenizer
        files = [directory, *(directory.iterdir() if directory.is_dir() else ())]
        if not all(any(f.resolve().is_relative_to(root) for root in self.adapter_roots) for f in files):
            raise refused
        return directory

    def shutdown(self) -> None:
        """Stop generating: running and queued requests end now (503 or an error event), instead of at max_tokens."""
        self.engine.close(timeout=10)
        self.full_models.close()

    def unload_adapter(self, name: str) -> None:
        """Forget adapter (or full model) name; 404 when it is not loaded."""
        if not (self.engine.unregister_adapter(name) or self.full_models.unregister(name)):
            raise NotFound(f"The lora adapter '{name}' cannot be found.", param="lora_name", code="model_not_found")
        self._registered_at.pop(name, None)

    def _from_root(self, model: str) -> bool:
        """Register <adapters_root>/<model id> on first use, if such an adapter or full-model directory exists."""
        if self.adapters_root is None:
            return False
        candidate = (self.adapters_root / model).resolve()
        if not candidate.is_relative_to(self.adapters_root):
            return False
        if not ((candidate / "adapter_config.json").is_file() or (candidate / "config.json").is_file()):
            return False
        self.load_adapter(model, str(candidate))
        return True

    def resolve(self, model: str) -> Target:
        """The base model, adapter or full model a model id names, with its chat template and stop tokens."""
        if model == self.base_name:
            return Target(model, None, None, self._base_stops)
        entry = self._registered(model)
        if entry is None:
            if not self._from_root(model):
                raise model_not_found(model)
            entry = self._registered(model)
            if entry is None:
                raise model_not_found(model)
        manifest = entry.manifest
        stops = set(manifest.stop_token_ids) | set(self._base_stops)
        vocab = self.base.tokenizer.get_vocab()
        stops |= {int(vocab[s]) for s in manifest.stop_strings if s in vocab}
        if isinstance(entry, FullModelEntry):
            # the manifest's template (else the one saved with its tokenizer): the one training rendered with
            return Target(model, None, entry.chat_template, tuple(sorted(stops)), full=model)
        return Target(model, model, manifest.chat_template, tuple(sorted(stops)))

    def models(self) -> list[ModelCard]:
        """The base model, then every registered adapter and full model by name."""
        base = ModelCard(id=self.base_name, created=self.created, root=self.base_name)
        names = sorted({*self.engine.registry.names(), *self.full_models.names()})
        tuned = [
            ModelCard(id=name, created=self._registered_at.get(name, self.created), root=name, parent=self.base_name)
            for name in names
        ]
        return [base, *tuned]

    async def hold(self, target: Target) -> Held:
        """The engine for target, a full model loaded (off the event loop) and held; 503 when it cannot be."""
        if target.full is None:
            return Held(self.generator)
        try:
            loaded = await anyio.to_thread.run_sync(self.full_models.acquire, target.full)
        except AdapterNotFoundError:  # unloaded since resolve()
            raise model_not_found(target.model) from None
        except FullModelTooLarge as exc:  # messages name the model, never its directory
            raise Unavailable(str(exc), code="model_too_large") from None
        except FullModelLoadFailed as exc:
            raise Unavailable(str(exc)) from None
        except FullModelsBusy as exc:
            raise Unavailable(f"{exc} Retry shortly.", retry_after=self.settings.retry_after_s) from None
        return Held(loaded.generator, lambda: self.full_models.release(loaded))

    # ---- requests -------------------------------------------------------------------------------------------

    @staticmethod
    def refuse_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
        """A 400 naming the first parameter this server accepts on the wire but cannot honour."""
        unsupported = ("logprobs",) if isinstance(body, ChatCompletionRequest) else ("echo", "logprobs")
        for name in unsupported:
            if getattr(body, name):
                raise InvalidRequest(f"{name} is not supported by this server", param=name)

    def chat_prompt(self, target: Target, messages: Sequence[ChatMessage]) -> list[int]:
        """Prompt ids of the conversation through the target's chat template (the one training used)."""
        try:
            ids = render_chat(
                self.base.tokenizer, [m.model_dump(exclude_unset=True) for m in messages], target.chat_template
            )
        except (ValueError, TypeError, KeyError, TemplateError) as exc:  # content parts the template cannot render
            log.info("chat template refused messages for %s: %s", target.model, exc)
            raise InvalidRequest("These messages cannot be rendered for this model.", param="messages") from None
        self._check_prompt(ids, "messages")
        return ids

    def text_prompts(self, prompt: str | list[str] | list[int] | list[list[int]]) -> list[list[int]]:
        """Prompt ids of each prompt (text or token ids), checked against the vocabulary and the length limit."""
        items: Sequence[str | int | list[int]] = [prompt] if isinstance(prompt, str) else prompt
        if items and all(isinstance(p, int) for p in items):
            items = [[p for p in items if isinstance(p, int)]]  # a single prompt given as token ids
        prompts = [self._encode(p) if isinstance(p, str) else p for p in items if not isinstance(p, int)]
        if not prompts or len(prompts) != len(items):  # the wire model lets neither through: kept as a 400
            raise InvalidRequest("prompt must be text or token ids, and not empty", param="prompt")
        vocab = len(self.base.tokenizer)
        for ids in prompts:
            if any(i < 0 or i >= vocab for i in ids):
                raise InvalidRequest("prompt contains token ids outside the vocabulary", param="prompt")
            self._check_prompt(ids, "prompt")
        return prompts

    def _encode(self, text: str) -> list[int]:
        return [int(i) for i in self.base.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def _check_prompt(self, ids: list[int], param: str) -> None:
        if not ids:
            raise InvalidRequest("the prompt is empty", param=param)
        if len(ids) > self.settings.max_prompt_tokens:
            raise InvalidRequest(
                f"This model's maximum prompt length is {self.settings.max_prompt_tokens} tokens; "
                f"your prompt has {len(ids)} tokens.",
                param=param,
                code="context_length_exceeded",
            )

    def sampling(
        self,
        target: Target,
        prompt_len: int,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        n: int | None,
        seed: int | None,
        stop: Sequence[str] | None,
    ) -> SamplingParams:
        """The engine's sampling parameters, within this server's output and choice limits."""
        n = n or 1
        if n > self.settings.max_n:
            raise InvalidRequest(f"n must be at most {self.settings.max_n}", param="n")
        room = self.engine.max_context - prompt_len
        if max_tokens is not None and max_tokens > self.settings.max_output_tokens:
            raise InvalidRequest(
                f"max_tokens is too large: {max_tokens}. This server supports at most "
                f"{self.settings.max_output_tokens} completion tokens.",
                param="max_tokens",
            )
        if room < 1:
            raise InvalidRequest(
                "the prompt fills the model's context", param="messages", code="context_length_exceeded"
            )
        limit = min(max_tokens or self.settings.max_output_tokens, room)
        try:
            return SamplingParams(
                max_tokens=limit,
                temperature=1.0 if temperature is None else temperature,
                top_p=max(1e-6, 1.0 if top_p is None else top_p),
                n=n,
                seed=seed,
                stop=tuple(stop or ()),
                stop_token_ids=target.stop_token_ids,
            )
        except ValueError as exc:  # the wire model checks the same ranges; this keeps any slip a 400, not a 500
            raise InvalidRequest(str(exc)) from None

    async def generate(
        self, target: Target, prompts: list[list[int]], params: SamplingParams, held: Held | None = None
    ) -> AsyncGenerator[ChoiceDelta, None]:
        """Deltas of every prompt's n choices, re-indexed prompt-major (prompt i, choice j -> i * n + j).

        held: the engine hold() gave for target (a full model's); default the base engine.
        """
        if target.full is not None and held is None:
            raise ValueError("a full model's requests run on the engine hold() gave")
        generator = held.generator if held is not None else self.generator
        if len(prompts) == 1:
            async with contextlib.aclosing(generator.stream(prompts[0], params, target.adapter)) as only:
                async for delta in only:
                    yield delta
            return
        inbox: asyncio.Queue[ChoiceDelta | BaseException | object] = asyncio.Queue()

        async def pump(offset: int, prompt: list[int]) -> None:
            try:
                async with contextlib.aclosing(generator.stream(prompt, params, target.adapter)) as stream:
                    async for delta in stream:
                        delta.index += offset
                        await inbox.put(delta)
                await inbox.put(_DONE)
            except Exception as exc:
                await inbox.put(exc)

        tasks = [asyncio.create_task(pump(i * params.n, p)) for i, p in enumerate(prompts)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await inbox.get()
                if item is _DONE:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                elif isinstance(item, ChoiceDelta):
                    yield item
        finally:
            for task in tasks:
                task.cancel()  # each pump's aclose aborts its engine request
