"""Chat and completion bodies checked at the edge: strict JSON, then the sampling fields every backend relies on.

The gateway forwards bodies as the client sent them, to our inference process or to vLLM, so nothing it relays may
be a value that a backend turns into a 500 (or that httpx refuses to encode: NaN), and a malformed body must be a
400 here, never a 500. The bounds are the wire models' (app.wire.inference), the ones serving checks too.
"""

from __future__ import annotations

from pydantic import ValidationError

from app.core.errors import InvalidRequest, invalid_fields
from app.core.json_body import parse_json_body
from app.wire.inference import SamplingFields, TokenCount

MAX_DEPTH = 32  # OpenAI bodies nest a handful of levels (messages -> content parts -> fields)
JsonObject = dict[str, object]


class ForwardedBody(SamplingFields):
    """What the gateway checks: the fields both endpoints share and both output caps (the rest is the backend's)."""

    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None


def parse_json_object(raw: bytes) -> JsonObject:
    """The body as a strict JSON object (app.core.json_body: no NaN/Infinity, bounded nesting); else InvalidRequest."""
    data = parse_json_body(raw or b"null", max_depth=MAX_DEPTH)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    return data


def validate_body(body: JsonObject) -> str:
    """Check model and the sampling fields; return the model id."""
    try:
        return ForwardedBody.model_validate(body).model
    except ValidationError as exc:
        raise invalid_fields(exc.errors(include_input=False, include_url=False)) from None
