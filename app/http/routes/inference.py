"""Chat Completions and legacy Completions, forwarded to the inference backend of the model's base."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from app.core.errors import InvalidRequest
from app.gateway.forward import forward, validate_body
from app.http.deps import get_caller, get_state
from app.http.state import AppState
from app.usecases import models as models_uc
from app.usecases.keys import Caller

router = APIRouter(prefix="/v1", tags=["inference"])


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"null")
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg}.", param=None) from exc
    validate_body(body)
    return body  # type: ignore[no-any-return]


async def _proxy(request: Request, path: str, state: AppState, caller: Caller) -> Response:
    body = await _json_body(request)
    with state.db.session() as session:
        target = models_uc.resolve_for_inference(
            session, state.settings, caller.project_id, caller.project_name, body["model"]
        )
    answer = await forward(state.backends, state.inference_limits, caller.key_id, target, path, body)
    if answer.streaming:
        return StreamingResponse(answer.body, status_code=answer.status_code, media_type=answer.content_type)
    content = b"".join([chunk async for chunk in answer.body])
    return Response(content, status_code=answer.status_code, media_type=answer.content_type)


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
