"""Cut client-supplied text before it goes into an error message, so no error ever echoes a large input."""

from __future__ import annotations

VALUE_CHARS = 48  # a quoted value: enough to recognise it, never a payload
ID_CHARS = 256  # ids and paths: longer than any valid one, so real ids come back whole


def clipped(text: str, limit: int = VALUE_CHARS) -> str:
    """`text`, or its first `limit` characters and an ellipsis."""
    return text if len(text) <= limit else text[:limit] + "..."


def quoted(value: object, limit: int = VALUE_CHARS) -> str:
    """repr of a client value, cut to about `limit` characters (repr of a huge list is never built whole)."""
    if isinstance(value, str | bytes | int | float | bool) or value is None:
        text = repr(value[: limit + 1] if isinstance(value, str | bytes) else value)
    else:
        text = f"<{type(value).__name__}>"  # a container could hold megabytes; its type is enough to fix it
    return clipped(text, limit)
