"""Fan several engine requests into one delta stream, and SSE framing."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from engine.inference.asyncio_engine import AsyncEngine
from engine.inference.types import ChoiceDelta, SamplingParams

_DONE = object()
T = TypeVar("T")


async def merged(
    generator: AsyncEngine, prompts: list[list[int]], params: SamplingParams, adapter: str | None
) -> AsyncGenerator[ChoiceDelta, None]:
    """Deltas of every prompt's n choices, re-indexed prompt-major (prompt i, choice j -> i * n + j)."""
    if len(prompts) == 1:
        async with contextlib.aclosing(generator.stream(prompts[0], params, adapter)) as only:
            async for delta in only:
                yield delta
        return
    inbox: asyncio.Queue[Any] = asyncio.Queue()

    async def pump(offset: int, prompt: list[int]) -> None:
        try:
            async with contextlib.aclosing(generator.stream(prompt, params, adapter)) as stream:
                async for delta in stream:
                    delta.index += offset
                    await inbox.put(delta)
            await inbox.put(_DONE)
        except Exception as exc:
            await inbox.put(exc)

    tasks = [asyncio.create_task(pump(i * params.n, p)) for i, p in enumerate(prompts)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await inbox.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()  # each pump's aclose aborts its engine request


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


class ReleasingStreamingResponse(StreamingResponse):
    """A streaming response that runs on_close however it ends: finished, failed, or client gone before start."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], Awaitable[None] | None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                closer = getattr(self._content, "aclose", None)
                if closer is not None:
                    await closer()  # aborts the engine request if the stream ended early
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
