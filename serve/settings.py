"""Settings of one inference process."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ServeSettings(BaseModel):
    """Limits and capacity; the defaults suit tiny-chat on a laptop."""

    max_prompt_tokens: int = Field(default=2048, ge=1)
    max_output_tokens: int = Field(default=512, ge=1)
    max_concurrent_per_key: int = Field(default=8, ge=1)
    max_n: int = Field(default=8, ge=1)
    retry_after_s: int = Field(default=1, ge=0)
    max_batch_size: int = Field(default=64, ge=1)
    max_loaded_adapters: int = Field(default=8, ge=1)
    max_prefill_tokens: int = Field(default=4096, ge=1)
    api_key: str | None = None  # when set, requests must carry it as a Bearer token (the gateway does)
