"""Which inference backend serves each base model, and the adapters registered on each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import httpx

from app.core.errors import InvalidRequest, Unavailable
from app.core.settings import Settings

log = logging.getLogger(__name__)


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
            try:
                response = await self.client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})
            except httpx.HTTPError as exc:
                log.warning("inference backend for %s unreachable: %r", self.base_model, exc)
                raise Unavailable(f"The inference backend for `{self.base_model}` is unreachable.") from None
            if response.status_code >= 400 and "already" not in response.text:
                raise _backend_error(response, name)
            self.registered.add(name)

    async def forget_adapter(self, name: str) -> None:
        self.registered.discard(name)
        with contextlib.suppress(httpx.HTTPError):
            await self.client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def _backend_error(response: httpx.Response, model_id: str) -> Exception:
    """The client's error for a refused adapter load, naming the model."""
    # the backend's own message stays in the log: vLLM's names the adapter's directory, a server path
    log.warning("backend refused adapter %s (%s): %s", model_id, response.status_code, response.text[:500])
    if response.status_code < 500:
        return InvalidRequest(f"The model `{model_id}` cannot be served by its inference backend.", param="model")
    return Unavailable(f"The inference backend could not load the model `{model_id}`; retry shortly.")


class BackendRegistry:
    """Base model name -> backend. Cluster mode reads URLs from settings; embedded mode registers in-process apps."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._backends: dict[str, Backend] = {}
        self._factories: dict[str, Callable[[], httpx.AsyncClient]] = {}
        self._build_lock = asyncio.Lock()
        headers = {"authorization": f"Bearer {settings.inference_api_key}"} if settings.inference_api_key else {}
        timeout = httpx.Timeout(settings.inference_timeout_s, connect=5.0)
        for base, url in settings.inference_url_map.items():
            self.register(base, httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout))

    def register(self, base_model: str, client: httpx.AsyncClient) -> None:
        self._backends[base_model] = Backend(base_model, client)

    def register_lazy(self, base_model: str, factory: Callable[[], httpx.AsyncClient]) -> None:
        """Build the backend on first use (loading a model takes seconds; most processes never need it)."""
        self._factories[base_model] = factory

    async def get(self, base_model: str) -> Backend:
        backend = self._backends.get(base_model)
        if backend is not None:
            return backend
        factory = self._factories.get(base_model)
        if factory is None:
            raise Unavailable(f"No inference backend serves base model `{base_model}`.")
        async with self._build_lock:
            if base_model not in self._backends:
                client = await anyio.to_thread.run_sync(factory)  # off the event loop: it loads weights
                self.register(base_model, client)
        return self._backends[base_model]

    def all(self) -> list[Backend]:
        return list(self._backends.values())

    async def aclose(self) -> None:
        for backend in self._backends.values():
            await backend.client.aclose()
