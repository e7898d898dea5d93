"""Per-key concurrency limit: past it a request is refused with 429 and Retry-After."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

from serve.errors import APIError


class KeyLimiter:
    """Counts in-flight requests per API key (single event loop, so no lock is needed)."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight: Counter[str] = Counter()

    def acquire(self, key: str) -> None:
        if self.in_flight[key] >= self.limit:
            raise APIError(
                429,
                f"Too many concurrent requests for this key (limit {self.limit}); retry shortly.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self.in_flight[key] += 1

    def release(self, key: str) -> None:
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        self.acquire(key)
        try:
            yield
        finally:
            self.release(key)


def key_of(authorization: str | None) -> str:
    """The caller's key: the bearer token (the gateway forwards one per project key), else anonymous."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or "anonymous"
    return "anonymous"
