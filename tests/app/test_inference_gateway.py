"""Inference limits through the API gateway: prompt and output caps, per-key concurrency, disconnects."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import Server, start_server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handle = start_server(
        tmp_path_factory.mktemp("limited"),
        {
            "TUNEFORGE_MAX_CONCURRENT_REQUESTS_PER_KEY": "1",
            "TUNEFORGE_MAX_PROMPT_TOKENS": "64",
            "TUNEFORGE_MAX_OUTPUT_TOKENS": "400",
            "TUNEFORGE_EMBEDDED_WORKER": "false",
        },
    )
    yield handle
    handle.stop()


def test_base_model_chat_and_completion_work(limited: Server) -> None:
    client = limited.openai("alpha")
    reply = client.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert reply.object == "chat.completion" and reply.model == "tiny-chat"
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage and reply.usage.completion_tokens <= 5
    text = client.completions.create(model="tiny-chat", prompt="Once upon a time", max_tokens=4)
    assert text.object == "text_completion" and text.choices[0].finish_reason in ("stop", "length")


def test_prompt_and_output_limits_are_400(limited: Server) -> None:
    client = limited.openai("alpha")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "word " * 200}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=1000
        )


def test_per_key_concurrency_is_429_and_a_disconnect_frees_the_slot(limited: Server) -> None:
    headers = {"authorization": f"Bearer {limited.key('alpha')}"}
    # A long sampled answer keeps the first stream open while the second request arrives.
    body = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "tell me"}],
        "stream": True,
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 3,
    }
    with httpx.Client(base_url=limited.base_url, headers=headers, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            lines = first.iter_lines()  # keep a reference: a collected iterator closes the response
            assert next(lines).startswith("data: ")  # the stream is open and holds this key's only slot
            second = http.post("/v1/chat/completions", json={**body, "stream": False})
            assert second.status_code == 429
            assert float(second.headers["retry-after"]) > 0
            assert second.json()["error"]["code"] == "rate_limit_exceeded"
            other_key = http.post(
                "/v1/chat/completions",
                json={**body, "stream": False, "max_tokens": 2},
                headers={"authorization": f"Bearer {limited.key('beta')}"},
            )
            assert other_key.status_code == 200  # the limit is per key
        # The client went away mid-stream: the slot must come back (it leaked before the gateway released it
        # on cancellation).
        deadline = time.monotonic() + 30
        while True:
            again = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2})
            if again.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert again.status_code == 200
