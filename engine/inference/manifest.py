"""Adapter manifests: read what training pinned and check it against the loaded base model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.inference.types import AdapterMismatchError


@dataclass(frozen=True)
class BaseIdentity:
    """What an adapter manifest must match: the base model's content hash and its tokenizer hash."""

    name: str
    content_hash: str
    tokenizer_hash: str


@dataclass(frozen=True)
class AdapterManifest:
    """The serving-relevant part of an adapter's manifest.json."""

    base_content_hash: str | None
    tokenizer_hash: str | None
    chat_template: str | None
    stop_token_ids: tuple[int, ...]
    stop_strings: tuple[str, ...]
    raw: dict[str, Any]


def _first(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        cur: Any = data
        for part in key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                break
            cur = cur[part]
        else:
            if cur is not None:
                return cur
    return None


def read_manifest(adapter_dir: Path) -> AdapterManifest:
    """Parse <adapter_dir>/manifest.json; refuse a directory without one."""
    path = adapter_dir / "manifest.json"
    if not path.is_file():
        raise AdapterMismatchError(f"adapter {adapter_dir} has no manifest.json; refusing to serve it")
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise AdapterMismatchError(f"{path} is not a JSON object")
    base_hash = _first(
        raw,
        "base_model_sha256",
        "base_model_hash",
        "base_model_content_hash",
        "base_model.content_hash",
        "base_model.sha256",
        "base.content_hash",
    )
    tok_hash = _first(raw, "tokenizer_sha256", "tokenizer_hash", "tokenizer.hash", "tokenizer.sha256")
    template = _first(raw, "chat_template", "tokenizer.chat_template")
    stop_ids = _first(raw, "stop_token_ids", "tokenizer.stop_token_ids") or []
    stop_strs = _first(raw, "stop_tokens", "stop_strings", "tokenizer.stop_tokens") or []
    return AdapterManifest(
        base_content_hash=str(base_hash) if base_hash is not None else None,
        tokenizer_hash=str(tok_hash) if tok_hash is not None else None,
        chat_template=str(template) if template is not None else None,
        stop_token_ids=tuple(int(i) for i in stop_ids),
        stop_strings=tuple(str(s) for s in stop_strs),
        raw=raw,
    )


def check_manifest(manifest: AdapterManifest, base: BaseIdentity, adapter_name: str) -> None:
    """Raise AdapterMismatchError unless the manifest pins exactly this base model and tokenizer."""
    if manifest.base_content_hash is None or manifest.tokenizer_hash is None:
        raise AdapterMismatchError(
            f"adapter {adapter_name!r}: manifest.json does not pin the base model content hash and tokenizer hash"
        )
    if manifest.base_content_hash != base.content_hash:
        raise AdapterMismatchError(
            f"adapter {adapter_name!r} was trained on a different base model than the loaded {base.name!r}: "
            f"manifest base hash {manifest.base_content_hash[:12]}…, loaded {base.content_hash[:12]}…"
        )
    if manifest.tokenizer_hash != base.tokenizer_hash:
        raise AdapterMismatchError(
            f"adapter {adapter_name!r} was trained with a different tokenizer than the loaded {base.name!r}: "
            f"manifest tokenizer hash {manifest.tokenizer_hash[:12]}…, loaded {base.tokenizer_hash[:12]}…"
        )
