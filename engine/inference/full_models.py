"""Full fine-tunes served beside the base model: each a whole model on its own engine, in a memory-bounded LRU."""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from engine.inference.asyncio_engine import AsyncEngine
from engine.inference.engine import EngineSettings, GenerationEngine
from engine.inference.manifest import BaseIdentity, check_manifest, read_manifest
from engine.inference.types import AdapterMismatchError, AdapterNotFoundError, EngineError
from engine.manifest import ArtifactManifest

log = logging.getLogger(__name__)
MIB = 1 << 20


def weight_files(directory: Path) -> list[Path]:
    """The model's own safetensors shards (a DPO checkpoint's reference_logps.safetensors is not a weight)."""
    return sorted(directory.glob("model*.safetensors"))


def is_full_model_dir(directory: Path) -> bool:
    """A directory of complete weights: config.json and no adapter_config.json (a checkpoint of a full run too)."""
    return (directory / "config.json").is_file() and not (directory / "adapter_config.json").is_file()


def dir_chat_template(directory: Path) -> str | None:
    """The chat template saved with a model's tokenizer files (chat_template.jinja or tokenizer_config.json)."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    try:
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None
    except (OSError, ValueError):
        return None
    return template if isinstance(template, str) else None


@dataclass(frozen=True)
class FullModelEntry:
    """A registered full model: where it lives, what its manifest pins, how many bytes its weights take."""

    name: str
    path: Path
    manifest: ArtifactManifest
    weight_bytes: int
    chat_template: str | None


def check_full_model(name: str, directory: Path, base: BaseIdentity) -> FullModelEntry:
    """Validate a full-model directory and its manifest against the served base (messages name it, not its path)."""
    if not (directory / "config.json").is_file():
        raise AdapterMismatchError(f"model {name!r} is neither a PEFT adapter nor a full model (no config.json)")
    weights = weight_files(directory)
    if not weights:
        raise AdapterMismatchError(f"model {name!r} has no model.safetensors (only safetensors load)")
    manifest = read_manifest(directory, name, what="model")
    if manifest.kind != "full":
        raise AdapterMismatchError(f"model {name!r}: its manifest says kind {manifest.kind!r}, not a full model")
    check_manifest(manifest, base, name, what="model")
    template = manifest.chat_template if manifest.chat_template is not None else dir_chat_template(directory)
    size = sum(f.stat().st_size for f in weights)
    return FullModelEntry(name, directory.resolve(), manifest, weight_bytes=size, chat_template=template)


class FullModelTooLarge(EngineError):
    """The model's weights exceed the whole memory budget for full models: it can never be loaded here."""


class FullModelsBusy(EngineError):
    """Making room needs evicting a model that is still answering requests: retry once one is idle."""


class FullModelLoadFailed(EngineError):
    """The weights did not load (out of memory, or unreadable); the cause is in the log."""


@dataclass(eq=False)
class LoadedFullModel:
    """A resident full model: its engine and the requests holding it (never evicted while held)."""

    entry: FullModelEntry
    engine: GenerationEngine
    generator: AsyncEngine
    holds: int = 0
    retired: bool = field(default=False)  # unregistered or replaced while held: closed once the last hold ends


Loader = Callable[[FullModelEntry], GenerationEngine]


