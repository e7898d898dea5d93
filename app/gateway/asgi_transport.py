"""An httpx transport that calls an ASGI app in-process and streams its response.

httpx's own ASGITransport buffers the whole response, which breaks SSE streaming and never tells the app
that the client went away; this one streams body messages as they are sent and reports a disconnect
when the response is closed early, so the inference engine frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.types import ASGIApp, Message, Scope

_DONE: Message = {"type": "tuneforge.done"}


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, messages: asyncio.Queue[Message], task: asyncio.Task[None], disconnected: asyncio.Event):
        self._messages = messages
        self._task = task
        self._disconnected = disconnected

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._messages.get()
            if message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
            elif message is _DONE or message["type"] == "tuneforge.error":
                return

    async def aclose(self) -> None:
        self._disconnected.set()
        if not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
            except (TimeoutError, Exception):
                self._task.cancel()


class StreamingASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?", 1)[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(key.lower(), value) for key, value in request.headers.raw],
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 0),
        }
        messages: asyncio.Queue[Message] = asyncio.Queue()
        disconnected = asyncio.Event()
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            await messages.put(message)

        async def run() -> None:
            try:
                await self.app(scope, receive, send)
            except Exception as exc:  # surfaced to the caller below
                await messages.put({"type": "tuneforge.error", "exc": exc})
            finally:
                await messages.put(_DONE)

        task = asyncio.create_task(run())
        try:
            start = await messages.get()
        except BaseException:
            # The caller gave up before the app answered (its client went away while a plain answer was being
            # computed): tell the app, as a server would, so it stops generating and frees its slot.
            disconnected.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            task.cancel()
            raise
        if start["type"] == "tuneforge.error":
            raise start["exc"]
        if start["type"] != "http.response.start":
            with contextlib.suppress(Exception):
                await task
            raise httpx.RemoteProtocolError("in-process inference app sent no response")
        return httpx.Response(
            start["status"],
            headers=start.get("headers", []),
            stream=_ResponseStream(messages, task, disconnected),
            request=request,
        )
