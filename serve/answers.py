"""Engine deltas presented as OpenAI answers: one whole answer, or its server-sent events."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from app.core.asgi import sse
from app.wire.inference import Answer, FinishReason
from engine.inference.types import ChoiceDelta, EngineError
from serve.errors import engine_error
from serve.protocol import (
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionUsage,
)

Deltas = AsyncGenerator[ChoiceDelta, None]
DONE = "[DONE]"


def _usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage.of(prompt_tokens, completion_tokens)


async def collect(
    head: Answer, deltas: Deltas, choices: int, prompt_tokens: int, chat: bool
) -> ChatCompletion | Completion:
    """The whole answer once every choice has finished."""
    texts = [""] * choices
    reasons: list[FinishReason | None] = [None] * choices
    completion_tokens = 0
    async with contextlib.aclosing(deltas) as it:
        async for delta in it:
            texts[delta.index] += delta.text
            completion_tokens += len(delta.token_ids)
            if delta.finish_reason is not None:
                reasons[delta.index] = delta.finish_reason
    usage = _usage(prompt_tokens, completion_tokens)
    answered = zip(texts, reasons, strict=True)
    if chat:
        chat_choices = [
            ChatCompletionChoice(index=i, message=ChatCompletionMessage(content=t), finish_reason=r)
            for i, (t, r) in enumerate(answered)
        ]
        return ChatCompletion(**head.model_dump(), choices=chat_choices, usage=usage)
    text_choices = [CompletionChoice(index=i, text=t, finish_reason=r) for i, (t, r) in enumerate(answered)]
    return Completion(**head.model_dump(), choices=text_choices, usage=usage)


async def chat_events(
    head: Answer, deltas: Deltas, choices: int, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """A chat answer as chunks: the role first, then content, then each choice's finish; usage last if asked."""
    fields = head.model_dump()
    exclude = None if include_usage else {"usage"}  # with include_usage every chunk carries usage, null until last

    def chunk(index: int, delta: ChatDelta, finish: FinishReason | None = None) -> str:
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish)
        return sse(ChatCompletionChunk(**fields, choices=[choice]), exclude)

    completion_tokens = 0
    try:
        for i in range(choices):
            yield chunk(i, ChatDelta(role="assistant", content=""))
        async with contextlib.aclosing(deltas) as it:
            async for d in it:
                completion_tokens += len(d.token_ids)
                if d.text:
                    yield chunk(d.index, ChatDelta(content=d.text))
                if d.finish_reason is not None:
                    yield chunk(d.index, ChatDelta(), d.finish_reason)
    except EngineError as exc:
        yield sse(engine_error(exc).body())
        return
    if include_usage:
        yield sse(ChatCompletionChunk(**fields, choices=[], usage=_usage(prompt_tokens, completion_tokens)))
    yield sse(DONE)


async def completion_events(
    head: Answer, deltas: Deltas, choices: int, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """A completion as chunks of the same shape as the whole answer; usage last if asked."""
    fields = head.model_dump()
    exclude = None if include_usage else {"usage"}
    completion_tokens = 0
    try:
        async with contextlib.aclosing(deltas) as it:
            async for d in it:
                completion_tokens += len(d.token_ids)
                if d.text or d.finish_reason is not None:
                    choice = CompletionChoice(index=d.index, text=d.text, finish_reason=d.finish_reason)
                    yield sse(Completion(**fields, choices=[choice]), exclude)
    except EngineError as exc:
        yield sse(engine_error(exc).body())
        return
    if include_usage:
        yield sse(Completion(**fields, choices=[], usage=_usage(prompt_tokens, completion_tokens)))
    yield sse(DONE)
