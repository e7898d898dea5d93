"""Which inference backend serves each base model, and the adapters registered on each."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx

from app.core.errors import InvalidRequest, Unavailable
from app.core.settings import Settings


@dataclass
class Backend:
    """One OpenAI-compatible server for one base model, with vLLM's runtime LoRA endpoints."""

    base_model: str
    client: httpx.AsyncClient
    registered: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def ensure_adapter(self, name: str, path: str) -> None:
        """Register an adapter once per backend process (`POST /v1/load_lora_adapter`)."""
        if name in self.registered:
            return
        async with self.lock:
            if name in self.registered:
                return
            response = await self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            if response.status_code >= 400 and "already" not in response.text:
                raise _backend_error(response, f"could not load adapter {name}")
            self.registered.add(name)

    async def forget_adapter(self, name: str) -> None:
        self.registered.discard(name)
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def _backend_error(response: httpx.Response, what: str) -> Exception:
    try:
        message = response.json()["error"]["message"]
    except Exception:
        message = response.text[:500]
    if response.status_code < 500:
        return InvalidRequest(f"{what}: {message}", param="model")
    return Unavailable(f"{what}: {message}")


class BackendRegistry:
    """Base model name -> backend. Cluster mode reads URLs from settings; embedded mode registers in-process apps."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._backends: dict[str, Backend] = {}
        headers = {"authorization": f"Bearer {settings.inference_api_key}"} if settings.inference_api_key else {}
        timeout = httpx.Timeout(settings.inference_timeout_s, connect=5.0)
        for base, url in settings.inference_url_map.items():
            self.register(base, httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout))

    def register(self, base_model: str, client: httpx.AsyncClient) -> None:
        self._backends[base_model] = Backend(base_model, client)

    def get(self, base_model: str) -> Backend:
        backend = self._backends.get(base_model)
        if backend is None:
            raise Unavailable(f"No inference backend serves base model `{base_model}`.")
        return backend

    def all(self) -> list[Backend]:
        return list(self._backends.values())

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.client.aclose()
