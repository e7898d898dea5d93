"""Chat Completions and legacy Completions, forwarded to the inference backend of the model's base."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.gateway.bodies import parse_json_object, validate_body
from app.gateway.forward import Forwarded, forward, scrub_error_body
from app.http.deps import get_caller, get_state
from app.http.state import AppState
from app.usecases import models as models_uc
from app.usecases.keys import Caller

router = APIRouter(prefix="/v1", tags=["inference"])
T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the access log shows what happened


class _ForwardedStream(StreamingResponse):
    """Relays a streaming answer and closes it however the response ends, even if its body never started."""

    def __init__(self, answer: Forwarded) -> None:
        super().__init__(answer.body(), status_code=answer.status_code, media_type=answer.content_type)
        self._answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # a body generator that never started runs no finally: without this, a client gone before the first
            # byte would keep its key's slot (429 for good) and the backend's rows
            await self._answer.aclose()


class _ClientGone(Exception):
    pass


async def _unless_disconnected(receive: Receive, work: Awaitable[T]) -> T:
    """Await work, cancelling it (and raising _ClientGone) as soon as the client disconnects."""

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
        raise _ClientGone()
    return job.result()


async def _proxy(request: Request, path: str, state: AppState, caller: Caller) -> Response:
    body: dict[str, Any] = parse_json_object(await request.body())
    model = validate_body(body)
    with state.db.session() as session:
        target = models_uc.resolve_for_inference(session, state.settings, caller.project_id, caller.project_name, model)
    settings = state.settings
    server_paths = [str(settings.data_dir), str(settings.resolved_storage_dir), target.adapter_dir or ""]

    async def answer() -> tuple[Forwarded, bytes | None]:
        forwarded = await forward(state.backends, state.inference_limits, caller.key_id, target, path, body)
        if forwarded.streaming and forwarded.status_code < 400:
            return forwarded, None
        return forwarded, await forwarded.read()

    try:
        # A plain answer is computed before its first byte: a client that leaves meanwhile must stop the backend
        # and give its slot back now, not when the backend finishes (Starlette only watches streaming responses).
        forwarded, content = await _unless_disconnected(request.receive, answer())
    except _ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    if content is None:
        return _ForwardedStream(forwarded)
    if forwarded.status_code >= 400:
        content = scrub_error_body(content, server_paths)
    return Response(content, status_code=forwarded.status_code, media_type=forwarded.content_type)


@router.post("/chat/completions")
async def chat_completions(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> Response:
    return await _proxy(request, "/v1/chat/completions", state, caller)


@router.post("/completions")
async def completions(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> Response:
    return await _proxy(request, "/v1/completions", state, caller)
