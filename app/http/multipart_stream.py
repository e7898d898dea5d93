"""Stream a multipart/form-data body part by part, without spooling it anywhere first.

Starlette's form parser writes every file part to a temp file before the handler runs, with no size cap;
this parser hands the `file` part's bytes to a sink as they arrive, so the cap and the dataset check run
while the body streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

from app.core.errors import InvalidRequest

MAX_FIELD_BYTES = 64 * 1024


class StreamingForm:
    """Feed raw body chunks; text fields are collected, the file part goes to `on_file_start`/`file_sink`."""

    def __init__(
        self,
        content_type: str,
        file_field: str,
        on_file_start: Callable[[str | None], Callable[[bytes], None]],
    ) -> None:
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise InvalidRequest("Expected a multipart/form-data body with a 'file' part.", param="file")
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
        self._parser = MultipartParser(boundary, callbacks)

    def feed(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def close(self) -> None:
        self._parser.finalize()

    def _part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._is_file = False
        self._value = bytearray()
        self._sink = None

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

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
        if len(self._value) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"Form field '{self._name}' is too long.", param=self._name)

    def _part_end(self) -> None:
        if not self._is_file and self._name is not None:
            self.fields[self._name] = self._value.decode("utf-8", "replace")
