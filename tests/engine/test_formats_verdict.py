"""Whether a file can train: method compatibility and the validation_file variant of the errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.formats import DatasetChecker, DatasetReport, check_method_compat

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
COMPLETION = {"prompt": "2+2=", "completion": "4"}
PREFERENCE = {
    "input": {"messages": [{"role": "user", "content": "Hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello!"}],
    "non_preferred_output": [{"role": "assistant", "content": "What."}],
}


def report_of(lines: list[Any], **options: Any) -> DatasetReport:
    checker = DatasetChecker(**options)
    checker.feed(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return checker.finish()


@pytest.mark.parametrize(
    ("example", "method"),
    [(CHAT, "supervised"), (COMPLETION, "supervised"), (PREFERENCE, "dpo")],
)
def test_matching_method_is_compatible(example: dict[str, Any], method: Any) -> None:
    assert check_method_compat(report_of([example] * 10), method) is None


@pytest.mark.parametrize(
    ("example", "method", "name", "needed"),
    [
        (CHAT, "dpo", "fine-tune-chat", "supervised"),
        (COMPLETION, "dpo", "fine-tune-completion", "supervised"),
        (PREFERENCE, "supervised", "fine-tune-preference", "dpo"),
    ],
)
def test_mismatched_method_is_refused_in_openai_wording(
    example: dict[str, Any], method: Any, name: str, needed: str
) -> None:
    error = check_method_compat(report_of([example] * 10), method)
    assert error is not None
    assert error.code == "invalid_training_file"
    assert error.param == "training_file"
    assert error.message == (
        "The job failed due to an invalid training file. Invalid file format. "
        f"Input file is in the {name} format, but the specified fine-tuning job is not using "
        f"'{needed}' as the training method (provided method={method})."
    )


def test_method_compat_names_the_file_and_serves_the_validation_file() -> None:
    error = check_method_compat(report_of([CHAT] * 10), "dpo", param="validation_file", file_id="file-abc")
    assert error is not None
    assert error.code == "invalid_validation_file"
    assert error.param == "validation_file"
    assert error.message.startswith(
        "The job failed due to an invalid validation file. Invalid file format. Input file file-abc is in"
    )
    from_report = check_method_compat(report_of([CHAT] * 10, param="validation_file"), "dpo")
    assert from_report is not None and from_report.code == "invalid_validation_file"


def test_method_compat_rejects_unknown_methods_and_leaves_unknown_formats_to_the_report() -> None:
    with pytest.raises(ValueError):
        check_method_compat(report_of([CHAT] * 10), "reinforcement")  # type: ignore[arg-type]
    unknown = report_of([{"text": "x"}] * 10)
    assert check_method_compat(unknown, "supervised") is None
    assert unknown.blocking_error is not None and unknown.blocking_error.code == "invalid_training_file"


def test_validation_file_bad_line() -> None:
    report = report_of(
        [CHAT] * 2 + [{"messages": [{"role": "robot", "content": "x"}]}] + [CHAT] * 8, param="validation_file"
    )
    assert report.param == "validation_file"
    assert report.blocking_error is not None
    assert report.blocking_error.code == "invalid_validation_file"
    assert report.blocking_error.param == "validation_file"
    assert report.blocking_error.message.startswith(
        "The job failed due to an invalid validation file. Line 3: unrecognized role 'robot' in message 1."
    )


def test_validation_file_too_few_examples() -> None:
    report = report_of([CHAT] * 3, param="validation_file")
    assert report.blocking_error is not None
    assert report.blocking_error.code == "invalid_n_examples"
    assert report.blocking_error.param == "validation_file"
    expected = "Validation file has 3 example(s), but must have at least 10 examples"
    assert report.blocking_error.message == expected


def test_unknown_param_is_refused() -> None:
    with pytest.raises(ValueError):
        DatasetChecker(param="test_file")  # type: ignore[arg-type]
