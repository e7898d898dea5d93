"""Split a byte stream, arriving in arbitrary chunks, into lines under a length cap."""

from __future__ import annotations

OVERLONG = None  # stands for a line longer than the cap, which is dropped rather than buffered


class LineFramer:
    """Turns chunks into complete lines; never holds more than `max_line_bytes` of a pending line."""

    def __init__(self, max_line_bytes: int) -> None:
        self._max = max_line_bytes
        self._pending = bytearray()
        self._skipping = False  # inside an overlong line: drop bytes until its newline

    @property
    def buffered_bytes(self) -> int:
        """Bytes of the unfinished last line held between calls."""
        return len(self._pending)

    def feed(self, chunk: bytes) -> list[bytes | None]:
        """The lines that `chunk` completes, in order; OVERLONG (None) for each line over the cap."""
        out: list[bytes | None] = []
        if self._skipping:
            newline = chunk.find(b"\n")
            if newline < 0:
                return out
            self._skipping = False
            chunk = chunk[newline + 1 :]
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            self._hold(parts[0], out)
            return out
        first = parts[0]
        if self._pending:
            if len(self._pending) + len(first) > self._max:
                out.append(OVERLONG)
            else:
                out.append(bytes(self._pending) + first)
            self._pending.clear()
        else:
            out.append(first if len(first) <= self._max else OVERLONG)
        limit = self._max
        out.extend(p if len(p) <= limit else OVERLONG for p in parts[1:-1])
        self._hold(parts[-1], out)
        return out

    def finish(self) -> list[bytes | None]:
        """The last line when the stream does not end with a newline."""
        line = bytes(self._pending)
        self._pending.clear()
        self._skipping = False
        return [line] if line else []

    def _hold(self, piece: bytes, out: list[bytes | None]) -> None:
        """Keep the start of an unfinished line, or give it up as overlong once it passes the cap."""
        if len(self._pending) + len(piece) > self._max:
            out.append(OVERLONG)
            self._pending.clear()
            self._skipping = True
        else:
            self._pending += piece
