"""The artifact manifest: what a trained adapter or model is pinned to, one key per fact (torch-free).

The engine writes it as manifest.json next to the weights (and in each checkpoint); serving reads it and
refuses an artifact whose manifest is missing a fact, names a server path, or pins another base model.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, ValidationError

from engine.events import EvaluationSummary, Figures

MANIFEST_VERSION = 2
MANIFEST_FILE = "manifest.json"


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
    base_model: PublicName = Field(description="the base model's public name")
    base_model_sha256: Sha256 = Field(description="sha256 over the base model's weight files")
    tokenizer_sha256: Sha256 = Field(description="sha256 over the tokenizer files, chat template included")
    chat_template: str | None = Field(description="the Jinja chat template training rendered with")
    special_tokens: dict[str, str] = Field(description="the tokenizer's special tokens by role")
    stop_tokens: list[str] = Field(description="tokens that end an answer")
    stop_token_ids: list[int] = Field(description="their ids")
    training_file_sha256: Sha256
    validation_file_sha256: Sha256 | None
    spec: ResolvedSpec
    step: int = Field(ge=0, description="the step whose weights these are")
    trained_tokens: int = Field(ge=0)
    metrics: Figures = Field(default={}, description="that step's metrics")
    evaluation: EvaluationSummary | None = Field(default=None, description="base versus tuned, when measured")

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
