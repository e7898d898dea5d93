"""`python -m engine export`: a model's Hugging Face folder (adapter, or merged/full weights), built atomically.

The folder holds what stock transformers/peft load and nothing a training run keeps for itself (optimizer,
scheduler, RNG state, reference log-probs, the checkpoint's MANIFEST.json, state.json): files are taken from an
allow-list, never by copying the artifact directory. Weights and tokenizer files are hard-linked where the file
system allows (artifacts are immutable once published), so a download of a large full fine-tune costs no copy.
Every message written here names models, never a directory: the control plane shows them to API clients.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.artifacts import publish_dir
from engine.manifest import MANIFEST_FILE, ArtifactManifest, ManifestError, read_manifest
from engine.model_card import ExportFormat, model_card
from engine.models import TOKENIZER_FILES, content_hash, ensure_base_model, tokenizer_hash

log = logging.getLogger("engine.export")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_REFUSED = 3
MiB = 1024 * 1024
# What a merge process holds besides the weights (interpreter, torch, transformers), measured on CPU: ~0.4 GiB.
RUNTIME_OVERHEAD_BYTES = 512 * MiB
_BYTES_PER_FP32 = 4
# Tokenizer files of common hub models beyond the ones engine.models hashes.
TOKENIZER_EXTRA = ("tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
FULL_WEIGHT_GLOBS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")
MODEL_CONFIGS = ("config.json", "generation_config.json")


class ExportRefused(ValueError):
    """The export cannot be built from these inputs; `code` is stable, the message is safe for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class ExportResult:
    """The one JSON line `python -m engine export` prints."""

    status: str  # "ok" | "refused" | "failed"
    format: str
    cached: bool = False
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    ru_maxrss_mb: float = 0.0
    estimate_mb: float | None = None
    files: list[str] = field(default_factory=list)
    code: str | None = None
    message: str | None = None

    def to_line(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def peak_rss_mb() -> float:
    """This program's peak resident set size in MiB.

    /proc/self/status VmHWM where there is one: it starts afresh at exec, while getrusage's ru_maxrss keeps the
    peak of the process that forked us (a large parent makes a small export look large).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return ru_maxrss_mb()


def ru_maxrss_mb() -> float:
    """getrusage's ru_maxrss in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def fp32_bytes(files: list[Path]) -> int:
    """Bytes the tensors of these safetensors files take in fp32 (headers only are read)."""
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open handles are not iterable)
                numel = 1
                for dim in handle.get_slice(key).get_shape():
                    numel *= int(dim)
                total += numel * _BYTES_PER_FP32
    return total


def merge_estimate_bytes(base_dir: Path, adapter_dir: Path) -> int:
    """Memory a merge needs: the base in fp32 (it is merged in place), the adapter in fp32, the runtime."""
    base_files = sorted(base_dir.glob("*.safetensors"))
    return fp32_bytes(base_files) + fp32_bytes([adapter_dir / "adapter_model.safetensors"]) + RUNTIME_OVERHEAD_BYTES


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock across processes: concurrent exports of one folder build it once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _place(src: Path, dst: Path) -> None:
    """Hard-link src at dst (a copy across file systems)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _tokenizer_files(root: Path) -> list[Path]:
    return [root / n for n in (*TOKENIZER_FILES, *TOKENIZER_EXTRA) if (root / n).is_file()]


def _has_chat_template(d: Path) -> bool:
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    config = d / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _adapter_config(artifact: Path, manifest: ArtifactManifest) -> dict[str, Any]:
    """adapter_config.json naming the base by its public name (older artifacts recorded a server path)."""
    config = dict(json.loads((artifact / "adapter_config.json").read_text(encoding="utf-8")))
    config["base_model_name_or_path"] = manifest.base_model
    return config


def _merge(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """PEFT's own merge_and_unload, in fp32 on CPU; saved in the base's dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(
        str(base_dir), use_safetensors=True, trust_remote_code=False, dtype=torch.float32
    )
    saved_dtype = getattr(base.config, "dtype", None) or torch.float32
    config_dtype = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("dtype")
    if isinstance(config_dtype, str) and isinstance(getattr(torch, config_dtype, None), torch.dtype):
        saved_dtype = getattr(torch, config_dtype)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    if saved_dtype != torch.float32:
        merged = merged.to(saved_dtype)
    merged.save_pretrained(str(out), safe_serialization=True)


