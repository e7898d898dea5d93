"""Plain data types shared by the generation engine and its callers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]
BASE_ADAPTER = "__base__"


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples: OpenAI semantics (temperature 0 means greedy)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be within [0, 2]")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be within (0, 1]")
        if self.n < 1:
            raise ValueError("n must be >= 1")


@dataclass
class ChoiceDelta:
    """One increment of one choice: new text, the token ids behind it, and the finish reason once done."""

    index: int
    text: str
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass
class CompletionResult:
    """A finished (non-streamed) request: one text per choice plus token counts."""

    texts: list[str]
    finish_reasons: list[FinishReason]
    token_ids: list[list[int]]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)


class EngineError(RuntimeError):
    """A request failed inside the engine (for example its adapter could not be loaded)."""


class EngineShutdown(EngineError):
    """The engine is closing: requests still queued or running end with this, new ones are refused."""


class AdapterNotFoundError(KeyError):
    """No adapter is registered under this name."""


class AdapterMismatchError(ValueError):
    """The adapter's manifest does not match the loaded base model or tokenizer."""
