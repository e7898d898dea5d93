"""Chat and completion bodies checked at the edge: strict JSON, then the sampling numbers every backend relies on.

The gateway forwards bodies to our inference process or to vLLM, so nothing it relays may be a value that a backend
turns into a 500 (or that httpx refuses to encode: NaN), and a malformed body must be a 400 here, never a 500.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidRequest
from app.core.json_body import parse_json_body

MAX_DEPTH = 32  # OpenAI bodies nest a handful of levels (messages -> content parts -> fields)
INT64 = (-(2**63), 2**63 - 1)
# OpenAI's documented ranges; a bool is not a number here, although Python says True == 1.
_FLOATS: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INTS: dict[str, tuple[int, int | None]] = {
    "n": (1, 128),
    "seed": INT64,
    "max_tokens": (1, None),
    "max_completion_tokens": (1, None),
}


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a strict JSON object (app.core.json_body: no NaN/Infinity, bounded nesting); else InvalidRequest."""
    data = parse_json_body(raw or b"null", max_depth=MAX_DEPTH)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    return data


def validate_body(body: dict[str, Any]) -> str:
    """Check model and the sampling numbers; return the model id."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is a required property", param="model")
    for name, (low, high) in _FLOATS.items():
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high
        ):
            raise InvalidRequest(f"Invalid value for '{name}': expected a number from {low:g} to {high:g}.", param=name)
    for name, (low_i, high_i) in _INTS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON has one number type: 5.0 is a fine n
        in_range = isinstance(value, int) and not isinstance(value, bool) and value >= low_i
        if not in_range or (high_i is not None and value > high_i):
            bounds = f"from {low_i} to {high_i}" if high_i is not None else f"of at least {low_i}"
            raise InvalidRequest(f"Invalid value for '{name}': expected an integer {bounds}.", param=name)
    return model
