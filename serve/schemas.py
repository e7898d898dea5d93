"""Request bodies of the OpenAI-compatible endpoints (unknown fields are accepted and ignored).

Every float is finite (allow_inf_nan=False): NaN compares false with every bound, so range checks alone let it in.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    include_usage: bool | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    role: str
    content: str | list[Any] | None = None


def _check_stop(value: str | list[str] | None) -> str | list[str] | None:
    if isinstance(value, list) and len(value) > 4:
        raise ValueError("at most 4 stop sequences are allowed")
    return value


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    model: str
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    stop: str | list[str] | None = None
    # OpenAI's range (int64); torch's generator would refuse larger seeds after the request was admitted.
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    _stop = field_validator("stop")(_check_stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool | None = None
    logprobs: int | None = None


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    lora_name: str = Field(min_length=1)
