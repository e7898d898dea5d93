"""Concurrent requests per caller key, for the API gateway and the inference process: past the limit, a 429."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from app.core.errors import RateLimited


class KeyLimiter:
    """Counts in-flight requests per key; each process runs one event loop, so no lock is needed."""

    def __init__(self, limit: int, retry_after_s: float = 1.0) -> None:
        if limit < 1:
            raise ValueError("the per-key limit must be at least 1")
        self.limit = limit
        self.retry_after_s = retry_after_s
        self._in_flight: Counter[str] = Counter()

    def acquire(self, key: str) -> None:
        """Take one of key's slots, or raise RateLimited (429 with Retry-After) when all are taken."""
        if self._in_flight[key] >= self.limit:
            raise RateLimited(
                f"Too many concurrent requests for this API key (limit {self.limit}); retry shortly.",
                retry_after=self.retry_after_s,
            )
        self._in_flight[key] += 1

    def release(self, key: str) -> None:
        """Give one of key's slots back."""
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One slot for the duration of the block."""
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)

    def in_flight(self, key: str) -> int:
        """Requests key has in flight now."""
        return self._in_flight[key]

    def held(self) -> dict[str, int]:
        """Every key with a request in flight, and how many."""
        return dict(self._in_flight)