def _fill(
    out: Path,
    *,
    artifact: Path,
    manifest: ArtifactManifest,
    fmt: ExportFormat,
    base_dir: Path | None,
    model_id: str,
) -> None:
    out.mkdir(parents=True)
    if fmt == "adapter":
        _place(artifact / "adapter_model.safetensors", out / "adapter_model.safetensors")
        _write_json(out / "adapter_config.json", _adapter_config(artifact, manifest))
    elif manifest.kind == "lora":
        assert base_dir is not None
        _merge(base_dir, artifact, out)
    else:
        for pattern in FULL_WEIGHT_GLOBS:
            for src in sorted(artifact.glob(pattern)):
                _place(src, out / src.name)
        for name in MODEL_CONFIGS:
            if (artifact / name).is_file():
                _place(artifact / name, out / name)
    # generation_config.json: the full model's own; an adapter takes the base's (a merge saved its own).
    if not (out / "generation_config.json").is_file() and base_dir and (base_dir / "generation_config.json").is_file():
        _place(base_dir / "generation_config.json", out / "generation_config.json")
    tokenizer_root = artifact if manifest.kind == "full" and _tokenizer_files(artifact) else base_dir
    for src in _tokenizer_files(tokenizer_root) if tokenizer_root else []:
        _place(src, out / src.name)
    if manifest.chat_template and not _has_chat_template(out):
        (out / "chat_template.jinja").write_text(manifest.chat_template, encoding="utf-8")
    _place(artifact / MANIFEST_FILE, out / MANIFEST_FILE)
    (out / "README.md").write_text(model_card(model_id, manifest, fmt), encoding="utf-8")


def _check_artifact(artifact: Path, manifest: ArtifactManifest, model_id: str) -> None:
    if manifest.kind == "lora":
        needed = [artifact / "adapter_model.safetensors", artifact / "adapter_config.json"]
    else:
        needed = [artifact / "config.json"]
        if not any(artifact.glob("model*.safetensors")):
            needed.append(artifact / "model.safetensors")
    if not all(p.is_file() for p in needed):
        raise ExportRefused("artifact_incomplete", f"The weights of model `{model_id}` are incomplete.")


def export(
    artifact_dir: str | Path,
    out_dir: str | Path,
    fmt: ExportFormat,
    *,
    base: str,
    data_dir: str | Path,
    model_id: str,
    max_memory_mb: int | None = None,
) -> ExportResult:
    """Build out_dir (once: an existing one is reused) as the Hugging Face folder of the artifact."""
    started = time.perf_counter()
    artifact, out = Path(artifact_dir), Path(out_dir)
    try:
        manifest = read_manifest(artifact)
    except ManifestError:
        raise ExportRefused("artifact_incomplete", f"Model `{model_id}` has no readable manifest.") from None
    if fmt == "adapter" and manifest.kind != "lora":
        raise ExportRefused("invalid_format", f"Model `{model_id}` is a full fine-tune: it has no adapter.")
    _check_artifact(artifact, manifest, model_id)
    with _locked(out.with_name(f".{out.name}.lock")):
        if out.is_dir():
            return ExportResult("ok", fmt, cached=True, seconds=_since(started), files=_names(out))
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a build killed mid-way (timeout); we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        base_dir: Path | None = None
        estimate: int | None = None
        if manifest.kind == "lora" or not _tokenizer_files(artifact):
            base_dir = _resolve_base(base, data_dir, manifest)
        merging = fmt == "merged" and manifest.kind == "lora"
        if merging:
            assert base_dir is not None
            estimate = merge_estimate_bytes(base_dir, artifact)
            if max_memory_mb is not None and estimate > max_memory_mb * MiB:
                raise ExportRefused(
                    "merge_too_large",
                    f"Merging model `{model_id}` needs about {estimate // MiB} MiB of memory, more than the "
                    f"{max_memory_mb} MiB this server allows for a merge; download format=adapter instead.",
                )
            if content_hash(base_dir) != manifest.base_model_sha256:
                raise ExportRefused(
                    "base_mismatch",
                    f"The base model `{manifest.base_model}` here differs from the one `{model_id}` was trained on.",
                )

        publish_dir(
            out,
            lambda d: _fill(d, artifact=artifact, manifest=manifest, fmt=fmt, base_dir=base_dir, model_id=model_id),
        )
    return ExportResult(
        "ok",
        fmt,
        seconds=_since(started),
        peak_rss_mb=peak_rss_mb(),
        ru_maxrss_mb=ru_maxrss_mb(),
        estimate_mb=None if estimate is None else round(estimate / MiB, 1),
        files=_names(out),
    )


def _resolve_base(base: str, data_dir: str | Path, manifest: ArtifactManifest) -> Path:
    try:
        base_dir = ensure_base_model(base, data_dir)
    except (ValueError, OSError):
        raise ExportRefused(
            "base_unavailable", f"The base model `{manifest.base_model}` is not available on this server."
        ) from None
    if tokenizer_hash(base_dir) != manifest.tokenizer_sha256:
        raise ExportRefused(
            "base_mismatch", f"The tokenizer of base model `{manifest.base_model}` differs from the one trained with."
        )
    return base_dir


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.is_file())
