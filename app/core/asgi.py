"""ASGI pieces the API gateway and the inference process share: the error answer, SSE framing, stream guards."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from pydantic import BaseModel
from starlette.responses import JSONResponse, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.core.errors import TuneForgeError

T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the access log shows what happened


def error_response(exc: TuneForgeError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The error in OpenAI's envelope with its status and headers (Retry-After included)."""
    return JSONResponse(exc.body(), status_code=exc.status_code, headers={**(headers or {}), **exc.headers()})


def sse(payload: BaseModel | Mapping[str, object] | str, exclude: set[str] | None = None) -> str:
    """One server-sent event: `data: <compact JSON>` (or a literal such as [DONE])."""
    if isinstance(payload, BaseModel):
        data = payload.model_dump_json(exclude=exclude)
    elif isinstance(payload, str):
        data = payload
    else:
        data = json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


class GuardedStream(StreamingResponse):
    """A streaming answer that closes its body and runs on_close however it ends, even if it never started."""

    # A body generator that never started runs no finally: without the guard, a client gone before the first
    # byte would keep its key's slot (a 429 for good) and the engine's rows.

    def __init__(
        self,
        content: AsyncIterator[str] | AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None] | None],
        *,
        status_code: int = 200,
        media_type: str = "text/event-stream",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(content, status_code=status_code, media_type=media_type, headers=headers)
        self._on_close = on_close
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                closer = getattr(self._content, "aclose", None)
                if closer is not None:
                    await closer()  # aborts the upstream request if the stream ended early
            finally:
                # even when closing raised or was cancelled: a slot not given back is a 429 for good
                result = self._on_close()
                if result is not None:
                    await result


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await work, but cancel it (and raise ClientGone) as soon as the client disconnects."""
    # Starlette cancels a streaming response on disconnect, not a handler still computing a plain one: without
    # this an abandoned request keeps its rows decoding and its key's slot taken until max_tokens.

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (watcher, job):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    if job.cancelled():
        raise ClientGone()
    return job.result()
