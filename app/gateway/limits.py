"""Concurrent inference requests per API key: over the limit is a 429 with Retry-After."""

from __future__ import annotations

from collections import Counter

from app.core.errors import RateLimited


class KeyConcurrency:
    """Counts in-flight requests per key; the event loop is single-threaded, so no lock is needed."""

    def __init__(self, limit: int, retry_after_s: float = 1.0) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._in_flight: Counter[str] = Counter()

    def acquire(self, key_id: str) -> None:
        if self._in_flight[key_id] >= self.limit:
            raise RateLimited(
                f"Too many concurrent requests for this API key (limit {self.limit}).", retry_after=self.retry_after_s
            )
        self._in_flight[key_id] += 1

    def release(self, key_id: str) -> None:
        self._in_flight[key_id] -= 1
        if self._in_flight[key_id] <= 0:
            del self._in_flight[key_id]

    def in_flight(self, key_id: str) -> int:
        return self._in_flight[key_id]
