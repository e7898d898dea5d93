"""Forward one chat or completion request to the backend of its base model, streaming the answer back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from app.core.errors import InvalidRequest, Unavailable
from app.gateway.backends import Backend, BackendRegistry
from app.gateway.limits import KeyConcurrency
from app.usecases.models import InferenceTarget


@dataclass
class Forwarded:
    """The backend's answer: a status, headers and a body that may still be streaming."""

    status_code: int
    content_type: str
    body: AsyncIterator[bytes]
    streaming: bool


def validate_body(body: Any) -> str:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is a required property", param="model")
    return model


async def forward(
    registry: BackendRegistry,
    limits: KeyConcurrency,
    key_id: str,
    target: InferenceTarget,
    path: str,
    body: dict[str, Any],
) -> Forwarded:
    """Send the request; the key's concurrency slot is held until the body is fully relayed or abandoned."""
    backend = await registry.get(target.base_model)
    limits.acquire(key_id)
    try:
        response = await _send(backend, target, path, body)
    except BaseException:
        limits.release(key_id)
        raise

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            # Runs on normal end and when the client disconnects (the task is cancelled): release first, since
            # any await in a cancelled task raises at once; then close upstream, shielded, which tells the
            # backend the client is gone so it frees its decoding slot too.
            limits.release(key_id)
            with anyio.CancelScope(shield=True):
                await response.aclose()

    content_type = response.headers.get("content-type", "application/json")
    return Forwarded(response.status_code, content_type, relay(), content_type.startswith("text/event-stream"))


async def _send(backend: Backend, target: InferenceTarget, path: str, body: dict[str, Any]) -> httpx.Response:
    if target.adapter_dir is not None:
        await backend.ensure_adapter(target.model_id, target.adapter_dir)
    for attempt in range(2):
        try:
            request = backend.client.build_request("POST", path, json=body)
            response = await backend.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise Unavailable(f"The inference backend for `{target.base_model}` is unreachable: {exc}") from exc
        if response.status_code == 404 and target.adapter_dir is not None and attempt == 0:
            # The backend restarted and forgot the adapter: register it again, once.
            await response.aclose()
            backend.registered.discard(target.model_id)
            await backend.ensure_adapter(target.model_id, target.adapter_dir)
            continue
        return response
    raise Unavailable(f"The inference backend for `{target.base_model}` does not know `{target.model_id}`.")
