"""The inference process: an OpenAI-compatible ASGI app over one base model and its LoRA adapters."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.types import Receive

from app.core.errors import InvalidRequest
from app.core.json_body import parse_json_body
from engine.inference.loading import LoadedBase, load_base
from engine.inference.types import ChoiceDelta, EngineError, EngineShutdown, SamplingParams
from serve.errors import APIError, install_error_handlers, invalid_body
from serve.limits import key_of
from serve.schemas import ChatCompletionRequest, CompletionRequest, LoadLoraRequest, UnloadLoraRequest
from serve.service import InferenceService, Target
from serve.settings import ServeSettings
from serve.streams import ClientGone, ReleasingStreamingResponse, merged, sse, unless_disconnected

M = TypeVar("M", bound=BaseModel)
MAX_BODY_DEPTH = 32  # OpenAI bodies nest a handful of levels (messages -> content parts -> fields)
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, the access log shows what happened


async def _parse(request: Request, model: type[M]) -> M:
    """The body, strictly parsed (no NaN/Infinity, bounded nesting) and validated; 400 naming the field otherwise."""
    try:
        data = parse_json_body(await request.body(), max_depth=MAX_BODY_DEPTH)
    except InvalidRequest as exc:
        raise APIError(400, exc.message, param=exc.param, code=exc.code) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc.errors(include_input=False)) from None


def engine_api_error(exc: EngineError) -> APIError:
    """The envelope for an engine failure (engine messages name models, never paths)."""
    if isinstance(exc, EngineShutdown):
        return APIError(
            503,
            "The inference server is shutting down; retry shortly.",
            type="server_error",
            code="service_unavailable",
            headers={"Retry-After": "1"},
        )
    return APIError(500, str(exc), type="server_error", code="engine_error")


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def create_app(
    base_model: str,
    data_dir: str | Path,
    adapters_root: str | Path | None = None,
    settings: ServeSettings | None = None,
    *,
    loaded: LoadedBase | None = None,
) -> FastAPI:
    """Load base_model (a name like tiny-chat or a local path) and return the app; adapters load on first use.

    adapters_root, when given, serves <adapters_root>/<model id> for any model id not registered otherwise.
    `/v1/load_lora_adapter` loads only directories under data_dir or adapters_root.
    """
    settings = settings or ServeSettings()
    base = loaded or load_base(base_model, data_dir)
    service = InferenceService(
        base, settings, Path(adapters_root) if adapters_root is not None else None, Path(data_dir)
    )
    app = FastAPI(title="TuneForge inference", docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.before_shutdown = service.shutdown  # the runner calls it when SIGTERM arrives
    install_error_handlers(app)

    def authorize(authorization: str | None, client_key: str | None = None) -> str:
        """Check the service key (when set); return the caller key the concurrency limit counts."""
        if settings.api_key is not None and authorization != f"Bearer {settings.api_key}":
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if client_key:
            return client_key  # forwarded by the gateway: one per project API key
        return "service" if settings.api_key is not None else key_of(authorization)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "base_model": service.base_name,
            "active_sequences": service.engine.active_sequences,
        }

    @app.get("/v1/models")
    async def list_models(authorization: str | None = Header(default=None)) -> dict[str, Any]:
        authorize(authorization)
        return {"object": "list", "data": service.models()}

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request, authorization: str | None = Header(default=None)) -> Response:
        authorize(authorization)
        body = await _parse(request, LoadLoraRequest)
        added = service.load_adapter(body.lora_name, body.lora_path)
        verb = "added" if added else "already loaded"
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' {verb} successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request, authorization: str | None = Header(default=None)) -> Response:
        authorize(authorization)
        body = await _parse(request, UnloadLoraRequest)
        service.unload_adapter(body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    @app.post("/v1/chat/completions")
    async def chat_completions(
        request: Request,
        authorization: str | None = Header(default=None),
        x_tuneforge_key: str | None = Header(default=None),
    ) -> Response:
        key = authorize(authorization, x_tuneforge_key)
        body = await _parse(request, ChatCompletionRequest)
        if body.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        target = service.resolve(body.model)
        messages = [m.model_dump(exclude_none=False) for m in body.messages]
        prompt = service.chat_prompt(target, messages)
        params = service.sampling(
            target,
            len(prompt),
            max_tokens=body.max_completion_tokens or body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            n=body.n,
            seed=body.seed,
            stop=body.stop,
        )
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _run(request.receive, key, target, [prompt], params, bool(body.stream), include_usage, chat=True)

    @app.post("/v1/completions")
    async def completions(
        request: Request,
        authorization: str | None = Header(default=None),
        x_tuneforge_key: str | None = Header(default=None),
    ) -> Response:
        key = authorize(authorization, x_tuneforge_key)
        body = await _parse(request, CompletionRequest)
        if body.echo or body.logprobs:
            raise APIError(400, "echo and logprobs are not supported by this server", param="echo")
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
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return await _run(request.receive, key, target, prompts, params, bool(body.stream), include_usage, chat=False)

    async def _run(
        receive: Receive,
        key: str,
        target: Target,
        prompts: list[list[int]],
        params: SamplingParams,
        stream: bool,
        include_usage: bool,
        chat: bool,
    ) -> Response:
        head = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": target.model,
            "system_fingerprint": None,
        }
        choices = len(prompts) * params.n
        prompt_tokens = sum(len(p) for p in prompts)
        service.limiter.acquire(key)
        handed_over = False  # once a streaming response owns the slot, it releases it however the stream ends
        try:
            deltas = merged(service.generator, prompts, params, target.adapter)
            if stream:
                events = _chat_events if chat else _completion_events
                response = ReleasingStreamingResponse(
                    events(head, deltas, choices, prompt_tokens, include_usage),
                    on_close=lambda: service.limiter.release(key),
                )
                handed_over = True
                return response

            async def collect() -> dict[str, Any]:
                async with contextlib.aclosing(deltas) as it:
                    return await _collect(head, it, choices, prompt_tokens, chat)

            try:
                body = await unless_disconnected(receive, collect())
            except ClientGone:
                return Response(status_code=CLIENT_CLOSED)
            except EngineError as exc:
                raise engine_api_error(exc) from None
            return JSONResponse(body)
        finally:
            if not handed_over:
                service.limiter.release(key)

    return app


async def _collect(
    head: dict[str, Any], deltas: AsyncGenerator[ChoiceDelta, None], choices: int, prompt_tokens: int, chat: bool
) -> dict[str, Any]:
    texts = [""] * choices
    reasons: list[str | None] = [None] * choices
    completion_tokens = 0
    async for delta in deltas:
        texts[delta.index] += delta.text
        completion_tokens += len(delta.token_ids)
        if delta.finish_reason is not None:
            reasons[delta.index] = delta.finish_reason
    out: list[dict[str, Any]]
    if chat:
        out = [
            {
                "index": i,
                "message": {"role": "assistant", "content": t, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": r,
            }
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
    else:
        out = [
            {"index": i, "text": t, "logprobs": None, "finish_reason": r}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
    return {**head, "choices": out, "usage": _usage(prompt_tokens, completion_tokens)}


async def _chat_events(
    head: dict[str, Any],
    deltas: AsyncGenerator[ChoiceDelta, None],
    choices: int,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    base = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**base, "choices": [choice], **extra})

    completion_tokens = 0
    try:
        for i in range(choices):
            yield chunk(i, {"role": "assistant", "content": ""})
        async with contextlib.aclosing(deltas) as it:
            async for d in it:
                completion_tokens += len(d.token_ids)
                if d.text:
                    yield chunk(d.index, {"content": d.text})
                if d.finish_reason is not None:
                    yield chunk(d.index, {}, d.finish_reason)
    except EngineError as exc:
        yield sse(engine_api_error(exc).body())
        return
    if include_usage:
        yield sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
    yield sse("[DONE]")


async def _completion_events(
    head: dict[str, Any],
    deltas: AsyncGenerator[ChoiceDelta, None],
    choices: int,
    prompt_tokens: int,
    include_usage: bool,
) -> AsyncIterator[str]:
    extra = {"usage": None} if include_usage else {}
    completion_tokens = 0
    try:
        async with contextlib.aclosing(deltas) as it:
            async for d in it:
                completion_tokens += len(d.token_ids)
                if d.text or d.finish_reason is not None:
                    choice = {
                        "index": d.index,
                        "text": d.text,
                        "logprobs": None,
                        "finish_reason": d.finish_reason,
                    }
                    yield sse({**head, "choices": [choice], **extra})
    except EngineError as exc:
        yield sse(engine_api_error(exc).body())
        return
    if include_usage:
        yield sse({**head, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
    yield sse("[DONE]")
