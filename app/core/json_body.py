"""Strict JSON request bodies: no NaN or Infinity, no number that overflows to one, bounded nesting.

Python's json module accepts `NaN`/`Infinity`, turns `1e999` into inf and nests until RecursionError; at the edge
each of those is a 400 in OpenAI's envelope, never a value that reaches the database, the engine or a 500.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from app.core.echo import ID_CHARS, clipped
from app.core.errors import InvalidRequest

DEFAULT_MAX_DEPTH = 64
# A JSON string, escapes included (an unterminated one runs to the end, so a match never backtracks);
# what is inside a string never counts as nesting.
_STRING = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


class _NotFinite:
    """Stands in for NaN/Infinity/overflowing numbers while parsing, so the error can name the field."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def parse_json_body(raw: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse a request body as strict JSON; anything else raises InvalidRequest (400) without echoing the body."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8 JSON.", param=None) from None
    if _too_deep(raw, max_depth):
        raise InvalidRequest(f"The request body nests deeper than {max_depth} levels.", param=None)
    found: list[_NotFinite] = []

    def not_finite(token: str) -> _NotFinite:
        marker = _NotFinite(token)
        found.append(marker)
        return marker

    def strict_float(token: str) -> float | _NotFinite:
        value = float(token)
        return value if math.isfinite(value) else not_finite(token)

    try:
        data = json.loads(text, parse_constant=not_finite, parse_float=strict_float)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise InvalidRequest(f"The request body is not valid JSON: {exc.msg} ({where}).", param=None) from None
    except (ValueError, RecursionError):  # an integer longer than Python converts; nesting past our own scan
        raise InvalidRequest("The request body is not valid JSON.", param=None) from None
    if found:
        _refuse_not_finite(data, clipped(found[0].text, 24))
    return data


def nesting_depth(raw: bytes) -> int:
    """Deepest bracket nesting outside strings, in one linear pass at C speed (no recursion, no tree)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _too_deep(raw: bytes, max_depth: int) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= max_depth:  # the common case: too few brackets to matter
        return False
    return nesting_depth(raw) > max_depth


def _refuse_not_finite(data: Any, token: str) -> None:
    """Find the first non-finite number (iteratively: depth is already bounded, but no recursion is cheaper)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _NotFinite):
            param = clipped(".".join(path), ID_CHARS) or None
            where = f"Invalid value for '{param}'" if param else "Invalid request body"
            raise InvalidRequest(
                f"{where}: {token} is not a finite number (JSON has no NaN or Infinity).",
                param=param,
                code="invalid_value",
            )
        if isinstance(value, dict):
            stack.extend((v, (*path, clipped(str(k)))) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((v, (*path, str(i))) for i, v in reversed(list(enumerate(value))))
    raise InvalidRequest("The request body holds a number that is not finite.", param=None)  # pragma: no cover
