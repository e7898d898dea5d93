"""Rules for chat messages, shared by the chat and preference formats."""

from __future__ import annotations

import json
from typing import Any

from engine.formats import codes

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "tool_calls", "tool_call_id", "weight", "refusal"}
)
# Keys a role cannot do without besides `content` (per the Chat Completions message schemas).
_REQUIRED_KEYS = {"tool": "tool_call_id", "function": "name"}


class Findings:
    """What the rules found on one line: the first problem per code, and the example's size."""

    __slots__ = ("issues", "messages", "chars", "assistant", "weight0", "tools")

    def __init__(self) -> None:
        self.issues: dict[str, str] = {}
        self.messages = 0
        self.chars = 0
        self.assistant = 0
        self.weight0 = 0
        self.tools = False

    def add(self, code: str, message: str) -> None:
        """Record a problem; only the first one per code is kept (as the cookbook counts them)."""
        self.issues.setdefault(code, message)


def show(value: Any, limit: int = 40) -> str:
    """A short printable form of a JSON value for error messages."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict | list):
        text = f"(a JSON {_json_type(value)})"
    else:
        text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float):
        return "number"
    return "array" if isinstance(value, list) else "object"


def content_chars(content: Any, allow_images: bool) -> tuple[int, str | None]:
    """Characters of a content value, or why it is not a valid non-empty string or list of parts."""
    if isinstance(content, str):
        return (len(content), None) if content else (0, "empty content")
    if not isinstance(content, list):
        return 0, f"content of type {_json_type(content)}, expected a string"
    if not content:
        return 0, "an empty list of content parts"
    total = 0
    for j, part in enumerate(content, 1):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str) and part["text"]:
            total += len(part["text"])
        elif kind == "image_url" and allow_images:
            image = part.get("image_url")
            if not (isinstance(image, dict) and isinstance(image.get("url"), str) and image["url"]):
                return 0, f"content part {j} without an image_url.url"
        else:
            return 0, f"an invalid content part {j} (expected {{type: 'text', text}}" + (
                " or {type: 'image_url', image_url: {url}})" if allow_images else ")"
            )
    return total, None


def tool_call_chars(message: dict[str, Any]) -> int:
    """Characters of an assistant message's tool or function calls (names and arguments), 0 if none."""
    total = 0
    calls = message.get("tool_calls")
    functions = [c.get("function") for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    functions.append(message.get("function_call"))
    for fn in functions:
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                if isinstance(fn.get(key), str):
                    total += len(fn[key])
    return total


def has_calls(message: dict[str, Any]) -> bool:
    """Whether an assistant message carries tool calls or a function call (so content may be empty)."""
    calls = message.get("tool_calls")
    return (isinstance(calls, list) and bool(calls)) or isinstance(message.get("function_call"), dict)


def assistant_content(message: dict[str, Any]) -> tuple[int, str | None, str]:
    """(characters, reason or None, error code) for the content and calls of an assistant message."""
    content = message.get("content")
    if has_calls(message):
        if content is None or content == "":
            return tool_call_chars(message), None, ""
        chars, reason = content_chars(content, allow_images=False)
        return chars + tool_call_chars(message), reason, codes.MISSING_CONTENT
    if "content" not in message:
        return 0, "no 'content' and no 'tool_calls' or 'function_call'", codes.MESSAGE_MISSING_KEY
    if content is None:
        return 0, "null content and no 'tool_calls' or 'function_call'", codes.MISSING_CONTENT
    chars, reason = content_chars(content, allow_images=False)
    return chars, reason, codes.MISSING_CONTENT


def check_messages(messages: list[Any], found: Findings, label: str = "message") -> None:
    """Check each message of a list and add its size to `found` (numbering messages from 1)."""
    found.messages += len(messages)
    chars = assistant = weight0 = 0
    for i, message in enumerate(messages, 1):
        # Fast path for the common shapes (plain text, no tool calls); anything else takes the full rules.
        if type(message) is dict and message.keys() <= _FAST_KEYS:
            content = message.get("content")
            if type(content) is str and content:
                role = message.get("role")
                if type(role) is str and role in _PLAIN_ROLES and "weight" not in message:
                    chars += len(content)
                    continue
                weight = message.get("weight", 1)
                if role == "assistant" and type(weight) is int and (weight == 1 or weight == 0):
                    chars += len(content)
                    assistant += 1
                    weight0 += weight == 0
                    continue
        _check_message(message, f"{label} {i}", found)
    found.chars += chars
    found.assistant += assistant
    found.weight0 += weight0


_FAST_KEYS = frozenset({"role", "content", "name", "weight"})
_PLAIN_ROLES = frozenset({"system", "developer", "user"})


def _check_message(message: Any, where: str, found: Findings) -> None:
    """The full rules for one message."""
    if not isinstance(message, dict):
        found.add(codes.MESSAGE_MISSING_KEY, f"{where} is a JSON {_json_type(message)}, not an object")
        return
    if not message.keys() <= MESSAGE_KEYS:
        extra = sorted(k for k in message if k not in MESSAGE_KEYS)
        names = ", ".join(show(k) for k in extra[:3]) + (", ..." if len(extra) > 3 else "")
        found.add(codes.MESSAGE_UNRECOGNIZED_KEY, f"unrecognized key(s) {names} in {where}")
    if "role" not in message:
        found.add(codes.MESSAGE_MISSING_KEY, f"{where} has no 'role'")
        return
    role = message["role"]
    if not isinstance(role, str) or role not in ROLES:
        found.add(codes.UNRECOGNIZED_ROLE, f"unrecognized role {show(role)} in {where}")
        return
    _check_weight(message, role, where, found)
    if role == "assistant":
        found.assistant += 1
        chars, reason, code = assistant_content(message)
    elif "content" not in message:
        found.add(codes.MESSAGE_MISSING_KEY, f"{where} ({role}) has no 'content'")
        return
    else:
        chars, reason = content_chars(message["content"], allow_images=role == "user")
        code = codes.MISSING_CONTENT
    if reason is not None:
        found.add(code, f"{where} ({role}) has {reason}")
    found.chars += chars
    required = _REQUIRED_KEYS.get(role)
    if required is not None and not isinstance(message.get(required), str):
        found.add(codes.MESSAGE_MISSING_KEY, f"{where} ({role}) has no string '{required}'")


def _check_weight(message: dict[str, Any], role: str, where: str, found: Findings) -> None:
    if "weight" not in message:
        return
    weight = message["weight"]
    if role != "assistant":
        reason = f"'weight' is only allowed on assistant messages ({where} is {role})"
        found.add(codes.INVALID_WEIGHT, reason)
    elif type(weight) is not int or weight not in (0, 1):
        found.add(codes.INVALID_WEIGHT, f"invalid weight {show(weight)} in {where} (must be 0 or 1)")
    elif weight == 0:
        found.weight0 += 1
