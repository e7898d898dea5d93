"""One streaming pass over a JSONL dataset: framing, parsing, line rules, duplicates and statistics."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import orjson

from engine.formats import codes
from engine.formats.framing import LineFramer
from engine.formats.messages import Findings
from engine.formats.report import DatasetFormat, DatasetReport, LineError, Param
from engine.formats.rules import RULES, detect_format
from engine.formats.stats import StatsTally
from engine.formats.verdict import blocking_error

_BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 20
_FORMAT_KEYS = "chat 'messages', 'prompt'/'completion' pairs or preference 'input'/'preferred_output'"


class DatasetChecker:
    """Checks a dataset fed in chunks of any size; call finish() once for the report."""

    def __init__(
        self,
        *,
        max_line_bytes: int = 1_048_576,
        max_errors: int = 100,
        min_examples: int = 10,
        param: Param = "training_file",
    ) -> None:
        if max_line_bytes < 1 or max_errors < 0 or min_examples < 0:
            raise ValueError("max_line_bytes must be >= 1, max_errors and min_examples >= 0")
        if param not in ("training_file", "validation_file"):
            raise ValueError(f"param must be 'training_file' or 'validation_file', not {param!r}")
        self._max_line_bytes = max_line_bytes
        self._max_errors = max_errors
        self._min_examples = min_examples
        self._param: Param = param
        self._framer = LineFramer(max_line_bytes)
        self._line = 0
        self._nonblank = 0
        self._examples = 0
        self._format: DatasetFormat | None = None  # set by the first valid example
        self._format_line = 0
        self._first_seen: DatasetFormat | None = None  # first recognised format, valid or not
        self._errors: list[LineError] = []
        self._first_error: LineError | None = None
        self._n_errors = 0
        self._counts: dict[str, int] = {}
        self._digests: set[bytes] = set()
        self._duplicates = 0
        self._stats = StatsTally()
        self._report: DatasetReport | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an unfinished line held between feed() calls (at most max_line_bytes)."""
        return self._framer.buffered_bytes

    def feed(self, chunk: bytes) -> None:
        """Check the lines that `chunk` completes; chunk boundaries may fall anywhere."""
        if self._report is not None:
            raise RuntimeError("feed() after finish()")
        for line in self._framer.feed(chunk):
            self._check_line(line)

    def finish(self) -> DatasetReport:
        """Check the last unterminated line and return the report (the same one on later calls)."""
        if self._report is None:
            for line in self._framer.finish():
                self._check_line(line)
            self._report = self._build_report()
        return self._report

    def _check_line(self, raw: bytes | None) -> None:
        self._line += 1
        if raw is None:
            self._error(codes.LINE_TOO_LONG, f"longer than {self._max_line_bytes} bytes (skipped unread)")
            return
        if not raw or raw.isspace():
            return
        self._nonblank += 1
        if self._line == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._parse_error(raw, exc)
            return
        if not isinstance(obj, dict):
            kind = "array" if isinstance(obj, list) else "string" if isinstance(obj, str) else "scalar"
            self._error(codes.NOT_AN_OBJECT, f"a JSON {kind}, not an object")
            return
        fmt = detect_format(obj)
        if fmt is DatasetFormat.UNKNOWN:
            self._error(codes.UNKNOWN_FORMAT, f"unexpected format: expected {_FORMAT_KEYS}")
            return
        if self._format is not None and fmt is not self._format:
            self._error(
                codes.MIXED_FORMATS,
                f"in the {fmt.value} format, but the file is in the {self._format.value} format "
                f"(set by line {self._format_line})",
            )
            return
        found = RULES[fmt](obj)
        if found.issues:
            self._first_seen = self._first_seen or fmt
            for code, message in found.issues.items():
                self._error(code, message)
            return
        if self._format is None:
            self._format, self._format_line = fmt, self._line
        self._accept(obj, found)

    def _accept(self, obj: dict[str, Any], found: Findings) -> None:
        """Count a valid example: statistics and exact duplicates (by digest of its canonical JSON)."""
        self._examples += 1
        self._stats.add(found)
        digests = self._digests
        before = len(digests)
        digests.add(hashlib.blake2b(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS), digest_size=16).digest())
        if len(digests) == before:
            self._duplicates += 1

    def _parse_error(self, raw: bytes, exc: orjson.JSONDecodeError) -> None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            self._error(codes.INVALID_UTF8, f"not valid UTF-8 (bad byte at offset {bad.start})")
            return
        self._error(codes.INVALID_JSON, f"not valid JSON: {exc.msg} at column {exc.colno}")

    def _error(self, code: str, message: str) -> None:
        self._n_errors += 1
        self._counts[code] = self._counts.get(code, 0) + 1
        first = self._first_error is None
        if first or len(self._errors) < self._max_errors:
            error = LineError(line=self._line, code=code, message=message)
            self._first_error = self._first_error or error
            if len(self._errors) < self._max_errors:
                self._errors.append(error)

    def _build_report(self) -> DatasetReport:
        file_errors: list[LineError] = []
        if self._nonblank == 0 and self._counts.get(codes.LINE_TOO_LONG, 0) == 0:
            file_errors.append(LineError(line=0, code=codes.EMPTY_FILE, message="the file has no examples"))
        elif self._examples < self._min_examples:
            file_errors.append(
                LineError(
                    line=0,
                    code=codes.TOO_FEW_EXAMPLES,
                    message=f"{self._examples} valid example(s), at least {self._min_examples} needed",
                )
            )
        for error in file_errors:
            self._n_errors += 1
            self._counts[error.code] = self._counts.get(error.code, 0) + 1
        errors = (file_errors + self._errors)[: self._max_errors]
        blocking = blocking_error(
            first_line_error=self._first_error,
            n_errors=self._n_errors,
            error_counts=self._counts,
            n_examples=self._examples,
            min_examples=self._min_examples,
            param=self._param,
        )
        return DatasetReport(
            format=self._format or self._first_seen or DatasetFormat.UNKNOWN,
            n_lines=self._line,
            n_examples=self._examples,
            n_errors=self._n_errors,
            errors=errors,
            error_counts=dict(self._counts),
            duplicates=self._duplicates,
            stats=self._stats.result(),
            can_train=blocking is None,
            blocking_error=blocking,
            max_line_bytes=self._max_line_bytes,
            param=self._param,
        )


def check_path(path: str | os.PathLike[str], **limits: Any) -> DatasetReport:
    """Check a JSONL file on disk, reading it in 1 MiB chunks (limits: DatasetChecker's keyword arguments)."""
    checker = DatasetChecker(**limits)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            checker.feed(chunk)
    return checker.finish()


def iter_examples(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; raise ValueError naming the line on a bad one."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.isspace():
                continue
            if number == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise ValueError(f"line {number}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise ValueError(f"line {number}: a JSON value that is not an object")
            yield number, obj