class FullModels:
    """Registry of full models plus the resident ones, least recently used first, within count and byte limits.

    Thread-safe: acquire() blocks while weights load, so async callers run it in a worker thread.
    """

    def __init__(self, base: BaseIdentity, capacity: int, budget_bytes: int, loader: Loader) -> None:
        if capacity < 1 or budget_bytes < 1:
            raise ValueError("max_loaded_full_models and the full-model memory budget must be >= 1")
        self.base = base
        self.capacity = capacity
        self.budget_bytes = budget_bytes
        self._loader = loader
        self._lock = threading.Lock()  # guards the maps; never held while weights load
        self._load_lock = threading.Lock()  # one load at a time, so two requests never load the same model twice
        self._entries: dict[str, FullModelEntry] = {}
        self._resident: OrderedDict[str, LoadedFullModel] = OrderedDict()
        self.loads = 0
        self.evictions = 0

    # ---- registry -------------------------------------------------------------------------------------------

    def register(self, name: str, directory: Path) -> FullModelEntry:
        entry = check_full_model(name, directory, self.base)
        with self._lock:
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> bool:
        """Forget a model; its engine closes now if idle, else when its last request ends."""
        with self._lock:
            removed = self._entries.pop(name, None) is not None
            doomed = self._retire_locked(name)
        self._close(doomed)
        return removed

    def get(self, name: str) -> FullModelEntry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise AdapterNotFoundError(name)
        return entry

    def names(self) -> dict[str, FullModelEntry]:
        with self._lock:
            return dict(self._entries)

    def resident(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        with self._lock:
            return list(self._resident)

    # ---- residency ------------------------------------------------------------------------------------------

    def acquire(self, name: str) -> LoadedFullModel:
        """The model's engine, loaded if needed (evicting idle models past the limits), held until release()."""
        with self._lock:
            resident = self._hold_resident_locked(name)  # no wait behind another model's load
        if resident is not None:
            return resident
        with self._load_lock:
            with self._lock:
                resident = self._hold_resident_locked(name)  # loaded by the request we waited behind
                if resident is not None:
                    return resident
                entry = self._entries[name]
                doomed = self._retire_locked(name)  # a stale copy (re-registered from another directory)
                victims = self._make_room_locked(entry)
            self._close(doomed + victims)
            engine = self._load(entry)
            loaded = LoadedFullModel(entry, engine, AsyncEngine(engine), holds=1)
            with self._lock:
                self.loads += 1
                if self._entries.get(name) is entry:
                    self._resident[name] = loaded
                else:  # unregistered (or replaced) while its weights loaded: this request only, then closed
                    loaded.retired = True
            return loaded

    def _hold_resident_locked(self, name: str) -> LoadedFullModel | None:
        """Hold and return the resident copy of a registered model; None when it must be loaded first."""
        entry = self._entries.get(name)
        if entry is None:
            raise AdapterNotFoundError(name)
        loaded = self._resident.get(name)
        if loaded is None or loaded.entry.path != entry.path:
            return None
        self._resident.move_to_end(name)
        loaded.holds += 1
        return loaded

    def release(self, loaded: LoadedFullModel) -> None:
        with self._lock:
            loaded.holds -= 1
            close = loaded.retired and loaded.holds <= 0
        if close:
            self._close([loaded])

    def close(self) -> None:
        """Close every resident engine (shutdown): their running requests end with EngineShutdown."""
        with self._lock:
            doomed = list(self._resident.values())
            self._resident.clear()
        for loaded in doomed:
            loaded.engine.close(timeout=10)

    def _make_room_locked(self, entry: FullModelEntry) -> list[LoadedFullModel]:
        if entry.weight_bytes > self.budget_bytes:
            raise FullModelTooLarge(
                f"The model `{entry.name}` needs {entry.weight_bytes / MIB:.1f} MiB for its weights; this server "
                f"keeps at most {self.budget_bytes / MIB:.1f} MiB of full models in memory."
            )
        used = sum(m.entry.weight_bytes for m in self._resident.values())
        count = len(self._resident)
        victims: list[LoadedFullModel] = []
        for loaded in self._resident.values():  # least recently used first; held ones stay
            if count < self.capacity and used + entry.weight_bytes <= self.budget_bytes:
                break
            if loaded.holds == 0:
                victims.append(loaded)
                used -= loaded.entry.weight_bytes
                count -= 1
        if count >= self.capacity or used + entry.weight_bytes > self.budget_bytes:
            # nothing is evicted unless the new model then fits
            raise FullModelsBusy(f"Every loaded full model is answering requests; `{entry.name}` must wait.")
        for loaded in victims:
            del self._resident[loaded.entry.name]
        self.evictions += len(victims)
        return victims

    def _retire_locked(self, name: str) -> list[LoadedFullModel]:
        loaded = self._resident.pop(name, None)
        if loaded is None:
            return []
        if loaded.holds > 0:
            loaded.retired = True
            return []
        return [loaded]

    def _load(self, entry: FullModelEntry) -> GenerationEngine:
        try:
            return self._loader(entry)
        except Exception as exc:  # the exception may name the directory: it goes to the log only
            log.exception("could not load full model %s", entry.name)
            _free_memory()
            oom = isinstance(exc, MemoryError | torch.OutOfMemoryError)
            why = "there is not enough memory" if oom else "its weights could not be read"
            raise FullModelLoadFailed(f"The model `{entry.name}` could not be loaded: {why}.") from None

    def _close(self, doomed: list[LoadedFullModel]) -> None:
        for loaded in doomed:
            log.info("unloading full model %s", loaded.entry.name)
            loaded.engine.close(timeout=10)
        if doomed:
            _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def engine_loader(base_model: Any, tokenizer: Any, settings: EngineSettings) -> Loader:
    """Load a full model on the base model's device and dtype, served with the base's tokenizer.

    The manifest pins the base's tokenizer hash, so the base tokenizer is the one training encoded with; prompts
    are encoded by it too.
    """
    parameter = next(base_model.parameters())

    def load(entry: FullModelEntry) -> GenerationEngine:
        # the same safe loading as the base (safetensors only, no remote code), without a second tokenizer
        model = AutoModelForCausalLM.from_pretrained(
            str(entry.path),
            use_safetensors=True,
            trust_remote_code=False,
            dtype=parameter.dtype,
            attn_implementation="sdpa",
        )
        model.to(parameter.device)
        if getattr(model.config, "vocab_size", None) != getattr(base_model.config, "vocab_size", None):
            raise ValueError(f"full model {entry.name} has another vocabulary size than its base model")
        return GenerationEngine(model, tokenizer, BaseIdentity(entry.name, "", ""), settings)

    return load
