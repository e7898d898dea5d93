"""Base model resolution (tiny-chat, local dirs, operator-listed hub ids), safe loading and content hashes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.fsutil import fsync_dir, fsync_tree

# The hashes a manifest pins live with the manifest (torch-free, shared with the control plane); re-exported.
from engine.manifest import TOKENIZER_FILES as TOKENIZER_FILES
from engine.manifest import content_hash as content_hash
from engine.manifest import tokenizer_hash as tokenizer_hash
from engine.manifest import weight_files as weight_files
from engine.tinychat import TINY_CHAT, Recipe, build_tiny_chat

ALLOWED_HUB_ENV = "TUNEFORGE_ALLOWED_BASE_MODELS"


# The name serving looks up (engine.inference.loading); one definition so training and serving always agree.
model_content_hash = content_hash


@contextlib.contextmanager
def _file_lock(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_tiny_chat(models_dir: Path, recipe: Recipe | None = None) -> Path:
    final = models_dir / TINY_CHAT
    if final.is_dir():
        return final
    # The lock avoids duplicate work; temp dir + rename keeps readers from ever seeing a half-built model even if
    # a process that does not take the lock races us.
    with _file_lock(models_dir / f".{TINY_CHAT}.lock"):
        if final.is_dir():
            return final
        tmp = models_dir / f".{TINY_CHAT}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            build_tiny_chat(tmp, recipe)
            fsync_tree(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
            fsync_dir(models_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_built(name: str, data_dir: str | Path) -> bool:
    """Whether a model built on first use (tiny-chat) is already under data_dir."""
    return (Path(data_dir) / "models" / name).is_dir()


def _allowed_hub_ids() -> set[str]:
    return {s.strip() for s in os.environ.get(ALLOWED_HUB_ENV, "").split(",") if s.strip()}


def ensure_base_model(
    name_or_path: str,
    data_dir: str | Path,
    *,
    allowed_hub_ids: Sequence[str] | None = None,
    recipe: Recipe | None = None,
) -> Path:
    """Return a local directory for a base model: tiny-chat (built on first use), a local dir, or a cached hub id.

    Hub ids must be on the operator's list (argument or TUNEFORGE_ALLOWED_BASE_MODELS) and already present in the
    local Hugging Face cache: this function never downloads.
    """
    models_dir = Path(data_dir) / "models"
    if name_or_path == TINY_CHAT:
        models_dir.mkdir(parents=True, exist_ok=True)
        return _build_tiny_chat(models_dir, recipe)
    local = Path(name_or_path)
    if local.is_dir():
        _require_safetensors(local)
        return local
    stored = models_dir / name_or_path
    if ".." not in Path(name_or_path).parts and stored.is_dir():
        _require_safetensors(stored)
        return stored
    allowed = set(allowed_hub_ids) if allowed_hub_ids is not None else _allowed_hub_ids()
    if name_or_path not in allowed:
        raise ValueError(f"unknown base model {name_or_path!r}: not tiny-chat, a local directory or an allowed hub id")
    from huggingface_hub import snapshot_download

    try:
        snap = Path(
            snapshot_download(
                name_or_path,
                local_files_only=True,
                allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"],
            )
        )
    except Exception as exc:  # the cache lookup raises several types; all mean "not available offline"
        raise ValueError(f"base model {name_or_path!r} is not in the local cache (downloads are disabled)") from exc
    _require_safetensors(snap)
    return snap


def _require_safetensors(path: Path) -> None:
    if not weight_files(path) and not (path / "adapter_config.json").is_file():
        raise ValueError(f"{path} holds no .safetensors weights (other formats are refused)")


def default_device_dtype(device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """CUDA with bf16 where available, CPU with fp32 otherwise; explicit arguments win."""
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if dtype is None:
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float32
    return device, dtype


def load_tokenizer(path: str | Path) -> Any:
    """Load the fast tokenizer saved next to a model (no remote code)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(path: str | Path, device: Any = None, dtype: Any = None) -> tuple[Any, Any]:
    """Load a causal LM from safetensors only (never remote code) plus its tokenizer."""
    from transformers import AutoModelForCausalLM

    device, dtype = default_device_dtype(device, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), use_safetensors=True, trust_remote_code=False, dtype=dtype, attn_implementation="sdpa"
    )
    model.to(device)
    model.train(False)  # eval mode (the same call; `eval` has no annotations in transformers' stubs)
    return model, load_tokenizer(path)
