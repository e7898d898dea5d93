"""The inference process over real HTTP: the official openai SDK, SSE framing, limits, runtime LoRA endpoints."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from serve.app import create_app
from serve.client import BackendError, InferenceClient
from serve.settings import ServeSettings
from tests.serve.servers import Server
from tests.support.inference_testing import build_random_base, make_adapter

torch.set_num_threads(2)
BASE = "test-base"
FT = "ft:test-base:proj:sfx:abc123"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    base = build_random_base(root / "models" / BASE)
    adapters_root = root / "adapters"
    return {
        "root": root,
        "base": base,
        "adapters_root": adapters_root,
        "ft": make_adapter(base, adapters_root / FT, seed=11, target_modules=("q_proj", "v_proj", "down_proj")),
        "other": make_adapter(base, root / "other", seed=12),
        "wrong": make_adapter(base, root / "wrong", seed=13, manifest_overrides={"base_model_sha256": "f" * 64}),
    }


@pytest.fixture(scope="module")
def server(world: dict[str, Path]) -> Iterator[Server]:
    settings = ServeSettings(max_prompt_tokens=120, max_output_tokens=600, max_concurrent_per_key=1, max_n=4)
    app = create_app(BASE, world["root"], world["adapters_root"], settings)
    with Server(app) as running:
        yield running


def sdk(server: Server, key: str) -> Any:  # Any: the tests pass plain dicts the SDK types do not model
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


MSGS = [{"role": "user", "content": "hello, how are you?"}]


def test_chat_non_streaming_and_streaming_agree_and_follow_the_wire_shape(server: Server) -> None:
    client = sdk(server, "k-chat")
    done = client.chat.completions.create(model=FT, messages=MSGS, max_tokens=12, temperature=0)
    assert done.object == "chat.completion" and done.model == FT
    choice = done.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert done.usage is not None and done.usage.completion_tokens <= 12 and done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=FT,
            messages=MSGS,
            max_completion_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason is not None]
    assert content == choice.message.content
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == choice.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks[:-1])


def test_raw_sse_framing_ends_with_done(server: Server) -> None:
    body = {"model": BASE, "messages": MSGS, "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer k-raw"}, timeout=60
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""} and "usage" not in first
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] in ("stop", "length")


def test_adapter_changes_answers_and_seeded_n_choices_repeat(server: Server) -> None:
    client = sdk(server, "k-seed")
    kwargs: dict[str, Any] = {"messages": MSGS, "max_tokens": 16, "temperature": 0}
    base = client.chat.completions.create(model=BASE, **kwargs).choices[0].message.content
    tuned = client.chat.completions.create(model=FT, **kwargs).choices[0].message.content
    assert base != tuned
    sampled = {"messages": MSGS, "max_tokens": 10, "temperature": 1.0, "top_p": 0.9, "n": 3, "seed": 5}
    a = client.chat.completions.create(model=FT, **sampled)
    b = client.chat.completions.create(model=FT, **sampled)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


def test_stop_sequence_cuts_the_text(server: Server) -> None:
    client = sdk(server, "k-stop")
    full = client.completions.create(model=FT, prompt="the quick brown fox", max_tokens=20, temperature=0)
    text = full.choices[0].text
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    stop = text[6:8]
    cut = client.completions.create(model=FT, prompt="the quick brown fox", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].text == text[: text.index(stop)]
    streamed = client.completions.create(
        model=FT, prompt=["the quick brown fox", "hello"], max_tokens=20, temperature=0, stream=True
    )
    texts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts[0] == text


def test_models_list_and_runtime_lora_endpoints_through_the_forwarding_client(
    server: Server, world: dict[str, Path]
) -> None:
    async def run() -> None:
        async with InferenceClient(server.url) as backend:
            await backend.load_lora_adapter("ft:other", str(world["other"]))
            await backend.load_lora_adapter("ft:other", str(world["other"]))  # idempotent
            ids = [m["id"] for m in await backend.models()]
            assert BASE in ids and "ft:other" in ids
            with pytest.raises(BackendError) as refused:
                await backend.load_lora_adapter("ft:wrong", str(world["wrong"]))
            assert refused.value.status_code == 400 and b"different base model" in refused.value.body
            reply = await backend.chat_completions({"model": "ft:other", "messages": MSGS, "max_tokens": 4}, "k-fwd")
            assert reply["choices"][0]["message"]["role"] == "assistant"
            raw = b"".join(
                [
                    c
                    async for c in backend.stream(
                        "/v1/chat/completions", {"model": "ft:other", "messages": MSGS, "max_tokens": 4}
                    )
                ]
            )
            assert raw.rstrip().endswith(b"data: [DONE]")
            long = {"model": FT, "messages": MSGS, "max_tokens": 600, "temperature": 0}
            held = backend.stream("/v1/chat/completions", long, "k-fwd-busy")
            await held.__anext__()
            with pytest.raises(BackendError) as limited:  # the per-key limit follows X-TuneForge-Key
                await backend.chat_completions({"model": FT, "messages": MSGS, "max_tokens": 2}, "k-fwd-busy")
            assert limited.value.status_code == 429 and limited.value.headers["retry-after"] == "1"
            await held.aclose()
            await backend.unload_lora_adapter("ft:other")
            await backend.unload_lora_adapter("ft:other")  # unknown is fine
            assert "ft:other" not in [m["id"] for m in await backend.models()]

    asyncio.run(run())
    client = sdk(server, "k-models")
    assert {m.id for m in client.models.list()} >= {BASE}
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="ft:other", messages=MSGS)
    assert missing.value.code == "model_not_found"


def test_limits_answer_400_in_the_openai_envelope(server: Server) -> None:
    client = sdk(server, "k-limits")
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model=FT, messages=MSGS, max_tokens=601)
    assert too_many.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=FT, messages=[{"role": "user", "content": "hello " * 200}])
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad_temp:
        client.chat.completions.create(model=FT, messages=MSGS, temperature=3)
    assert bad_temp.value.param == "temperature"
    for seed in (2**64, -(2**63) - 1):  # outside OpenAI's int64 range: refused before the engine sees it
        with pytest.raises(openai.BadRequestError) as bad_seed:
            client.chat.completions.create(model=FT, messages=MSGS, seed=seed)
        assert bad_seed.value.param == "seed"
    response = httpx.post(server.url + "/v1/chat/completions", json={"model": FT, "messages": MSGS, "n": 9})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_concurrency_per_key_is_429_with_retry_after_and_a_disconnect_frees_the_slot(server: Server) -> None:
    service = server.app.state.service
    body = {"model": FT, "messages": MSGS, "max_tokens": 600, "temperature": 0, "stream": True}
    headers = {"Authorization": "Bearer k-busy"}
    aborted_before = service.engine.aborted_rows
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60) as first:
        lines = first.iter_lines()
        assert next(lines).startswith("data: ")
        with pytest.raises(openai.RateLimitError) as limited:
            sdk(server, "k-busy").chat.completions.create(model=FT, messages=MSGS, max_tokens=2)
        assert limited.value.response.headers["retry-after"] == "1"
        other = sdk(server, "k-other").chat.completions.create(model=FT, messages=MSGS, max_tokens=2)
        assert other.choices
    # the client hung up mid-stream: its rows and its key's slot must come free
    deadline = time.monotonic() + 60
    while (service.limiter.in_flight("k-busy") or service.engine.active_sequences) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.limiter.in_flight("k-busy") == 0
    assert service.engine.active_sequences == 0
    assert service.engine.aborted_rows == aborted_before + 1  # stopped early, not run to max_tokens
    again = sdk(server, "k-busy").chat.completions.create(model=FT, messages=MSGS, max_tokens=2)
    assert again.choices


def _post_raw(server: Server, path: str, raw: str) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer k-numbers"}
    return httpx.post(server.url + path, content=raw.encode(), headers=headers, timeout=60)


@pytest.mark.parametrize("model", [BASE, FT], ids=["base", "adapter"])
def test_non_finite_numbers_huge_seeds_and_deep_nesting_are_400_naming_the_field(server: Server, model: str) -> None:
    chat = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}], "max_tokens": 2, '
    completion = f'{{"model": "{model}", "prompt": "hi", "max_tokens": 2, '
    cases = {
        '"temperature": NaN}': "temperature",
        '"top_p": Infinity}': "top_p",
        '"seed": 1e999}': "seed",
        '"temperature": -1e400}': "temperature",
        '"presence_penalty": -Infinity}': "presence_penalty",  # not a field we model: still refused
        '"seed": 10000000000000000000000000000000000000000}': "seed",
        '"metadata": {"a": [1, 2, NaN]}}': "metadata.a.2",
    }
    for path, head in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        for tail, param in cases.items():
            response = _post_raw(server, path, head + tail)
            assert response.status_code == 400, (path, tail, response.text)
            error = response.json()["error"]
            assert error["param"] == param and param in error["message"], (path, tail, error)
        for depth in (40, 100_000):  # past our limit, and past Python's recursion limit
            response = _post_raw(server, path, head + '"metadata": ' + "[" * depth + "]" * depth + "}")
            assert response.status_code == 400 and "nests deeper" in response.json()["error"]["message"]
        for raw in ("[1, 2]", "{not json", "\xff"):
            assert _post_raw(server, path, raw).status_code == 400, raw
    fine = _post_raw(server, "/v1/chat/completions", chat + '"seed": 9223372036854775807, "temperature": 1e-3}')
    assert fine.status_code == 200, fine.text


def test_load_lora_adapter_only_loads_from_under_the_data_directory(
    server: Server, world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = world["root"]
    outside = make_adapter(world["base"], tmp_path_factory.mktemp("elsewhere") / "adapter", seed=14)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    mixed = root / "mixed"  # inside the root, but its weights are a link to a file outside it
    mixed.mkdir()
    for name in ("adapter_config.json", "manifest.json"):
        (mixed / name).write_bytes((outside / name).read_bytes())
    (mixed / "adapter_model.safetensors").symlink_to(outside / "adapter_model.safetensors")
    not_adapter = root / "plain-dir"
    not_adapter.mkdir()
    refused = {
        str(outside): 400,
        str(root / "escape"): 400,
        f"{root}/adapters/../../{outside.parent.name}/adapter": 400,
        "adapters/" + FT: 400,  # relative
        str(mixed): 400,
        str(root / "missing"): 404,
        str(not_adapter): 400,
    }
    url = server.url + "/v1/load_lora_adapter"
    for path, status in refused.items():
        response = httpx.post(url, json={"lora_name": "ft:probe", "lora_path": path}, timeout=60)
        assert response.status_code == status, (path, response.text)
        assert response.json()["error"]["param"] == "lora_path", response.text
        assert str(root) not in response.text and str(outside) not in response.text, response.text
        assert "ft:probe" in response.json()["error"]["message"]
    models = httpx.get(server.url + "/v1/models", timeout=60)
    assert "ft:probe" not in models.text and str(root) not in models.text  # ids and roots name models, not paths
    inside = httpx.post(url, json={"lora_name": "ft:inside", "lora_path": str(world["other"])}, timeout=60)
    assert inside.status_code == 200, inside.text
    httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "ft:inside"}, timeout=60)
