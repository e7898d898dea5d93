"""Serving's side of the artifact manifest: read it (engine.manifest) and check it against the loaded base."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.inference.types import AdapterMismatchError
from engine.manifest import ArtifactManifest, ManifestError
from engine.manifest import read_manifest as _read


@dataclass(frozen=True)
class BaseIdentity:
    """What an adapter manifest must match: the base model's content hash and its tokenizer hash."""

    name: str
    content_hash: str
    tokenizer_hash: str


def read_manifest(adapter_dir: Path, adapter_name: str | None = None, what: str = "adapter") -> ArtifactManifest:
    """Parse <adapter_dir>/manifest.json; AdapterMismatchError (naming the adapter, not its path) otherwise."""
    try:
        return _read(adapter_dir)
    except ManifestError as err:
        who = repr(adapter_name) if adapter_name is not None else f"the {what}"
        raise AdapterMismatchError(f"{what} {who}: {err}; refusing to serve it") from None


def check_manifest(manifest: ArtifactManifest, base: BaseIdentity, adapter_name: str, what: str = "adapter") -> None:
    """Raise AdapterMismatchError unless the manifest pins exactly this base model and tokenizer.

    what: "adapter" or "model" (a full fine-tune), the word the messages use.
    """
    if manifest.base_model_sha256 != base.content_hash:
        raise AdapterMismatchError(
            f"{what} {adapter_name!r} was trained on a different base model than the loaded {base.name!r}: "
            f"manifest base hash {manifest.base_model_sha256[:12]}…, loaded {base.content_hash[:12]}…"
        )
    if manifest.tokenizer_sha256 != base.tokenizer_hash:
        raise AdapterMismatchError(
            f"{what} {adapter_name!r} was trained with a different tokenizer than the loaded {base.name!r}: "
            f"manifest tokenizer hash {manifest.tokenizer_sha256[:12]}…, loaded {base.tokenizer_hash[:12]}…"
        )
