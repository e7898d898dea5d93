"""Adapter registry plus an LRU set of adapters loaded into one PeftModel over the shared base model."""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel

from engine.inference.lora_batch import StackedLoRA, UnsupportedAdapter
from engine.inference.manifest import BaseIdentity, check_manifest, read_manifest
from engine.inference.types import AdapterMismatchError, AdapterNotFoundError
from engine.manifest import ArtifactManifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterEntry:
    """A registered adapter: where it lives and what its manifest pins."""

    name: str
    path: Path
    manifest: ArtifactManifest


class AdapterRegistry:
    """Thread-safe name -> adapter directory map; every entry passed the manifest check."""

    def __init__(self, base: BaseIdentity) -> None:
        self._base = base
        self._lock = threading.Lock()
        self._entries: dict[str, AdapterEntry] = {}

    def register(self, name: str, path: str | Path) -> AdapterEntry:
        """Validate the directory and its manifest against the base model, then register it under name."""
        # Messages name the adapter, never its directory: they reach API clients.
        directory = Path(path)
        if not (directory / "adapter_config.json").is_file():
            raise AdapterMismatchError(f"adapter {name!r} is not a PEFT adapter (no adapter_config.json)")
        if not (directory / "adapter_model.safetensors").is_file():
            raise AdapterMismatchError(f"adapter {name!r} has no adapter_model.safetensors (only safetensors load)")
        manifest = read_manifest(directory, name)  # missing, unreadable, incomplete or naming a server path
        check_manifest(manifest, self._base, name)
        entry = AdapterEntry(name=name, path=directory.resolve(), manifest=manifest)
        with self._lock:
            self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> bool:
        with self._lock:
            return self._entries.pop(name, None) is not None

    def get(self, name: str) -> AdapterEntry:
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise AdapterNotFoundError(name)
        return entry

    def names(self) -> dict[str, AdapterEntry]:
        with self._lock:
            return dict(self._entries)


class LoadedAdapters:
    """The adapters resident in the PeftModel, evicted least-recently-used; only touched by the engine thread.

    PEFT adapter names become nn.ModuleDict keys (no '.' allowed), so each load gets an internal slot name.
    """

    def __init__(self, base_model: Any, capacity: int, stacked: bool = True) -> None:
        if capacity < 1:
            raise ValueError("max_loaded_adapters must be >= 1")
        self.base_model = base_model
        self.capacity = capacity
        self.peft: PeftModel | None = None
        self._lru: OrderedDict[tuple[str, Path], str] = OrderedDict()  # (public name, path) -> internal name
        self._in_use: Counter[str] = Counter()  # internal name -> running sequences
        self._counter = 0
        self.loads = 0
        self.use_stacked = stacked  # our two-matmul mixed-adapter path; False: PEFT's adapter_names path
        self.stacked: StackedLoRA | None = None

    @property
    def model(self) -> Any:
        return self.peft if self.peft is not None else self.base_model

    def is_loaded(self, entry: AdapterEntry) -> bool:
        return (entry.name, entry.path) in self._lru

    def loaded_names(self) -> list[str]:
        return [name for name, _ in self._lru]

    def can_make_room(self) -> bool:
        return len(self._lru) < self.capacity or any(self._in_use[i] == 0 for i in self._lru.values())

    def acquire(self, entry: AdapterEntry) -> str:
        """Ensure the adapter is resident (loading it, evicting idle ones past capacity) and pin it; return its slot."""
        key = (entry.name, entry.path)
        if key not in self._lru:
            self._load(key)
        self._lru.move_to_end(key)
        internal = self._lru[key]
        self._in_use[internal] += 1
        return internal

    def pinned(self) -> int:
        """Pins held by running rows (read from any thread: retried if the engine thread changes it meanwhile)."""
        for _ in range(10):
            try:
                return sum(self._in_use.values())
            except RuntimeError:  # dictionary changed size during iteration
                continue
        return -1

    def release(self, internal: str) -> None:
        self._in_use[internal] -= 1
        if self._in_use[internal] <= 0:
            del self._in_use[internal]

    def _load(self, key: tuple[str, Path]) -> None:
        if self.stacked is not None:
            self.stacked.restore()  # PEFT must see its own LoRA wrappers while it injects a new adapter
        self._counter += 1
        internal = f"slot{self._counter}"
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base_model, str(key[1]), adapter_name=internal)
            self.peft.eval()
        else:
            self.peft.load_adapter(str(key[1]), adapter_name=internal, is_trainable=False)
        self._lru[key] = internal
        self.loads += 1
        self._evict(keep=internal)
        self._activate()

    def _evict(self, keep: str | None = None) -> None:
        # PEFT cannot delete its last adapter, so at least one stays resident
        while len(self._lru) > self.capacity:
            victim = next((k for k, i in self._lru.items() if self._in_use[i] == 0 and i != keep), None)
            if victim is None:
                return
            self._delete(victim)

    def _delete(self, key: tuple[str, Path]) -> None:
        internal = self._lru.pop(key)
        assert self.peft is not None
        if self.stacked is not None:
            self.stacked.restore()
        self.peft.delete_adapter(internal)
        self._activate()

    def _activate(self) -> None:
        if self.peft is None or not self._lru:
            return
        # PEFT may leave a deleted adapter "active"; rows pick adapters by name, but PEFT checks the active one exists
        self.peft.set_adapter(next(reversed(self._lru.values())))
        if not self.use_stacked:
            return
        if self.stacked is None:
            self.stacked = StackedLoRA(self.peft)
        try:
            self.stacked.rebuild(list(self._lru.values()))
        except UnsupportedAdapter as exc:
            log.warning("mixed-adapter batching falls back to PEFT adapter_names: %s", exc)
            self.stacked.detach()
            self.stacked, self.use_stacked = None, False

    def sweep(self, registered: dict[str, AdapterEntry]) -> None:
        """Drop idle slots whose (name, path) is no longer registered."""
        for key in list(self._lru):
            entry = registered.get(key[0])
            stale = entry is None or entry.path != key[1]
            if stale and self._in_use[self._lru[key]] == 0 and len(self._lru) > 1:
                self._delete(key)
