"""Forward one chat or completion request to the backend of its base model, streaming the answer back."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import anyio
import httpx

from app.core.errors import Unavailable
from app.core.limits import KeyLimiter
from app.gateway.backends import Backend, BackendRegistry
from app.gateway.bodies import JsonObject, validate_body
from app.usecases.models import InferenceTarget

__all__ = ["Forwarded", "forward", "scrub_error_body", "validate_body"]
log = logging.getLogger(__name__)


class Forwarded:
    """The backend's answer: status, content type and a body that may still be streaming."""

    # It holds the caller key's concurrency slot and the upstream connection until aclose(), which is idempotent
    # and must run however the answer ends: relayed, failed, or abandoned by the client before or during the body.

    def __init__(self, response: httpx.Response, release: Callable[[], None]) -> None:
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "application/json")
        self.streaming = self.content_type.startswith("text/event-stream")
        self._response = response
        self._release = release
        self._closed = False

    async def body(self) -> AsyncIterator[bytes]:
        """The raw body as the backend sends it; closes the answer when it ends (or is abandoned midway)."""
        try:
            async for chunk in self._response.aiter_raw():
                yield chunk
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        """The whole (non-streaming) body."""
        try:
            return await self._response.aread()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Release first: in a cancelled task any await raises at once. Then close upstream, shielded, which tells
        # the backend the client is gone so it frees its decoding rows too.
        self._release()
        with anyio.CancelScope(shield=True):
            await self._response.aclose()


async def forward(
    registry: BackendRegistry,
    limits: KeyLimiter,
    key_id: str,
    target: InferenceTarget,
    path: str,
    body: JsonObject,
) -> Forwarded:
    """Send the request; the key's concurrency slot is held until the Forwarded answer is closed."""
    backend = await registry.get(target.base_model)
    limits.acquire(key_id)
    try:
        response = await _send(backend, target, path, body)
    except BaseException:  # cancelled too (the client went away while the backend computed a plain answer)
        limits.release(key_id)
        raise
    return Forwarded(response, lambda: limits.release(key_id))


async def _send(backend: Backend, target: InferenceTarget, path: str, body: JsonObject) -> httpx.Response:
    if target.adapter_dir is not None:
        await backend.ensure_adapter(target.model_id, target.adapter_dir)
    for attempt in range(2):
        try:
            request = backend.client.build_request("POST", path, json=body)
            response = await backend.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("inference backend for %s unreachable: %r", target.base_model, exc)  # the URL stays here
            raise Unavailable(f"The inference backend for `{target.base_model}` is unreachable.") from None
        if response.status_code == 404 and target.adapter_dir is not None and attempt == 0:
            # The backend restarted and forgot the adapter: register it again, once.
            await response.aclose()
            backend.registered.discard(target.model_id)
            await backend.ensure_adapter(target.model_id, target.adapter_dir)
            continue
        return response
    raise Unavailable(f"The inference backend for `{target.base_model}` does not know `{target.model_id}`.")


def scrub_error_body(content: bytes, server_paths: Iterable[str]) -> bytes:
    """An error body from a backend, with its message replaced if it names a server path (vLLM's may)."""
    needles = [p.encode() for p in server_paths if p and p != "/"]
    if not any(n in content for n in needles):
        return content
    try:
        error = json.loads(content)["error"]
        kind, code = str(error.get("type") or "server_error"), error.get("code")
    except Exception:
        kind, code = "server_error", None
    log.warning("inference backend error named a server path; replaced: %s", content[:500])
    message = "The inference backend could not handle this request."
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
