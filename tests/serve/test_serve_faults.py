"""A request that fails at any stage, or is abandoned, gives back everything it held; shutdown needs one signal.

Each case injects a failure into the running server (before the slot is taken, after the adapter is pinned, during
prefill, mid-decode, while the answer is written, or the client goes away), for the base model and for an adapter,
streaming or not. Afterwards another project's model answers, the same key is not refused, the per-key counters are
zero, the engine holds no rows, pins or KV, and no response named a server path.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import serve.answers as serve_answers
from engine.inference.engine import GenerationEngine
from serve.app import create_app
from serve.service import InferenceService
from serve.settings import ServeSettings
from tests.serve.servers import Server, free_port, open_stuck_requests, sigterm_once
from tests.support.inference_testing import build_random_base, make_adapter

torch.set_num_threads(2)
BASE = "fault-base"
FT = "ft:fault-base:proj:sfx:f00001"
MSGS = [{"role": "user", "content": "hello, how are you?"}]
LONG = {"max_tokens": 400, "temperature": 1.0, "seed": 1}  # both models run to max_tokens on this seed
STAGES = ["before_slot", "after_pin", "prefill", "decode", "writing", "disconnect"]
ANSWER_S = 30  # "normal time" for another project's answer, generous for a loaded shared machine


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    base = build_random_base(root / "models" / BASE)
    adapters_root = root / "adapters"
    make_adapter(base, adapters_root / FT, seed=21, target_modules=("q_proj", "v_proj", "down_proj"))
    return {"root": root, "base": base, "adapters_root": adapters_root}


def _settings() -> ServeSettings:
    return ServeSettings(max_prompt_tokens=120, max_output_tokens=400, max_concurrent_per_key=1, max_n=8)


@pytest.fixture(scope="module")
def server(world: dict[str, Path]) -> Iterator[Server]:
    app = create_app(BASE, world["root"], world["adapters_root"], _settings())
    with Server(app) as running:
        yield running


def _service(server: Server) -> InferenceService:
    service: InferenceService = server.app.state.service
    return service


def _secret(world: dict[str, Path]) -> str:
    """An exception message naming a server path: none of it may reach a client."""
    return f"cannot read {world['root']}/jobs/x/run-1/output/model"


def _slow_decode(engine: GenerationEngine, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.05) -> None:
    """Make each forward pass slow, so a request is surely still decoding when the client leaves."""
    original = engine._forward

    def slow(*args: Any, **kwargs: Any) -> torch.Tensor:
        time.sleep(delay_s)
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", slow)


def _inject(stage: str, stream: bool, server: Server, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    service, engine = _service(server), _service(server).engine
    secret = _secret(world)
    if stage == "before_slot":

        def refuse(*_: Any, **__: Any) -> list[int]:
            raise RuntimeError(secret)

        monkeypatch.setattr(service, "chat_prompt", refuse)
    elif stage == "after_pin":
        fill = engine._fill_seqs

        def pin_then_fail(request: Any, entry: Any, seqs: list[Any]) -> list[Any]:
            fill(request, entry, seqs)  # every row pinned its adapter...
            raise OSError(secret)  # ...then the request fails to start

        monkeypatch.setattr(engine, "_fill_seqs", pin_then_fail)
    elif stage in ("prefill", "decode"):
        forward = engine._forward
        decodes = 0

        def fail_forward(input_ids: torch.Tensor, *args: Any) -> torch.Tensor:
            nonlocal decodes
            if input_ids.shape[1] > 1 and stage == "prefill":
                raise RuntimeError(secret)
            if input_ids.shape[1] == 1:
                decodes += 1
                if stage == "decode" and decodes == 3:
                    raise RuntimeError(secret)
            return forward(input_ids, *args)

        monkeypatch.setattr(engine, "_forward", fail_forward)
    elif stage == "writing" and stream:
        real_sse = serve_answers.sse
        calls = 0

        def broken_sse(payload: Any) -> str:
            nonlocal calls
            calls += 1
            if calls == 3:
                raise RuntimeError(secret)
            return real_sse(payload)

        monkeypatch.setattr(serve_answers, "sse", broken_sse)
    elif stage == "writing":

        def broken_usage(*_: Any) -> Any:
            raise RuntimeError(secret)

        monkeypatch.setattr(serve_answers, "_usage", broken_usage)
    elif stage == "disconnect":
        _slow_decode(engine, monkeypatch)


def _request(server: Server, key: str, model: str, stream: bool, disconnect: bool) -> str:
    """Send one chat request and return whatever the client saw (text or the transport error)."""
    body = {"model": model, "messages": MSGS, **LONG, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    url = server.url + "/v1/chat/completions"
    try:
        if stream:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=ANSWER_S) as response:
                seen = [f"{response.status_code}"]
                for line in response.iter_lines():
                    seen.append(line)
                    if disconnect and line.startswith("data: ") and len(seen) > 2:
                        break  # hang up mid-stream
                return "\n".join(seen)
        # a client that times out closes its connection: the same as hanging up
        response = httpx.post(url, json=body, headers=headers, timeout=1.0 if disconnect else ANSWER_S)
        return f"{response.status_code} {response.text}"
    except httpx.HTTPError as exc:
        return f"client error: {exc!r}"


def _settled(server: Server, timeout: float = ANSWER_S) -> None:
    """Wait until nothing is held: per-key slots, rows, pins, queued requests, KV."""
    service = _service(server)
    deadline = time.monotonic() + timeout
    while True:
        load = service.engine.load()
        held = service.limiter.held()
        idle = not held and load.active_sequences == load.starting_sequences == load.pending_requests == 0
        if idle and load.pinned_adapters == 0 and load.kv_rows == 0:
            return
        assert time.monotonic() < deadline, f"still held after {timeout}s: slots {held}, engine {load}"
        time.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("model", [BASE, FT], ids=["base", "adapter"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_failed_or_abandoned_request_releases_everything_it_held(
    stage: str,
    model: str,
    stream: bool,
    server: Server,
    world: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = _service(server)
    key = f"tenant-a-{stage}-{model}-{stream}"
    aborted_before = service.engine.aborted_rows
    with monkeypatch.context() as patch:
        _inject(stage, stream, server, world, patch)
        seen = _request(server, key, model, stream, disconnect=stage == "disconnect")
        if stage == "disconnect":
            # the engine stops the abandoned rows (rather than decoding them to max_tokens) and frees the slot
            deadline = time.monotonic() + ANSWER_S
            while service.engine.aborted_rows == aborted_before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.engine.aborted_rows > aborted_before, f"abandoned request was not stopped: {seen[:300]}"
        _settled(server)
    assert str(world["root"]) not in seen and "/jobs/x/run-1" not in seen, seen
    if stage != "disconnect" and stage != "writing":
        assert seen.startswith(("500", "200")), seen  # an envelope or an error event, not a dropped connection

    other = BASE if model == FT else FT
    started = time.monotonic()
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": other, "messages": MSGS, "max_tokens": 4},
        headers={"Authorization": "Bearer tenant-b"},
        timeout=ANSWER_S,
    )
    assert reply.status_code == 200 and time.monotonic() - started < ANSWER_S, reply.text
    again = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "messages": MSGS, "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
        timeout=ANSWER_S,
    )
    assert again.status_code == 200, again.text  # its key's only slot came back
    _settled(server)


def test_engine_failures_name_the_model_never_a_path(
    server: Server, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject("after_pin", False, server, world, monkeypatch)
    response = httpx.post(
        server.url + "/v1/chat/completions", json={"model": FT, "messages": MSGS, "max_tokens": 4}, timeout=ANSWER_S
    )
    error = response.json()["error"]
    assert response.status_code == 500 and error["code"] == "engine_error"
    assert FT in error["message"] and str(world["root"]) not in response.text
    _settled(server)


def _stream_lines(url: str, body: dict[str, Any], out: list[str]) -> None:
    headers = {"Authorization": "Bearer streaming-tenant"}
    with (
        contextlib.suppress(httpx.HTTPError),
        httpx.stream("POST", url, json=body, headers=headers, timeout=60) as response,
    ):
        out.append(str(response.status_code))
        out.extend(line for line in response.iter_lines() if line)


def test_shutdown_stops_generation_at_once_instead_of_waiting_for_it(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a grace period far longer than the test allows, only cancelling the engine explains a quick exit."""
    app = create_app(BASE, world["root"], world["adapters_root"], _settings())
    server = Server(app, grace_s=120)
    with server:
        engine = _service(server).engine
        _slow_decode(engine, monkeypatch, delay_s=0.1)  # 400 tokens: 40 s, unless cut
        url = server.url + "/v1/chat/completions"
        streamed: list[str] = []
        plain: list[httpx.Response] = []
        body = {"model": FT, "messages": MSGS, **LONG}
        workers = [
            threading.Thread(target=_stream_lines, args=(url, {**body, "stream": True}, streamed)),
            threading.Thread(target=lambda: plain.append(httpx.post(url, json={**body, "model": BASE}, timeout=60))),
        ]  # no key: "anonymous", the stream has its own (the per-key limit is 1)
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + ANSWER_S
        while engine.load().active_sequences < 2:
            assert time.monotonic() < deadline, "requests never started decoding"
            time.sleep(0.05)
        took = server.stop(timeout=60)
        for worker in workers:
            worker.join(timeout=30)
    assert took < 20, f"shutdown took {took:.1f}s"
    assert plain and plain[0].status_code == 503 and plain[0].json()["error"]["code"] == "service_unavailable"
    last = json.loads(streamed[-1][len("data: ") :])
    assert last["error"]["code"] == "service_unavailable", streamed[-3:]
    load = engine.load()
    assert load.active_sequences == load.pending_requests == load.pinned_adapters == load.kv_rows == 0
    assert engine.closed


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_") or k.startswith("TUNEFORGE_TEST")}
    return {**env, "TUNEFORGE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **extra}


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "inference process did not start"
        time.sleep(0.2)


def test_tuneforge_inference_exits_on_one_sigterm_with_requests_in_flight(world: dict[str, Path]) -> None:
    port = free_port()
    log = world["root"] / "inference-sigterm.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "tuneforge", "inference", "--base-model", str(world["base"]), "--port", str(port)],
        env=_env(world["root"], TUNEFORGE_GRACEFUL_SHUTDOWN_S="3"),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    clients: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, process, log)
        # The inference port caps bodies like the API, whatever their content-type, and never echoes them.
        oversized = httpx.post(f"{url}/v1/chat/completions", content=b"x" * (5 * 1024 * 1024), timeout=60)
        assert oversized.status_code == 413 and "xxxx" not in oversized.text, oversized.text[:200]
        clients = open_stuck_requests(port, {"model": str(world["base"]), "messages": MSGS, **LONG})
        time.sleep(1.0)  # let them reach the engine
        took = sigterm_once(process)
    finally:
        for sock in clients:
            sock.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    assert took < 20, log.read_text()[-3000:]


def test_serve_cli_refuses_a_public_address_without_the_service_key(world: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serve", "--base-model", BASE, "--data-dir", str(world["root"]), "--host", "0.0.0.0"],
        env=_env(world["root"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "refusing to listen on 0.0.0.0" in result.stderr, result.stderr
