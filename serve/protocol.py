"""The inference process's wire: OpenAI's generation models (shared with the API) and vLLM's runtime LoRA bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.wire.inference import (
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CompletionUsage,
    WireRequest,
)

__all__ = [
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChoice",
    "ChatCompletionChunk",
    "ChatCompletionMessage",
    "ChatCompletionRequest",
    "ChatDelta",
    "ChatMessage",
    "Completion",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionUsage",
    "Health",
    "LoadLoraRequest",
    "ModelCard",
    "ModelList",
    "UnloadLoraRequest",
]


class LoadLoraRequest(WireRequest):
    """`POST /v1/load_lora_adapter`, as vLLM takes it."""

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(WireRequest):
    """`POST /v1/unload_lora_adapter`."""

    lora_name: str = Field(min_length=1)


class ModelCard(BaseModel):
    """One servable model; `root` names the model (vLLM puts a path there; ours never names a server path)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tuneforge"
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    base_model: str
    active_sequences: int
