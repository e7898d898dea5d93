"""Whether a checked file can train, in the words and codes of OpenAI's job errors."""

from __future__ import annotations

from typing import Literal

from engine.formats import codes
from engine.formats.report import BlockingError, DatasetFormat, DatasetReport, LineError, Param

MethodType = Literal["supervised", "dpo"]

# The format names OpenAI uses in its error texts ("fine-tune-chat" is observed; the others follow it).
FORMAT_NAMES = {
    DatasetFormat.CHAT: "fine-tune-chat",
    DatasetFormat.PROMPT_COMPLETION: "fine-tune-completion",
    DatasetFormat.PREFERENCE: "fine-tune-preference",
}
METHOD_FOR_FORMAT: dict[DatasetFormat, MethodType] = {
    DatasetFormat.CHAT: "supervised",
    DatasetFormat.PROMPT_COMPLETION: "supervised",
    DatasetFormat.PREFERENCE: "dpo",
}


def invalid_file(param: Param, detail: str) -> BlockingError:
    """An invalid_training_file / invalid_validation_file error with OpenAI's message prefix."""
    kind = "validation" if param == "validation_file" else "training"
    return BlockingError(
        code="invalid_validation_file" if kind == "validation" else "invalid_training_file",
        message=f"The job failed due to an invalid {kind} file. {detail}",
        param=param,
    )


def blocking_error(
    *,
    first_line_error: LineError | None,
    n_errors: int,
    error_counts: dict[str, int],
    n_examples: int,
    min_examples: int,
    param: Param,
) -> BlockingError | None:
    """The one error that stops training: an empty file, then the first bad line, then too few examples."""
    if error_counts.get(codes.EMPTY_FILE):
        return invalid_file(param, "The file is empty: it has no non-blank lines.")
    if first_line_error is not None:
        more = n_errors - 1 - error_counts.get(codes.TOO_FEW_EXAMPLES, 0)
        tail = f" {more} more error(s) in the file." if more > 0 else ""
        return invalid_file(param, f"Line {first_line_error.line}: {first_line_error.message}.{tail}")
    if error_counts.get(codes.TOO_FEW_EXAMPLES):
        label = "Validation" if param == "validation_file" else "Training"
        needed = f"but must have at least {min_examples} examples"
        return BlockingError(
            code="invalid_n_examples",
            message=f"{label} file has {n_examples} example(s), {needed}",
            param=param,
        )
    return None


def check_method_compat(
    report: DatasetReport,
    method_type: MethodType,
    *,
    param: Param | None = None,
    file_id: str | None = None,
) -> BlockingError | None:
    """The error when the file's format does not suit the job's method (supervised or dpo), else None."""
    if method_type not in ("supervised", "dpo"):
        raise ValueError(f"unsupported method type {method_type!r}; expected 'supervised' or 'dpo'")
    needed = METHOD_FOR_FORMAT.get(report.format)
    if needed is None or needed == method_type:
        return None  # an unknown format is already the report's blocking error
    name = "Input file" if file_id is None else f"Input file {file_id}"
    return invalid_file(
        param or report.param,
        f"Invalid file format. {name} is in the {FORMAT_NAMES[report.format]} format, but the specified "
        f"fine-tuning job is not using {needed!r} as the training method (provided method={method_type}).",
    )
