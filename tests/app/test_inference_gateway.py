"""Inference limits through the API gateway: prompt and output caps, per-key concurrency, disconnects, bodies,
no server paths in answers, and shutdown on one signal."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from starlette.types import Receive, Scope, Send

from app.core.settings import Settings
from app.db.migrate import upgrade
from app.gateway.asgi_transport import StreamingASGITransport
from app.main import create_app
from app.usecases.keys import create_key
from tests.conftest import Server, free_port, start_server
from tests.serve.servers import Server as ThreadServer
from tests.serve.servers import open_stuck_requests, sigterm_once


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


# ------------------------------------------------------------------ the gateway alone, over a scripted backend


@dataclass
class FakeBackend:
    """An inference backend whose behaviour each request picks with its `user` field; it records disconnects."""

    data_dir: Path
    calls: int = 0
    disconnects: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/load_lora_adapter":
            await self._json(send, 200, {})
            return
        body = json.loads(raw)
        self.calls += 1
        self.bodies.append(body)
        mode = body.get("user", "ok")
        if mode == "hang":  # computing a plain answer: nothing is sent until it is ready
            await self._until_disconnect(receive)
        elif mode == "stream-hang":
            start = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            await send(start)
            await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})
            await self._until_disconnect(receive)
        elif mode == "path-error":
            error = {"message": f"{self.data_dir}/jobs/ftjob-x/run-1/output/model is not a PEFT adapter directory"}
            await self._json(send, 500, {"error": {**error, "type": "server_error", "param": None, "code": None}})
        else:
            await self._json(send, 200, {"object": "chat.completion", "choices": []})

    async def _until_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.disconnects += 1

    @staticmethod
    async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(payload).encode()})


@dataclass
class Gateway:
    url: str
    key: str
    key_id: str
    app: Any
    backend: FakeBackend

    def in_flight(self) -> int:
        return int(self.app.state.tuneforge.inference_limits.in_flight(self.key_id))

    def post(self, body: dict[str, Any], timeout: float = 30, **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.key}"}
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=timeout, **kwargs)


@pytest.fixture(scope="module", params=["remote", "in_process"])
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The API with its per-key limit at 1, forwarding tiny-chat to a scripted backend over HTTP or in-process."""
    data_dir = tmp_path_factory.mktemp("gateway")
    backend = FakeBackend(data_dir)
    with ThreadServer(backend) as remote:
        urls = f"tiny-chat={remote.url}" if request.param == "remote" else ""
        settings = Settings(data_dir=data_dir, max_concurrent_requests_per_key=1, inference_urls=urls)
        upgrade(settings.resolved_database_url)
        app = create_app(settings)
        state = app.state.tuneforge
        if request.param == "in_process":
            client = httpx.AsyncClient(transport=StreamingASGITransport(backend), base_url="http://inference.local")
            state.backends.register("tiny-chat", client)
        with state.db.session() as session:
            created = create_key(session, "gw")
        with ThreadServer(app) as api:
            yield Gateway(api.url, created.secret, created.key_id, app, backend)


def _settles(gateway: Gateway, disconnects_before: int | None = None) -> None:
    """The key's slot comes back (and, when given, the backend was told the client left)."""
    deadline = time.monotonic() + 30
    while gateway.in_flight() or (disconnects_before is not None and gateway.backend.disconnects <= disconnects_before):
        assert time.monotonic() < deadline, (gateway.in_flight(), gateway.backend.disconnects)
        time.sleep(0.05)
    assert gateway.post({"model": "tiny-chat", "messages": []}).status_code == 200  # its only slot is free


def test_client_timeout_on_a_plain_answer_frees_the_slot_and_stops_the_backend(gateway: Gateway) -> None:
    before = gateway.backend.disconnects
    with pytest.raises(httpx.TimeoutException):
        gateway.post({"model": "tiny-chat", "messages": [], "user": "hang"}, timeout=1)
    _settles(gateway, before)


