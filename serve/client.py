"""Torch-free client for an inference backend: our serve process or a vLLM OpenAI server with LoRA enabled.

Both speak the same endpoints, so the API gateway forwards with this one client:
  POST /v1/chat/completions, POST /v1/completions   OpenAI bodies; `"stream": true` answers SSE (`data: ...`)
  GET  /v1/models                                  {"object": "list", "data": [{"id", "object", "created", ...}]}
  POST /v1/load_lora_adapter    {"lora_name", "lora_path"}   200 text on success (also when already loaded here)
                                (our serve also takes a full fine-tune's directory: served on its own engine)
  POST /v1/unload_lora_adapter  {"lora_name"}                200 text, 404 when unknown
The per-caller key for the concurrency limit travels in X-TuneForge-Key (the service key, if any, in Authorization).
Errors come back in the OpenAI envelope {"error": {"message", "type", "param", "code"}}; 429 carries Retry-After.
This module imports only httpx, pydantic and the standard library: no ML stack.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

import httpx
from pydantic import JsonValue

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODELS = "/v1/models"
LOAD_LORA = "/v1/load_lora_adapter"
UNLOAD_LORA = "/v1/unload_lora_adapter"
CLIENT_KEY_HEADER = "X-TuneForge-Key"
JsonObject = dict[str, JsonValue]


@dataclass
class BackendError(Exception):
    """A non-2xx answer from the backend, kept verbatim so the gateway can relay status, headers and body."""

    status_code: int
    body: bytes
    headers: dict[str, str]

    def __str__(self) -> str:
        return f"backend answered {self.status_code}: {self.body[:200]!r}"


class InferenceClient:
    """Async client for one backend base URL (e.g. http://10.0.0.5:8001)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=5.0),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> InferenceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @staticmethod
    def _auth(key: str | None) -> dict[str, str]:
        # the caller's key id lets our backend apply its per-key concurrency limit (vLLM ignores the header)
        return {CLIENT_KEY_HEADER: key} if key else {}

    async def _post_json(self, path: str, body: JsonObject, key: str | None) -> httpx.Response:
        response = await self._http.post(path, json=body, headers=self._auth(key))
        if response.status_code >= 400:
            raise BackendError(response.status_code, response.content, dict(response.headers))
        return response

    async def chat_completions(self, body: JsonObject, key: str | None = None) -> JsonObject:
        """Non-streaming chat completion; body is the client's request with `model` rewritten as needed."""
        result: JsonObject = (await self._post_json(CHAT_COMPLETIONS, {**body, "stream": False}, key)).json()
        return result

    async def completions(self, body: JsonObject, key: str | None = None) -> JsonObject:
        result: JsonObject = (await self._post_json(COMPLETIONS, {**body, "stream": False}, key)).json()
        return result

    async def stream(self, path: str, body: JsonObject, key: str | None = None) -> AsyncGenerator[bytes, None]:
        """Raw SSE bytes of a streaming request (path: CHAT_COMPLETIONS or COMPLETIONS), relayed as they arrive.

        Raises BackendError before the first byte if the backend refuses the request. Closing the iterator early
        closes the backend connection, which frees the backend's slot.
        """
        request = self._http.build_request("POST", path, json={**body, "stream": True}, headers=self._auth(key))
        response = await self._http.send(request, stream=True)
        try:
            if response.status_code >= 400:
                raise BackendError(response.status_code, await response.aread(), dict(response.headers))
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    async def models(self) -> list[JsonObject]:
        response = await self._http.get(MODELS)
        if response.status_code >= 400:
            raise BackendError(response.status_code, response.content, dict(response.headers))
        data: list[JsonObject] = response.json()["data"]
        return data

    async def load_lora_adapter(self, name: str, path: str) -> None:
        """Make adapter `name` servable from directory `path` (as seen by the backend). Idempotent."""
        try:
            await self._post_json(LOAD_LORA, {"lora_name": name, "lora_path": path}, None)
        except BackendError as exc:
            if exc.status_code == 400 and b"already been loaded" in exc.body and await self._has(name):
                return  # vLLM refuses a second load of the same name; the adapter is there, which is what we want
            raise

    async def unload_lora_adapter(self, name: str) -> None:
        """Forget adapter `name`; unknown names are not an error (404 is swallowed)."""
        try:
            await self._post_json(UNLOAD_LORA, {"lora_name": name}, None)
        except BackendError as exc:
            if exc.status_code != 404:
                raise

    async def _has(self, name: str) -> bool:
        return any(m.get("id") == name for m in await self.models())
