"""Settings of one inference process."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, Field, field_validator


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
    # Full fine-tunes are whole models, each on its own engine: at most this many resident (LRU, idle ones evicted)
    max_loaded_full_models: int = Field(default=2, ge=1)
    # and their weights together within this many MiB (the base model not counted); a bigger one is refused
    max_full_models_memory_mib: int = Field(default=8192, ge=1)
    api_key: str | None = None  # when set, requests must carry it as a Bearer token (the gateway does)

    @field_validator("api_key")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        # an empty TUNEFORGE_INFERENCE_API_KEY= line means "no key", not "the empty key"
        return (value.strip() or None) if value is not None else None


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


def exposure_problem(host: str, api_key: str | None) -> str | None:
    """Why listening on host without api_key is unsafe (None when it is loopback or a key is set)."""
    if is_loopback(host) or (api_key and api_key.strip()):
        return None
    return (
        f"refusing to listen on {host} without a service key: anyone who can reach this port could run the model "
        "and load adapters. Set TUNEFORGE_INFERENCE_API_KEY to a generated secret (e.g. `openssl rand -hex 32`) "
        "shared with the API, or listen on 127.0.0.1 (the default)."
    )
