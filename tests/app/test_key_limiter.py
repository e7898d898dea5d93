"""The one per-key concurrency limiter (app.core.limits), used by the API gateway and the inference process."""

from __future__ import annotations

import json

import pytest

from app.core.asgi import error_response
from app.core.errors import RateLimited
from app.core.limits import KeyLimiter
from app.core.settings import Settings
from serve.settings import ServeSettings


def test_the_limit_is_a_setting_with_a_default_in_both_processes() -> None:
    assert Settings.model_fields["max_concurrent_requests_per_key"].default >= 1
    assert ServeSettings().max_concurrent_per_key == 8


def test_over_the_limit_is_a_429_in_the_envelope_with_retry_after_and_keys_are_counted_apart() -> None:
    limiter = KeyLimiter(2, retry_after_s=3)
    limiter.acquire("a")
    limiter.acquire("a")
    limiter.acquire("b")  # another key has its own slots
    with pytest.raises(RateLimited) as refused:
        limiter.acquire("a")
    response = error_response(refused.value)
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    error = json.loads(bytes(response.body))["error"]
    assert (
        error["code"] == "rate_limit_exceeded"
        and error["type"] == "requests"
        and set(error)
        == {
            "message",
            "type",
            "param",
            "code",
        }
    )
    assert limiter.held() == {"a": 2, "b": 1}
    limiter.release("a")
    with limiter.hold("a"):
        assert limiter.in_flight("a") == 2
    assert limiter.in_flight("a") == 1
    limiter.release("a")
    limiter.release("b")
    assert limiter.held() == {} and limiter.in_flight("a") == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        KeyLimiter(0)
