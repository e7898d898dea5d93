"""Generation engine: one base model, many LoRA adapters, continuous mixed-adapter batching."""

from engine.inference.asyncio_engine import AsyncEngine
from engine.inference.engine import EngineSettings, GenerationEngine
from engine.inference.loading import LoadedBase, load_base
from engine.inference.manifest import BaseIdentity
from engine.inference.prompting import render_chat
from engine.inference.types import (
    AdapterMismatchError,
    AdapterNotFoundError,
    ChoiceDelta,
    CompletionResult,
    EngineError,
    SamplingParams,
)
from engine.manifest import ArtifactManifest

__all__ = [
    "ArtifactManifest",
    "AdapterMismatchError",
    "AdapterNotFoundError",
    "AsyncEngine",
    "BaseIdentity",
    "ChoiceDelta",
    "CompletionResult",
    "EngineError",
    "EngineSettings",
    "GenerationEngine",
    "LoadedBase",
    "SamplingParams",
    "load_base",
    "render_chat",
]
