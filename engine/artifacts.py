"""Building the artifact manifest (engine.manifest) from a run, and the atomic publication of its dir."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from engine.chat import stop_token_ids
from engine.events import EvaluationSummary, Figures
from engine.fsutil import fsync_dir, fsync_tree, sha256_file
from engine.manifest import ArtifactManifest, ResolvedSpec
from engine.models import content_hash, tokenizer_hash


@dataclass
class Identity:
    """What a trained artifact is pinned to; computed once per run."""

    base_model: str
    base_path: Path
    base_sha256: str
    tokenizer_sha256: str
    chat_template: str | None
    stop_tokens: list[str]
    stop_token_ids: list[int]
    special_tokens: dict[str, str]
    training_file_sha256: str
    validation_file_sha256: str | None


def public_model_name(base_model: str) -> str:
    """The name a manifest records: a local directory given as the base model is named by its last part."""
    path = PurePosixPath(base_model)
    return path.name if path.is_absolute() or base_model.startswith(("./", "../", "~")) else base_model


def identify(
    base_model: str,
    base_path: Path,
    tokenizer: Any,
    train_file: str,
    valid_file: str | None,
    public_name: str | None = None,
) -> Identity:
    """Hash the base model, tokenizer and datasets; `public_name` (else one derived from base_model) names the base."""
    ids = stop_token_ids(tokenizer)
    return Identity(
        base_model=public_name or public_model_name(base_model),
        base_path=base_path,
        base_sha256=content_hash(base_path),
        tokenizer_sha256=tokenizer_hash(base_path),
        chat_template=getattr(tokenizer, "chat_template", None),
        stop_tokens=[str(tokenizer.convert_ids_to_tokens(i)) for i in ids],
        stop_token_ids=ids,
        special_tokens={str(k): str(v) for k, v in tokenizer.special_tokens_map.items()},
        training_file_sha256=sha256_file(Path(train_file)),
        validation_file_sha256=sha256_file(Path(valid_file)) if valid_file else None,
    )


def manifest(
    ident: Identity,
    *,
    kind: Literal["lora", "full"],
    spec: ResolvedSpec,
    step: int,
    trained_tokens: int,
    metrics: Figures | None = None,
    evaluation: EvaluationSummary | None = None,
) -> ArtifactManifest:
    """The manifest.json stored next to an adapter/model and in each checkpoint."""
    return ArtifactManifest(
        kind=kind,
        base_model=ident.base_model,
        base_model_sha256=ident.base_sha256,
        tokenizer_sha256=ident.tokenizer_sha256,
        chat_template=ident.chat_template,
        stop_tokens=ident.stop_tokens,
        stop_token_ids=ident.stop_token_ids,
        special_tokens=ident.special_tokens,
        training_file_sha256=ident.training_file_sha256,
        validation_file_sha256=ident.validation_file_sha256,
        spec=spec,
        step=step,
        trained_tokens=trained_tokens,
        metrics=metrics or {},
        evaluation=evaluation,
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty, stable JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def publish_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory next to `final`, fsync it and rename it into place (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        fill(tmp)
        fsync_tree(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
