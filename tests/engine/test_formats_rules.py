"""Line rules of engine.formats: one malformed dataset per error class, with its code and line number."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from engine.formats import DatasetChecker, DatasetFormat, DatasetReport, detect_format

SYSTEM = {"role": "system", "content": "Be brief."}
HI = {"role": "user", "content": "hi"}
X = {"role": "assistant", "content": "x"}


def chat(i: int = 0, *messages: Any, **extra: Any) -> dict[str, Any]:
    """A valid chat example unless `messages` replaces its messages."""
    default = [SYSTEM, {"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": f"A{i}"}]
    body = list(messages) or default
    return {"messages": body, **extra}


def preference(i: int = 0, **override: Any) -> dict[str, Any]:
    example: dict[str, Any] = {
        "input": {"messages": [{"role": "user", "content": f"Say hi {i}"}]},
        "preferred_output": [{"role": "assistant", "content": f"Hi {i}!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    example.update(override)
    return example


def jsonl(lines: list[Any]) -> bytes:
    """JSONL from objects (dumped) and raw bytes (kept as they are)."""
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)


def check(data: bytes, **limits: Any) -> DatasetReport:
    checker = DatasetChecker(**limits)
    checker.feed(data)
    return checker.finish()


def with_bad_line_3(bad: Any, good: Any = chat) -> DatasetReport:
    """Two good lines, the bad one on line 3, then ten more good lines (so only line 3 can be blamed)."""
    return check(jsonl([good(1), good(2), bad, *(good(i) for i in range(3, 13))]))


def assert_only_line_3(report: DatasetReport, code: str) -> None:
    assert (3, code) in {(e.line, e.code) for e in report.errors}
    assert {e.line for e in report.errors} == {3}
    assert report.n_examples == 12
    assert not report.can_train
    assert report.blocking_error is not None
    assert report.blocking_error.code == "invalid_training_file"
    assert report.blocking_error.message.startswith("The job failed due to an invalid training file. Line 3:")


BAD_CHAT_LINES = [
    pytest.param(b'{"messages": [{"role": "user"', "invalid_json", id="truncated-json"),
    pytest.param(b"{'messages': []}", "invalid_json", id="single-quotes"),
    pytest.param(b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', "invalid_utf8", id="latin1-byte"),
    pytest.param(b"[1, 2]", "not_an_object", id="array"),
    pytest.param(b'"just a string"', "not_an_object", id="string"),
    pytest.param({"messages": []}, "missing_messages_list", id="empty-messages"),
    pytest.param({"messages": "hello"}, "missing_messages_list", id="messages-not-list"),
    pytest.param(chat(0, {"content": "hi"}, X), "message_missing_key", id="no-role"),
    pytest.param(chat(0, {"role": "user"}, X), "message_missing_key", id="user-no-content"),
    pytest.param(chat(0, "hello", X), "message_missing_key", id="message-not-object"),
    pytest.param(
        chat(
            0, {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}, {"role": "tool", "content": "42"}, X
        ),
        "message_missing_key",
        id="tool-without-tool_call_id",
    ),
    pytest.param(
        chat(0, {"role": "user", "content": "hi", "mood": "happy"}, X), "message_unrecognized_key", id="unknown-key"
    ),
    pytest.param(chat(0, {"role": "robot", "content": "hi"}, X), "unrecognized_role", id="robot"),
    pytest.param(chat(0, {"role": ["user"], "content": "hi"}, X), "unrecognized_role", id="role-not-string"),
    pytest.param(chat(0, {"role": "user", "content": ""}, X), "missing_content", id="empty-content"),
    pytest.param(chat(0, {"role": "user", "content": 5}, X), "missing_content", id="number-content"),
    pytest.param(
        chat(0, HI, {"role": "assistant", "content": None}), "missing_content", id="assistant-null-without-tool-calls"
    ),
    pytest.param(
        chat(0, {"role": "user", "content": [{"type": "audio", "data": "x"}]}, {"role": "assistant", "content": "x"}),
        "missing_content",
        id="bad-content-part",
    ),
    pytest.param(
        chat(
            0,
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
        ),
        "missing_content",
        id="image-in-assistant",
    ),
    pytest.param(
        chat(0, SYSTEM, {"role": "user", "content": "hi"}), "example_missing_assistant_message", id="no-assistant"
    ),
    pytest.param(chat(0, HI, {"role": "assistant", "content": "x", "weight": 2}), "invalid_weight", id="weight-2"),
    pytest.param(
        chat(0, HI, {"role": "assistant", "content": "x", "weight": True}), "invalid_weight", id="weight-true"
    ),
    pytest.param(chat(0, {"role": "user", "content": "hi", "weight": 1}, X), "invalid_weight", id="weight-on-user"),
    pytest.param({"prompt": "2+2", "completion": "4"}, "mixed_formats", id="completion-in-chat-file"),
    pytest.param({"text": "hello"}, "unknown_format", id="no-format-keys"),
]


@pytest.mark.parametrize(("bad", "code"), BAD_CHAT_LINES)
def test_malformed_chat_line_is_reported_with_code_and_line(bad: Any, code: str) -> None:
    assert_only_line_3(with_bad_line_3(bad), code)


BAD_PREFERENCE_LINES = [
    pytest.param(preference(preferred_output=[]), "invalid_preference_output", id="no-preferred"),
    pytest.param(
        preference(non_preferred_output=[{"role": "user", "content": "x"}]),
        "invalid_preference_output",
        id="non-preferred-not-assistant",
    ),
    pytest.param(
        preference(preferred_output=[{"role": "assistant", "content": "a"}] * 2),
        "invalid_preference_output",
        id="two-outputs",
    ),
    pytest.param(
        preference(preferred_output=[{"role": "assistant", "content": ""}]),
        "invalid_preference_output",
        id="empty-output",
    ),
    pytest.param(
        {k: v for k, v in preference().items() if k != "non_preferred_output"},
        "invalid_preference_output",
        id="missing-non-preferred",
    ),
    pytest.param(preference(input={"messages": []}), "missing_messages_list", id="empty-input"),
    pytest.param(preference(input="hi"), "missing_messages_list", id="input-not-object"),
    pytest.param(
        preference(input={"messages": [{"role": "robot", "content": "x"}]}), "unrecognized_role", id="input-bad-role"
    ),
    pytest.param(chat(), "mixed_formats", id="chat-in-preference-file"),
]


@pytest.mark.parametrize(("bad", "code"), BAD_PREFERENCE_LINES)
def test_malformed_preference_line_is_reported_with_code_and_line(bad: Any, code: str) -> None:
    report = with_bad_line_3(bad, good=preference)
    assert report.format is DatasetFormat.PREFERENCE
    assert_only_line_3(report, code)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        pytest.param({"prompt": "2+2"}, "message_missing_key", id="no-completion"),
        pytest.param({"prompt": "2+2", "completion": ""}, "missing_content", id="empty-completion"),
        pytest.param({"prompt": 4, "completion": "4"}, "missing_content", id="number-prompt"),
    ],
)
def test_malformed_prompt_completion_line(bad: Any, code: str) -> None:
    report = with_bad_line_3(bad, good=lambda i: {"prompt": f"{i}+{i}", "completion": str(2 * i)})
    assert report.format is DatasetFormat.PROMPT_COMPLETION
    assert_only_line_3(report, code)


def test_line_too_long_is_reported_and_skipped() -> None:
    long_line = json.dumps(chat(0, {"role": "user", "content": "x" * 300}, X))
    report = check(jsonl([chat(1), chat(2), long_line.encode(), *(chat(i) for i in range(3, 13))]), max_line_bytes=200)
    assert_only_line_3(report, "line_too_long")


def test_unrecognized_role_message_is_human_precise() -> None:
    bad = chat(0, SYSTEM, {"role": "robot", "content": "beep"}, X)
    report = with_bad_line_3(bad)
    assert report.blocking_error is not None
    assert report.blocking_error.message == (
        "The job failed due to an invalid training file. Line 3: unrecognized role 'robot' in message 2."
    )


def test_one_error_per_code_per_line_and_counts_per_code() -> None:
    two_robots = chat(
        0, {"role": "robot", "content": "a"}, {"role": "robot", "content": "b"}, {"role": "assistant", "content": "x"}
    )
    report = check(jsonl([two_robots, two_robots, *(chat(i) for i in range(10))]))
    assert report.error_counts == {"unrecognized_role": 2}
    assert [(e.line, e.code) for e in report.errors] == [(1, "unrecognized_role"), (2, "unrecognized_role")]
    assert report.blocking_error is not None
    assert report.blocking_error.message.endswith("in message 1. 1 more error(s) in the file.")


VALID_CHAT_EXAMPLES = [
    pytest.param(
        chat(
            0,
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ),
        id="tool-calls-without-content",
    ),
    pytest.param(
        chat(
            0,
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}},
            {"role": "function", "name": "f", "content": "1"},
            X,
        ),
        id="legacy-function-call",
    ),
    pytest.param(
        chat(
            0,
            {"role": "developer", "content": "Rules."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                ],
            },
            {"role": "assistant", "content": "Cat", "weight": 1, "name": "bot", "refusal": None},
        ),
        id="developer-image-parts-weight-name-refusal",
    ),
    pytest.param(
        chat(
            0,
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b", "weight": 0},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ),
        id="weight-0",
    ),
    pytest.param(
        chat(0, tools=[{"type": "function", "function": {"name": "f"}}], parallel_tool_calls=False),
        id="tools-and-parallel-tool-calls",
    ),
    pytest.param(chat(0, functions=[{"name": "f"}]), id="deprecated-functions"),
]


@pytest.mark.parametrize("example", VALID_CHAT_EXAMPLES)
def test_valid_chat_shapes_are_accepted(example: dict[str, Any]) -> None:
    report = check(jsonl([example] + [chat(i) for i in range(10)]))
    assert report.errors == []
    assert report.can_train
    assert report.format is DatasetFormat.CHAT


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        (chat(), DatasetFormat.CHAT),
        ({"messages": "anything"}, DatasetFormat.CHAT),
        ({"prompt": "a", "completion": "b"}, DatasetFormat.PROMPT_COMPLETION),
        ({"completion": "b"}, DatasetFormat.PROMPT_COMPLETION),
        (preference(), DatasetFormat.PREFERENCE),
        ({"preferred_output": []}, DatasetFormat.PREFERENCE),
        ({"text": "a"}, DatasetFormat.UNKNOWN),
        ({}, DatasetFormat.UNKNOWN),
    ],
)
def test_detect_format(obj: dict[str, Any], fmt: DatasetFormat) -> None:
    assert detect_format(obj) is fmt


def test_fast_path_agrees_with_the_full_message_rules() -> None:
    """check_messages skips the full rules for common shapes; random messages must get the same verdict."""
    from engine.formats.messages import Findings, _check_message, check_messages

    rng = random.Random(3)
    roles = ["system", "developer", "user", "assistant", "tool", "function", "robot", None, 7, ["user"]]
    contents = ["hi", "", None, 5, [{"type": "text", "text": "t"}], [], "x" * 30]
    weights = [0, 1, 2, True, 0.0, None]
    for _ in range(3000):
        message: dict[str, Any] = {}
        if rng.random() < 0.95:
            message["role"] = rng.choice(roles)
        if rng.random() < 0.95:
            message["content"] = rng.choice(contents)
        if rng.random() < 0.3:
            message["weight"] = rng.choice(weights)
        if rng.random() < 0.1:
            message["name"] = "n"
        if rng.random() < 0.05:
            message["extra"] = 1
        fast, full = Findings(), Findings()
        check_messages([message], fast)
        _check_message(message, "message 1", full)
        assert (fast.issues, fast.chars, fast.assistant, fast.weight0) == (
            full.issues,
            full.chars,
            full.assistant,
            full.weight0,
        ), message
