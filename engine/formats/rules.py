"""Format detection and the line rules of each format."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.formats import codes
from engine.formats.messages import Findings, assistant_content, check_messages, show
from engine.formats.report import DatasetFormat

_PREFERENCE_OUTPUTS = ("preferred_output", "non_preferred_output")
_OUTPUT_KEYS = frozenset({"role", "content", "name", "tool_calls", "function_call", "refusal"})


def detect_format(obj: dict[str, Any]) -> DatasetFormat:
    """The format a line claims by its top-level keys (its content is not checked)."""
    if not isinstance(obj, dict):
        return DatasetFormat.UNKNOWN
    if "preferred_output" in obj or "non_preferred_output" in obj:
        return DatasetFormat.PREFERENCE
    if "messages" in obj:
        return DatasetFormat.CHAT
    if "input" in obj:
        return DatasetFormat.PREFERENCE
    if "prompt" in obj or "completion" in obj:
        return DatasetFormat.PROMPT_COMPLETION
    return DatasetFormat.UNKNOWN


def check_chat(obj: dict[str, Any]) -> Findings:
    """Rules of a supervised chat line: {messages, tools?, parallel_tool_calls?, functions?}."""
    found = Findings()
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        found.add(codes.MISSING_MESSAGES_LIST, "'messages' must be a non-empty list of messages")
        return found
    check_messages(messages, found)
    if found.assistant == 0:
        found.add(codes.EXAMPLE_MISSING_ASSISTANT_MESSAGE, "example has no assistant message to train on")
    found.tools = _has_tools(obj)
    return found


def check_prompt_completion(obj: dict[str, Any]) -> Findings:
    """Rules of a legacy completions line: {prompt: str, completion: non-empty str}."""
    found = Findings()
    for key in ("prompt", "completion"):
        if key not in obj:
            found.add(codes.MESSAGE_MISSING_KEY, f"missing {key!r}")
            continue
        value = obj[key]
        if not isinstance(value, str):
            found.add(codes.MISSING_CONTENT, f"{key!r} must be a string, got {show(value)}")
        elif not value and key == "completion":
            found.add(codes.MISSING_CONTENT, "'completion' is empty")
        else:
            found.chars += len(value)
    return found


def check_preference(obj: dict[str, Any]) -> Findings:
    """Rules of a DPO line: {input: {messages}, preferred_output: [assistant], non_preferred_output}."""
    found = Findings()
    given = obj.get("input")
    if isinstance(given, dict) and isinstance(given.get("messages"), list) and given["messages"]:
        check_messages(given["messages"], found, label="input message")
        found.tools = _has_tools(given)
    else:
        found.add(codes.MISSING_MESSAGES_LIST, "'input' must be an object with a non-empty 'messages' list")
    for key in _PREFERENCE_OUTPUTS:
        reason = _check_output(obj.get(key, _MISSING), found)
        if reason is not None:
            found.add(codes.INVALID_PREFERENCE_OUTPUT, f"{key!r} {reason}")
    return found


_MISSING = object()


def _check_output(output: Any, found: Findings) -> str | None:
    """Check one preference output (a list with exactly one assistant message) and add its size."""
    if output is _MISSING:
        return "is missing"
    if not isinstance(output, list) or len(output) != 1:
        return "must be a list with exactly one assistant message"
    message = output[0]
    if not isinstance(message, dict) or message.get("role") != "assistant":
        return "must hold an assistant message ({role: 'assistant', content})"
    extra = sorted(k for k in message if k not in _OUTPUT_KEYS)
    if extra:
        return f"has unrecognized key(s) {', '.join(show(k) for k in extra[:3])}"
    chars, reason, _ = assistant_content(message)
    if reason is not None:
        return f"has {reason}"
    found.messages += 1
    found.assistant += 1
    found.chars += chars
    return None


def _has_tools(obj: dict[str, Any]) -> bool:
    tools, functions = obj.get("tools"), obj.get("functions")
    return (isinstance(tools, list) and bool(tools)) or (isinstance(functions, list) and bool(functions))


RULES: dict[DatasetFormat, Callable[[dict[str, Any]], Findings]] = {
    DatasetFormat.CHAT: check_chat,
    DatasetFormat.PROMPT_COMPLETION: check_prompt_completion,
    DatasetFormat.PREFERENCE: check_preference,
}
