"""The inference process's HTTP routes: parse the body, call the service, present the answer."""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError

from app.core.asgi import CLIENT_CLOSED, ClientGone, GuardedStream, unless_disconnected
from app.core.errors import Unauthorized, invalid_fields
from app.core.json_body import parse_json_body
from app.wire.inference import answer_head, openapi_answers, openapi_body
from engine.inference.types import EngineError, SamplingParams
from serve.answers import chat_events, collect, completion_events
from serve.errors import engine_error
from serve.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    Health,
    LoadLoraRequest,
    ModelList,
    UnloadLoraRequest,
)
from serve.service import Held, InferenceService, Target

M = TypeVar("M", bound=BaseModel)
MAX_BODY_DEPTH = 32  # OpenAI bodies nest a handful of levels (messages -> content parts -> fields)
router = APIRouter()


def service_of(request: Request) -> InferenceService:
    """The app's one service (serve.app puts it on the app's state)."""
    service: InferenceService = request.app.state.service
    return service


def key_of(authorization: str | None) -> str:
    """The caller's key: the bearer token (the gateway forwards one per project key), else anonymous."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or "anonymous"
    return "anonymous"


def caller(
    service: InferenceService = Depends(service_of),
    authorization: str | None = Header(default=None),
    x_tuneforge_key: str | None = Header(default=None),
) -> str:
    """Check the service key (when set); return the caller key the concurrency limit counts."""
    api_key = service.settings.api_key
    if api_key is not None and authorization != f"Bearer {api_key}":
        raise Unauthorized("Incorrect API key provided.")
    if x_tuneforge_key:
        return x_tuneforge_key  # forwarded by the gateway: one per project API key
    return "service" if api_key is not None else key_of(authorization)


async def parsed(request: Request, model: type[M]) -> M:
    """The body, strictly parsed (no NaN/Infinity, bounded nesting) and validated; a 400 naming the field."""
    data = parse_json_body(await request.body(), max_depth=MAX_BODY_DEPTH)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_fields(exc.errors(include_input=False, include_url=False)) from None


@router.get("/health")
async def health(service: InferenceService = Depends(service_of)) -> Health:
    return Health(base_model=service.base_name, active_sequences=service.engine.active_sequences)


@router.get("/v1/models", dependencies=[Depends(caller)])
async def list_models(service: InferenceService = Depends(service_of)) -> ModelList:
    return ModelList(data=service.models())


@router.post("/v1/load_lora_adapter", dependencies=[Depends(caller)], openapi_extra=openapi_body(LoadLoraRequest))
async def load_lora(request: Request, service: InferenceService = Depends(service_of)) -> PlainTextResponse:
    body = await parsed(request, LoadLoraRequest)
    verb = "added" if service.load_adapter(body.lora_name, body.lora_path) else "already loaded"
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' {verb} successfully.")


@router.post("/v1/unload_lora_adapter", dependencies=[Depends(caller)], openapi_extra=openapi_body(UnloadLoraRequest))
async def unload_lora(request: Request, service: InferenceService = Depends(service_of)) -> PlainTextResponse:
    body = await parsed(request, UnloadLoraRequest)
    service.unload_adapter(body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


@router.post(
    "/v1/chat/completions",
    openapi_extra=openapi_body(ChatCompletionRequest),
    responses=openapi_answers(ChatCompletion, ChatCompletionChunk),
    response_model=None,
)
async def chat_completions(
    request: Request, key: str = Depends(caller), service: InferenceService = Depends(service_of)
) -> Response:
    body = await parsed(request, ChatCompletionRequest)
    service.refuse_unsupported(body)
    target = service.resolve(body.model)
    prompt = service.chat_prompt(target, body.messages)
    params = service.sampling(
        target,
        len(prompt),
        max_tokens=body.output_cap(),
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        seed=body.seed,
        stop=body.stop,
    )
    return await _answer(request, service, key, target, [prompt], params, body, chat=True)


@router.post(
    "/v1/completions",
    openapi_extra=openapi_body(CompletionRequest),
    responses=openapi_answers(Completion, Completion),
    response_model=None,
)
async def completions(
    request: Request, key: str = Depends(caller), service: InferenceService = Depends(service_of)
) -> Response:
    body = await parsed(request, CompletionRequest)
    service.refuse_unsupported(body)
    target = service.resolve(body.model)
    prompts = service.text_prompts(body.prompt)
    params = service.sampling(
        target,
        max(len(p) for p in prompts),
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        n=body.n,
        seed=body.seed,
        stop=body.stop,
    )
    return await _answer(request, service, key, target, prompts, params, body, chat=False)


async def _answer(
    request: Request,
    service: InferenceService,
    key: str,
    target: Target,
    prompts: list[list[int]],
    params: SamplingParams,
    body: ChatCompletionRequest | CompletionRequest,
    *,
    chat: bool,
) -> Response:
    """Generate under one of key's slots: streamed as events, or whole once done (cut short if the client leaves)."""
    head = answer_head(target.model, chat)
    choices = len(prompts) * params.n
    prompt_tokens = sum(len(p) for p in prompts)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    service.limiter.acquire(key)
    held: Held | None = None  # a full model's engine, kept resident while this answer runs

    def release() -> None:
        service.limiter.release(key)
        if held is not None:
            held.release()

    handed_over = False  # once a streaming response owns the slot, it releases it however the stream ends
    try:
        # before the first byte: a full model that cannot be loaded answers 503, not a broken stream
        held = await service.hold(target)
        deltas = service.generate(target, prompts, params, held)
        if body.stream:
            events = chat_events if chat else completion_events
            response = GuardedStream(
                events(head, deltas, choices, prompt_tokens, include_usage),
                on_close=release,
                headers={"Cache-Control": "no-cache"},
            )
            handed_over = True
            return response
        try:
            answer = await unless_disconnected(request.receive, collect(head, deltas, choices, prompt_tokens, chat))
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        except EngineError as exc:
            raise engine_error(exc) from None
        return JSONResponse(answer.model_dump(mode="json"))
    finally:
        if not handed_over:
            release()
