"""Chat Completions and Completions on the wire, shared by the API gateway and the inference process.

Field names, types and optionality are OpenAI's; fields the SDK may send that we do not model are accepted and
ignored. Numbers are strict: a bool or a string is not a number, while JSON's 5.0 is the integer 5. NaN and Infinity
never reach these models (app.core.json_body refuses them while parsing, naming the field).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, Strict

from app.wire.base import json_schema

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # OpenAI's seed range; torch refuses larger seeds after admission
MAX_STOP_SEQUENCES = 4


def _integral(value: object) -> object:
    # JSON has one number type: 5.0 is a fine n, 5.5 is not
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _listed(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _omitted(value: object) -> bool:
    return value is None


_INTEGRAL = BeforeValidator(_integral)  # constraints go before it, or pydantic writes `ge` into the schema
Int = Annotated[int, Strict(), _INTEGRAL]
Temperature = Annotated[float, Strict(), Field(ge=0, le=2)]  # strict floats take JSON integers, not bools
TopP = Annotated[float, Strict(), Field(ge=0, le=1)]
Penalty = Annotated[float, Strict(), Field(ge=-2, le=2)]
ChoiceCount = Annotated[int, Strict(), Field(ge=1, le=128), _INTEGRAL]
Seed = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX), _INTEGRAL]
TokenCount = Annotated[int, Strict(), Field(ge=1), _INTEGRAL]
TopLogprobs = Annotated[int, Strict(), Field(ge=0, le=20), _INTEGRAL]
CompletionLogprobs = Annotated[int, Strict(), Field(ge=0, le=5), _INTEGRAL]
BestOf = Annotated[int, Strict(), Field(ge=0, le=20), _INTEGRAL]
# one sequence or a list of them; held as a list, so an error names `stop` rather than a union member
Stop = Annotated[
    list[str],
    Field(max_length=MAX_STOP_SEQUENCES),
    BeforeValidator(_listed, json_schema_input_type=str | list[str]),
]
JsonObject = dict[str, JsonValue]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


def omitted() -> Any:
    """A field we never produce: absent from the answer rather than null (the SDK reads absent as None)."""
    return Field(default=None, exclude_if=_omitted)


class WireRequest(BaseModel):
    """A request body: strict types, unknown fields kept (and ignored)."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class StreamOptions(WireRequest):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class SamplingFields(WireRequest):
    """What both endpoints share; the gateway checks these before it forwards a body to any backend."""

    model: str = Field(min_length=1)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    n: ChoiceCount | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Int] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class ChatMessage(WireRequest):
    """One message of the conversation (system, developer, user, assistant, tool or function)."""

    role: str
    content: str | list[JsonValue] | None = None
    # OpenAI's other message fields, declared so clients and /docs see them; they reach the chat template as sent
    # (unset ones stay unset), as do extra fields such as `weight`.
    name: str | None = None
    refusal: str | None = None
    audio: JsonObject | None = None
    tool_calls: list[JsonObject] | None = None
    tool_call_id: str | None = None
    function_call: JsonObject | None = None


class ChatCompletionRequest(SamplingFields):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: TokenCount | None = None  # deprecated by OpenAI, still sent by older clients
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: JsonObject | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    verbosity: str | None = None
    reasoning_effort: str | None = None
    web_search_options: JsonObject | None = None
    response_format: JsonObject | None = None
    audio: JsonObject | None = None
    moderation: JsonObject | None = None
    prediction: JsonObject | None = None
    tools: list[JsonObject] | None = None
    tool_choice: str | JsonObject | None = None
    parallel_tool_calls: bool | None = None
    function_call: str | JsonObject | None = None
    functions: list[JsonObject] | None = None

    def output_cap(self) -> int | None:
        """The client's cap on completion tokens (the newer field wins)."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    """`POST /v1/completions` (legacy)."""

    prompt: str | list[str] | list[Int] | list[list[Int]]
    max_tokens: TokenCount | None = 16
    echo: bool | None = None
    logprobs: CompletionLogprobs | None = None
    best_of: BestOf | None = None
    suffix: str | None = None


# ---- answers ----------------------------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    audio_tokens: int = 0
    image_tokens: int = 0
    text_tokens: int = 0  # every prompt token here is text (no audio or image inputs)


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0
    audio_tokens: int = 0
    text_tokens: int = 0  # every generated token here is text
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)
    completion_tokens_details: CompletionTokensDetails = Field(default_factory=CompletionTokensDetails)

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
        """Usage of a request that read prompt_tokens and wrote completion_tokens."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            prompt_tokens_details=PromptTokensDetails(text_tokens=prompt_tokens),
            completion_tokens_details=CompletionTokensDetails(text_tokens=completion_tokens),
        )


class Answer(BaseModel):
    """What every answer and chunk starts with."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None = None


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[JsonObject] = Field(default_factory=list)
    tool_calls: list[JsonObject] | None = omitted()
    function_call: JsonObject | None = omitted()
    audio: JsonObject | None = omitted()


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: JsonObject | None = None
    finish_reason: FinishReason | None


class ChatCompletion(Answer):
    """A whole chat answer (`stream` false)."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage | None = None
    service_tier: str | None = omitted()
    metadata: dict[str, str] | None = omitted()
    moderation: JsonObject | None = omitted()


class ChatDelta(BaseModel):
    """What one chunk adds to a choice; fields not sent are absent (the last chunk's delta is `{}`)."""

    role: Literal["assistant"] | None = omitted()
    content: str | None = omitted()
    refusal: str | None = omitted()
    tool_calls: list[JsonObject] | None = omitted()
    function_call: JsonObject | None = omitted()


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: JsonObject | None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(Answer):
    """One server-sent event of a streaming chat answer; `usage` is sent only when stream_options asks for it."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]
    usage: CompletionUsage | None = None
    service_tier: str | None = omitted()
    obfuscation: str | None = omitted()
    moderation: JsonObject | None = omitted()


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: JsonObject | None = None
    finish_reason: FinishReason | None


class Completion(Answer):
    """A legacy completion answer; streamed chunks have the same shape."""

    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None


def answer_head(model: str, chat: bool) -> Answer:
    """A fresh id and timestamp for one answer (all its chunks share them)."""
    prefix = "chatcmpl-" if chat else "cmpl-"
    return Answer(id=prefix + uuid.uuid4().hex[:24], created=int(time.time()), model=model)


def openapi_body(model: type[BaseModel]) -> dict[str, JsonValue]:
    """`openapi_extra` declaring model as the required JSON body of a route that parses the body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": json_schema(model)}}}}


def openapi_answers(whole: type[BaseModel], chunk: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """`responses` for a generation route: the whole answer as JSON, or chunks as server-sent events."""
    stream = {"text/event-stream": {"schema": json_schema(chunk)}}
    return {200: {"model": whole, "description": "The answer, or its chunks when `stream` is true.", "content": stream}}
