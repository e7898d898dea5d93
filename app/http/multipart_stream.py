"""Stream a multipart/form-data body part by part, without spooling it anywhere first.

Starlette's form parser writes every file part to a temp file before the handler runs, with no size cap;
this parser hands the `file` part's bytes to a sink as they arrive, so the cap and the dataset check run
while the body streams.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

from app.core.echo import clipped
from app.core.errors import InvalidRequest, PayloadTooLarge
from app.core.settings import Settings

MAX_PART_HEADERS = 8  # Content-Disposition, Content-Type and a few more; no client needs dozens
# Older python-multipart releases take no header limits; ours below (per part, in the callbacks) hold anyway.
_PARSER_TAKES_LIMITS = "max_header_size" in inspect.signature(MultipartParser.__init__).parameters


@dataclass(frozen=True)
class FormLimits:
    """Caps on everything in a multipart body except the file part's bytes (the upload cap covers those)."""

    max_parts: int
    max_field_bytes: int
    max_fields_total_bytes: int
    max_part_header_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> FormLimits:
        return cls(
            max_parts=settings.max_form_parts,
            max_field_bytes=settings.max_form_field_bytes,
            max_fields_total_bytes=settings.max_form_fields_total_bytes,
            max_part_header_bytes=settings.max_part_header_bytes,
        )


def _malformed(detail: str) -> InvalidRequest:
    return InvalidRequest(f"The multipart/form-data body is malformed: {detail}", param=None, code="invalid_multipart")


class StreamingForm:
    """Feed raw body chunks; text fields are collected, the file part goes to `on_file_start`/`file_sink`.

    Every parser error is an InvalidRequest (400): the body is client input, never a reason for a 500.
    """

    def __init__(
        self,
        content_type: str,
        file_field: str,
        on_file_start: Callable[[str | None], Callable[[bytes], None]],
        limits: FormLimits,
    ) -> None:
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise InvalidRequest("Expected a multipart/form-data body with a 'file' part.", param="file")
        self._limits = limits
        self._parts = 0
        self._fields_bytes = 0
        self._header_bytes = 0
        self.fields: dict[str, str] = {}
        self.file_seen = False
        self.filename: str | None = None
        self._file_field = file_field
        self._on_file_start = on_file_start
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._is_file = False
        self._value = bytearray()
        self._sink: Callable[[bytes], None] | None = None
        callbacks: Any = {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }
        header_limits: dict[str, int] = {}
        if _PARSER_TAKES_LIMITS:
            header_limits = {"max_header_size": limits.max_part_header_bytes, "max_header_count": MAX_PART_HEADERS}
        try:
            self._parser = MultipartParser(boundary, callbacks, **header_limits)
        except FormParserError as exc:  # e.g. a boundary over the library's length limit
            raise _malformed(clipped(str(exc), 80)) from None

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except FormParserError as exc:  # header line without a colon, garbage after a boundary, ...
            raise _malformed(clipped(str(exc), 80)) from None

    def close(self) -> None:
        """The body ended: it must have ended with the closing boundary, else a file would be stored cut short."""
        self._parser.finalize()
        if self._parser.state != MultipartState.END:
            raise _malformed("the body ended before its closing boundary.")

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._limits.max_parts:
            raise _malformed(f"more than {self._limits.max_parts} parts.")
        self._header_bytes = 0
        self._header_field = b""
        self._header_value = b""
        self._headers = {}
        self._name = None
        self._is_file = False
        self._value = bytearray()
        self._sink = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self._header_value += data[start:end]

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self._limits.max_part_header_bytes:
            raise _malformed(f"a part's headers exceed {self._limits.max_part_header_bytes} bytes.")

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        self._name = name.decode("utf-8", "replace") if name is not None else None
        if self._name == self._file_field:
            if self.file_seen:
                raise InvalidRequest("Only one 'file' part is allowed.", param="file")
            self.file_seen = True
            raw = params.get(b"filename")
            self.filename = raw.decode("utf-8", "replace") if raw is not None else None
            self._is_file = True
            self._sink = self._on_file_start(self.filename)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file and self._sink is not None:
            self._sink(data[start:end])
            return
        self._value += data[start:end]
        self._fields_bytes += end - start
        name = clipped(self._name or "")
        if len(self._value) > self._limits.max_field_bytes:
            raise PayloadTooLarge(
                f"Form field '{name}' is longer than {self._limits.max_field_bytes} bytes.", param=name or None
            )
        if self._fields_bytes > self._limits.max_fields_total_bytes:
            raise PayloadTooLarge(
                f"The form's text fields exceed {self._limits.max_fields_total_bytes} bytes together.", param=None
            )

    def _part_end(self) -> None:
        if not self._is_file and self._name is not None:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
