"""The artifact manifest: what a trained adapter or model is pinned to, one key per fact (torch-free).

The engine writes it as manifest.json next to the weights (and in each checkpoint); serving reads it and
refuses an artifact whose manifest is missing a fact, names a server path, or pins another base model.
The control plane writes one for an uploaded adapter, so the hashes it pins are computed here (engine.models
re-exports them): training and serving use the same functions, and none of them needs torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from engine.events import EvaluationSummary, Figures

MANIFEST_VERSION = 2
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _sha256_files(files: Sequence[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors weight files of a model or adapter directory, sorted."""
    root = Path(path)
    return sorted(root.glob("*.safetensors"))


def content_hash(path: str | Path) -> str:
    """sha256 over the weight files (names and bytes) of a model directory."""
    root = Path(path)
    files = weight_files(root)
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {root}")
    return _sha256_files(files, root)


def tokenizer_hash(path: str | Path | Any) -> str:
    """sha256 over the tokenizer files (vocabulary, merges, special tokens, chat template).

    Accepts a model directory or a tokenizer loaded from one (its `name_or_path`).
    """
    root = Path(path if isinstance(path, str | os.PathLike) else path.name_or_path)
    files = [root / n for n in TOKENIZER_FILES if (root / n).is_file()]
    if not files:
        raise FileNotFoundError(f"no tokenizer files in {root}")
    return _sha256_files(files, root)


def _public_name(value: str) -> str:
    """A model's public name ("tiny-chat", "org/model"), never a path on some server."""
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or value.startswith("~"):
        raise ValueError("must be a public model name, not a server path")
    if ".." in PurePosixPath(value).parts or "\\" in value:
        raise ValueError("must be a public model name, not a relative path")
    return value


PublicName = Annotated[str, Field(min_length=1), AfterValidator(_public_name)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ResolvedSpec(BaseModel):
    """The training spec as it ran, every `auto` resolved; no server paths (data and output dirs stay out)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["supervised", "dpo"]
    tuning: dict[str, JsonValue] = Field(description="LoRA rank/alpha/dropout/targets, or full fine-tuning")
    hyperparameters: dict[str, JsonValue] = Field(description="every hyperparameter, resolved")
    seed: int


class ArtifactManifest(BaseModel):
    """manifest.json of an adapter (`lora`) or full model (`full`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_version: Literal[2] = 2  # MANIFEST_VERSION
    kind: Literal["lora", "full"] = Field(description="PEFT adapter or complete weights")
    source: Literal["trained", "uploaded"] = Field(
        default="trained",
        description="trained by a TuneForge job, or an existing adapter uploaded with POST /v1/models (which has "
        "no training facts: no dataset hashes, no spec)",
    )
    base_model: PublicName = Field(description="the base model's public name")
    base_model_sha256: Sha256 = Field(description="sha256 over the base model's weight files")
    tokenizer_sha256: Sha256 = Field(description="sha256 over the tokenizer files, chat template included")
    chat_template: str | None = Field(description="the Jinja chat template training rendered with")
    special_tokens: dict[str, str] = Field(description="the tokenizer's special tokens by role")
    stop_tokens: list[str] = Field(description="tokens that end an answer")
    stop_token_ids: list[int] = Field(description="their ids")
    training_file_sha256: Sha256 | None = Field(default=None, description="required when trained")
    validation_file_sha256: Sha256 | None = None
    spec: ResolvedSpec | None = Field(default=None, description="required when trained")
    step: int = Field(ge=0, description="the step whose weights these are")
    trained_tokens: int = Field(ge=0)
    metrics: Figures = Field(default={}, description="that step's metrics")
    evaluation: EvaluationSummary | None = Field(default=None, description="base versus tuned, when measured")

    @model_validator(mode="after")
    def _facts_of_source(self) -> ArtifactManifest:
        if self.source == "trained" and (self.training_file_sha256 is None or self.spec is None):
            raise ValueError("a trained artifact must pin training_file_sha256 and spec")
        if self.source == "uploaded" and (self.kind != "lora" or self.training_file_sha256 or self.spec):
            raise ValueError("an uploaded artifact is a LoRA adapter without training facts")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """The stop tokens as text (what serving matches against the vocabulary)."""
        return tuple(self.stop_tokens)

    def write(self, directory: Path) -> Path:
        """Write <directory>/manifest.json (pretty, stable key order)."""
        path = directory / MANIFEST_FILE
        data = self.model_dump(mode="json")
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path


class ManifestError(ValueError):
    """A manifest.json that is missing, unreadable, or not a valid ArtifactManifest."""


def read_manifest(directory: Path) -> ArtifactManifest:
    """Parse <directory>/manifest.json; ManifestError naming the first bad field (never the directory)."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError("no manifest.json")
    try:
        return ArtifactManifest.model_validate_json(path.read_bytes())
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "manifest"
        if first["type"] == "json_invalid":
            raise ManifestError("unreadable manifest.json") from None
        raise ManifestError(f"manifest.json: {where}: {first['msg']}") from None
    except OSError:
        raise ManifestError("unreadable manifest.json") from None