def test_client_gone_before_a_stream_starts_or_midway_frees_the_slot(gateway: Gateway) -> None:
    before = gateway.backend.disconnects
    body = {"model": "tiny-chat", "messages": [], "stream": True}
    with pytest.raises(httpx.TimeoutException):  # the backend never sends headers: the client gives up first
        gateway.post({**body, "user": "hang"}, timeout=1)
    _settles(gateway, before)
    before = gateway.backend.disconnects
    headers = {"authorization": f"Bearer {gateway.key}"}
    url = f"{gateway.url}/v1/chat/completions"
    with httpx.stream("POST", url, json={**body, "user": "stream-hang"}, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_bytes())  # one chunk arrived; now hang up
    _settles(gateway, before)


def test_a_backend_error_naming_a_server_path_is_relayed_without_it(gateway: Gateway) -> None:
    response = gateway.post({"model": "tiny-chat", "messages": [], "user": "path-error"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert str(gateway.backend.data_dir) not in response.text and "/jobs/" not in response.text
    _settles(gateway)


def test_bodies_are_checked_strictly_before_anything_is_forwarded(gateway: Gateway) -> None:
    calls = gateway.backend.calls
    head = '{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], '
    cases = {
        '"temperature": NaN}': "temperature",
        '"top_p": Infinity}': "top_p",
        '"seed": 1e999}': "seed",
        '"seed": 10000000000000000000000000000000000000000}': "seed",
        '"seed": -9223372036854775809}': "seed",
        '"temperature": 3}': "temperature",
        '"temperature": "hot"}': "temperature",
        '"n": true}': "n",
        '"n": 0}': "n",
        '"max_tokens": 2.5}': "max_tokens",
        '"frequency_penalty": -Infinity}': "frequency_penalty",
        '"metadata": {"x": [NaN]}}': "metadata.x.0",
        '"model": 5}': "model",
    }
    headers = {"authorization": f"Bearer {gateway.key}", "content-type": "application/json"}
    url = f"{gateway.url}/v1/chat/completions"
    for tail, param in cases.items():
        response = httpx.post(url, content=(head + tail).encode(), headers=headers, timeout=30)
        assert response.status_code == 400, (tail, response.text)
        assert response.json()["error"]["param"] == param, (tail, response.text)
    for raw in ("[1]", "{oops", head + '"metadata": ' + "[" * 100_000 + "]" * 100_000 + "}", ""):
        response = httpx.post(url, content=raw.encode(), headers=headers, timeout=30)
        assert response.status_code == 400, (raw[:40], response.text)
    assert gateway.backend.calls == calls  # nothing reached a backend
    ok = httpx.post(url, content=(head + '"seed": 9223372036854775807, "n": 2.0}').encode(), headers=headers)
    assert ok.status_code == 200 and gateway.backend.calls == calls + 1
    _settles(gateway)


def test_an_unreachable_backend_is_a_503_without_its_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    settings = Settings(data_dir=tmp_path, inference_urls=f"tiny-chat=http://127.0.0.1:{port}")
    upgrade(settings.resolved_database_url)
    app = create_app(settings)
    with app.state.tuneforge.db.session() as session:
        created = create_key(session, "gw")
    with ThreadServer(app) as api:
        response = httpx.post(
            f"{api.url}/v1/chat/completions",
            json={"model": "tiny-chat", "messages": []},
            headers={"authorization": f"Bearer {created.secret}"},
            timeout=30,
        )
    assert response.status_code == 503 and str(port) not in response.text
    assert app.state.tuneforge.inference_limits.in_flight(created.key_id) == 0


def test_tuneforge_serve_exits_on_one_sigterm_with_inference_in_flight(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    handle = start_server(tmp_path_factory.mktemp("sigterm"), {"TUNEFORGE_GRACEFUL_SHUTDOWN_S": "3"})
    try:
        key = handle.key("sigterm")
        port = int(handle.base_url.rsplit(":", 1)[1])
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "tell me"}], "max_tokens": 400}
        clients = open_stuck_requests(port, {**body, "temperature": 2.0, "seed": 3}, {"authorization": f"Bearer {key}"})
        time.sleep(1.0)  # let them reach the engine
        took = sigterm_once(handle.process)
        for sock in clients:
            sock.close()
    finally:
        if handle.process.poll() is None:
            handle.stop()
    assert took < 20, handle.log_path.read_text()[-3000:]
