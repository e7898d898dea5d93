"""asyncio face of the engine: one async iterator of choice deltas per request."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator
from typing import Any

from engine.inference.engine import GenerationEngine
from engine.inference.types import BASE_ADAPTER, ChoiceDelta, CompletionResult, FinishReason, SamplingParams


class _Mailbox:
    """Hands engine-thread items to one event loop, waking it once per batch rather than once per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Any], Any]] = []
        self._scheduled = False

    def post(self, inbox: asyncio.Queue[Any], item: Any) -> None:
        with self._lock:
            self._items.append((inbox, item))
            if self._scheduled:
                return
            self._scheduled = True
        # the consumer's loop may be gone already (it aborted); its abort reaches the engine next step
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for inbox, item in items:
            inbox.put_nowait(item)


class AsyncEngine:
    """Bridges the engine thread to asyncio; leaving an iterator early aborts the request and frees its rows."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine = engine
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()

    async def stream(
        self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> AsyncGenerator[ChoiceDelta, None]:
        """Yield deltas of all n choices as they are produced; the last delta of each choice has finish_reason."""
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = _Mailbox(loop)
        inbox: asyncio.Queue[ChoiceDelta | BaseException] = asyncio.Queue()

        def sink(item: ChoiceDelta | BaseException) -> None:
            mailbox.post(inbox, item)

        name = None if adapter in (None, BASE_ADAPTER) else adapter
        request_id = self.engine.submit(prompt_ids, params, name, sink)
        open_choices = params.n
        try:
            while open_choices:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    open_choices -= 1
                yield item
        finally:
            if open_choices:
                self.engine.abort(request_id)

    async def complete(
        self, prompt_ids: list[int], params: SamplingParams, adapter: str | None = None
    ) -> CompletionResult:
        """Run a request to the end and collect each choice's text, tokens and finish reason."""
        texts = [""] * params.n
        tokens: list[list[int]] = [[] for _ in range(params.n)]
        reasons: list[FinishReason] = ["length"] * params.n
        async for delta in self.stream(prompt_ids, params, adapter):
            texts[delta.index] += delta.text
            tokens[delta.index].extend(delta.token_ids)
            if delta.finish_reason is not None:
                reasons[delta.index] = delta.finish_reason
        return CompletionResult(texts=texts, finish_reasons=reasons, token_ids=tokens, prompt_tokens=len(prompt_ids))
