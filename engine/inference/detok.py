"""Incremental detokenisation with stop-string detection that never streams text a stop string will cut."""

from __future__ import annotations

from typing import Any


class IncrementalText:
    """Turns a growing list of token ids into text deltas, holding back incomplete characters and stop prefixes."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self._tok = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all text decoded so far (before stop truncation)
        self._emitted = 0  # chars of self.text already handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to emit ('' if none). Sets .stopped on a stop string."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full = self._decode(self._ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush whatever is held back (called when generation ends for a reason other than a stop string)."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        if self._stop:
            longest = max(len(s) for s in self._stop)
            start = max(0, self._emitted - longest + 1)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                cut = min(hits)
                self.text = self.text[:cut]
                self.stopped = True
                return self._take(cut)
        end = len(self.text)
        if not final:
            end -= self._held_back()
        return self._take(end)

    def _held_back(self) -> int:
        """Length of the longest suffix of the text that starts some stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _take(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted : end]
        self._emitted = end
        return out
