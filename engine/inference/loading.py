"""Load the base model, tokenizer and identity that the engine serves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import models
from engine.inference.manifest import BaseIdentity


@dataclass
class LoadedBase:
    """A loaded base model and what adapters must match to be served on it."""

    model: Any
    tokenizer: Any
    identity: BaseIdentity
    path: Path


def identity_for(name: str, path: Path) -> BaseIdentity:
    """Content and tokenizer hashes, computed by the same functions training records in manifests."""
    return BaseIdentity(name=name, content_hash=models.content_hash(path), tokenizer_hash=models.tokenizer_hash(path))


def load_base(
    name_or_path: str, data_dir: str | Path, device: Any = None, dtype: Any = None, *, name: str | None = None
) -> LoadedBase:
    """Resolve (tiny-chat is built on demand) and load weights (safetensors only, no remote code) and tokenizer.

    name: the public name it is served under (an operator's `name=/local/dir`); default: name_or_path itself.
    """
    path = models.ensure_base_model(name_or_path, data_dir)
    model, tokenizer = models.load_model_and_tokenizer(path, device=device, dtype=dtype)
    identity = identity_for(name or name_or_path, path)
    return LoadedBase(model=model, tokenizer=tokenizer, identity=identity, path=path)
