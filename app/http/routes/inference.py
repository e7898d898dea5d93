"""Chat Completions and legacy Completions, forwarded to the inference backend of the model's base."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from app.core.asgi import CLIENT_CLOSED, ClientGone, GuardedStream, unless_disconnected
from app.gateway.bodies import parse_json_object, validate_body
from app.gateway.forward import Forwarded, forward, scrub_error_body
from app.http.deps import get_caller, get_state
from app.http.state import AppState
from app.usecases import models as models_uc
from app.usecases.keys import Caller
from app.wire.inference import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    openapi_answers,
    openapi_body,
)

router = APIRouter(prefix="/v1", tags=["inference"])


def _relayed(answer: Forwarded) -> GuardedStream:
    """A streaming answer relayed as it arrives; closing it frees the key's slot and the backend's rows."""
    return GuardedStream(answer.body(), answer.aclose, status_code=answer.status_code, media_type=answer.content_type)


async def _proxy(request: Request, path: str, state: AppState, caller: Caller) -> Response:
    # The body is parsed here, strictly, and forwarded as sent: the wire model documents it, the backend owns it.
    body = parse_json_object(await request.body())
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
        forwarded, content = await unless_disconnected(request.receive, answer())
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    if content is None:
        return _relayed(forwarded)
    if forwarded.status_code >= 400:
        content = scrub_error_body(content, server_paths)
    return Response(content, status_code=forwarded.status_code, media_type=forwarded.content_type)


@router.post(
    "/chat/completions",
    openapi_extra=openapi_body(ChatCompletionRequest),
    responses=openapi_answers(ChatCompletion, ChatCompletionChunk),
    response_model=None,
)
async def chat_completions(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> Response:
    """Creates a model response for the given chat conversation."""
    return await _proxy(request, "/v1/chat/completions", state, caller)


@router.post(
    "/completions",
    openapi_extra=openapi_body(CompletionRequest),
    responses=openapi_answers(Completion, Completion),
    response_model=None,
)
async def completions(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> Response:
    """Creates a completion for the provided prompt and parameters."""
    return await _proxy(request, "/v1/completions", state, caller)
