"""The streaming checker: chunking, the line cap, duplicates, formats, file-level errors and statistics."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from engine.formats import DatasetChecker, DatasetFormat, DatasetReport, check_path, iter_examples


def chat(i: int, answer: str | None = None) -> dict[str, Any]:
    reply = answer or f"A{i}."
    return {"messages": [{"role": "user", "content": f"Q{i}?"}, {"role": "assistant", "content": reply}]}


def jsonl(lines: list[Any], end: bytes = b"\n") -> bytes:
    return b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + end for x in lines)


def check(data: bytes, **limits: Any) -> DatasetReport:
    checker = DatasetChecker(**limits)
    checker.feed(data)
    return checker.finish()


def feed_in_chunks(data: bytes, sizes: list[int], **limits: Any) -> DatasetReport:
    checker = DatasetChecker(**limits)
    start = 0
    for size in sizes:
        checker.feed(data[start : start + size])
        start += size
    checker.feed(data[start:])
    return checker.finish()


# Every path at once: a BOM, blank lines, CRLF, bad lines, an overlong line, a duplicate, no final newline.
MIXED_BAG = (
    b"\xef\xbb\xbf"
    + jsonl([chat(0), b"", b"   ", chat(1), b"{bad json", b'{"x": "\xff"}', b"[1]"])
    + jsonl([chat(2), chat(2)], end=b"\r\n")
    + json.dumps(chat(3, "z" * 500)).encode()
    + b"\n"
    + jsonl([{"prompt": "a", "completion": "b"}, {"text": 1}, *(chat(i) for i in range(4, 12))])
    + json.dumps(chat(99)).encode()
)


def test_one_byte_chunks_give_the_same_report_as_one_chunk() -> None:
    whole = check(MIXED_BAG, max_line_bytes=300)
    assert whole.error_counts == {
        "invalid_json": 1,
        "invalid_utf8": 1,
        "not_an_object": 1,
        "line_too_long": 1,
        "mixed_formats": 1,
        "unknown_format": 1,
    }
    assert whole.duplicates == 1
    assert whole.n_examples == 13
    bytewise = feed_in_chunks(MIXED_BAG, [1] * len(MIXED_BAG), max_line_bytes=300)
    assert bytewise.model_dump() == whole.model_dump()


def test_random_chunk_boundaries_give_the_same_report() -> None:
    whole = check(MIXED_BAG, max_line_bytes=300).model_dump()
    rng = random.Random(7)
    for _ in range(20):
        sizes = [rng.randint(0, 400) for _ in range(40)]
        assert feed_in_chunks(MIXED_BAG, sizes, max_line_bytes=300).model_dump() == whole


def test_line_numbers_count_blank_lines_and_the_bom_line() -> None:
    report = check(MIXED_BAG, max_line_bytes=300)
    assert [(e.line, e.code) for e in report.errors] == [
        (5, "invalid_json"),
        (6, "invalid_utf8"),
        (7, "not_an_object"),
        (10, "line_too_long"),
        (11, "mixed_formats"),
        (12, "unknown_format"),
    ]
    assert report.n_lines == 21


def test_five_mb_line_under_a_one_mb_cap_stays_bounded() -> None:
    cap = 1 << 20
    huge = json.dumps(chat(0, "x" * (5 << 20))).encode()
    data = jsonl([chat(1), huge, *(chat(i) for i in range(2, 13))])
    checker = DatasetChecker(max_line_bytes=cap)
    peak = 0
    for start in range(0, len(data), 64 << 10):
        checker.feed(data[start : start + (64 << 10)])
        peak = max(peak, checker.buffered_bytes)
    report = checker.finish()
    assert peak <= cap
    assert [(e.line, e.code) for e in report.errors] == [(2, "line_too_long")]
    assert report.n_examples == 12  # the lines after the long one are still read, with the right numbers
    assert report.n_lines == 13
    assert check(data, max_line_bytes=cap).model_dump() == report.model_dump()


def test_overlong_last_line_without_newline() -> None:
    data = jsonl([chat(i) for i in range(10)]) + b'{"messages": "' + b"x" * 5000
    checker = DatasetChecker(max_line_bytes=1000)
    for start in range(0, len(data), 100):
        checker.feed(data[start : start + 100])
        assert checker.buffered_bytes <= 1000
    report = checker.finish()
    assert [(e.line, e.code) for e in report.errors] == [(11, "line_too_long")]


def test_duplicates_are_exact_examples_regardless_of_key_order_and_spacing() -> None:
    same = b'{"messages":[{"content":"Q1?","role":"user"},{"role":"assistant","content":"A1."}]}'
    near = chat(1, "A1!")
    report = check(jsonl([chat(i) for i in range(10)] + [chat(1), chat(1), same, near, chat(2)]))
    assert report.duplicates == 4
    assert report.n_examples == 15
    assert report.can_train


def test_invalid_lines_are_not_counted_as_duplicates() -> None:
    bad = {"messages": [{"role": "robot", "content": "x"}]}
    report = check(jsonl([bad, bad, *(chat(i) for i in range(10))]))
    assert report.duplicates == 0


@pytest.mark.parametrize(
    ("example", "fmt"),
    [
        (lambda i: chat(i), DatasetFormat.CHAT),
        (lambda i: {"prompt": f"{i}+{i}=", "completion": str(2 * i)}, DatasetFormat.PROMPT_COMPLETION),
        (
            lambda i: {
                "input": {"messages": [{"role": "user", "content": f"hi {i}"}], "tools": []},
                "preferred_output": [{"role": "assistant", "content": "Hello!"}],
                "non_preferred_output": [{"role": "assistant", "content": "Go away."}],
            },
            DatasetFormat.PREFERENCE,
        ),
    ],
)
def test_each_format_is_detected_and_trainable(example: Any, fmt: DatasetFormat) -> None:
    report = check(jsonl([example(i) for i in range(10)]))
    assert report.format is fmt
    assert report.can_train and report.blocking_error is None
    assert report.n_examples == 10 and report.n_errors == 0


def test_file_format_is_set_by_the_first_valid_line() -> None:
    bad_chat = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    completions = [{"prompt": f"{i}", "completion": "x"} for i in range(10)]
    report = check(jsonl([bad_chat, *completions, chat(1)]))
    assert report.format is DatasetFormat.PROMPT_COMPLETION
    assert [(e.line, e.code) for e in report.errors] == [(1, "unrecognized_role"), (12, "mixed_formats")]
    mixed = report.errors[1].message
    assert "chat format" in mixed and "prompt_completion format" in mixed and "line 2" in mixed


def test_too_few_examples() -> None:
    report = check(jsonl([chat(i) for i in range(7)]))
    assert [(e.line, e.code) for e in report.errors] == [(0, "too_few_examples")]
    assert not report.can_train
    assert report.blocking_error is not None
    assert report.blocking_error.code == "invalid_n_examples"
    expected = "Training file has 7 example(s), but must have at least 10 examples"
    assert report.blocking_error.message == expected
    assert check(jsonl([chat(i) for i in range(7)]), min_examples=7).can_train


def test_a_bad_line_outranks_too_few_examples() -> None:
    report = check(jsonl([chat(0), b"nope"]))
    assert report.error_counts == {"invalid_json": 1, "too_few_examples": 1}
    assert report.errors[0].code == "too_few_examples"  # file-level errors (line 0) come first
    assert report.blocking_error is not None
    assert report.blocking_error.code == "invalid_training_file"
    assert report.blocking_error.message.startswith("The job failed due to an invalid training file. Line 2:")


@pytest.mark.parametrize("data", [b"", b"\n\n  \r\n"])
def test_empty_file(data: bytes) -> None:
    report = check(data)
    assert [(e.line, e.code) for e in report.errors] == [(0, "empty_file")]
    assert report.format is DatasetFormat.UNKNOWN
    assert report.blocking_error is not None and report.blocking_error.code == "invalid_training_file"


def test_error_list_is_bounded_but_counts_are_complete() -> None:
    report = check(jsonl([b"{"] * 30 + [chat(i) for i in range(10)]), max_errors=5)
    assert len(report.errors) == 5
    assert [e.line for e in report.errors] == [1, 2, 3, 4, 5]
    assert report.n_errors == 30
    assert report.error_counts == {"invalid_json": 30}
    assert report.blocking_error is not None
    assert "Line 1: not valid JSON: " in report.blocking_error.message
    assert report.blocking_error.message.endswith("29 more error(s) in the file.")


def test_statistics() -> None:
    tool_example = {
        "messages": [
            {"role": "system", "content": "abcd"},
            {"role": "user", "content": "12345678"},
            {"role": "assistant", "content": "x" * 12, "weight": 0},
            {"role": "user", "content": "1234"},
            {"role": "assistant", "content": "y" * 8},
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    short = {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "cd"}]}
    report = check(jsonl([tool_example] + [short] * 9))
    s = report.stats
    assert (s.messages_min, s.messages_max, s.messages_mean) == (2, 5, 2.3)
    assert (s.chars_min, s.chars_max, s.chars_total) == (4, 36, 36 + 9 * 4)
    assert s.chars_mean == 7.2
    assert (s.assistant_messages, s.weight0_messages, s.examples_with_tools) == (11, 1, 1)
    assert (s.est_tokens_total, s.est_tokens_max_example) == (18, 9)
    assert report.duplicates == 8


def test_report_is_json_serialisable_and_round_trips() -> None:
    report = check(MIXED_BAG, max_line_bytes=300)
    text = json.dumps(report.model_dump(mode="json"))
    assert DatasetReport.model_validate_json(text) == report
    assert json.loads(text)["format"] == "chat"


def test_feed_after_finish_is_refused() -> None:
    checker = DatasetChecker()
    checker.feed(jsonl([chat(0)]))
    first = checker.finish()
    assert checker.finish() is first
    with pytest.raises(RuntimeError):
        checker.feed(b"{}")


def test_check_path_and_iter_examples(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(MIXED_BAG)
    expected = check(MIXED_BAG, max_line_bytes=300).model_dump()
    assert check_path(path, max_line_bytes=300).model_dump() == expected
    good = tmp_path / "good.jsonl"
    good.write_bytes(b"\xef\xbb\xbf" + jsonl([chat(0), b"", chat(1)]))
    assert list(iter_examples(good)) == [(1, chat(0)), (3, chat(1))]
    with pytest.raises(ValueError, match="line 5"):
        list(iter_examples(path))
