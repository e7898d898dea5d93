"""Body caps and timeouts on a real server: flat memory whatever the content-type, stalled bodies are dropped."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.datasets import chat_jsonl
from tests.conftest import Server, start_server

MiB = 1024 * 1024
BODY = 96 * MiB
LEAN = {"TUNEFORGE_EMBEDDED_WORKER": "false", "TUNEFORGE_EMBEDDED_INFERENCE": "false"}
B = "tfboundary"
IDLE_S = 2.0  # ten times the trickle interval below, so a loaded machine does not fire it early


@pytest.fixture(scope="module")
def lean_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # Drain budget above the body size, so every refusal is a clean 413 the client reads (no reset mid-send).
    handle = start_server(
        tmp_path_factory.mktemp("lean"), {**LEAN, "TUNEFORGE_UPLOAD_DRAIN_BYTES": str(128 * MiB)}, seed_model=False
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handle = start_server(
        tmp_path_factory.mktemp("impatient"),
        {**LEAN, "TUNEFORGE_BODY_IDLE_TIMEOUT_S": str(IDLE_S), "TUNEFORGE_BODY_READ_TIMEOUT_S": "4"},
        seed_model=False,
    )
    yield handle
    handle.stop()


def _stream(prefix: bytes, size: int, suffix: bytes = b"") -> Iterator[bytes]:
    yield prefix
    block = b"a" * MiB
    for _ in range(size // MiB):
        yield block
    yield suffix


def _oversize_requests(key: str) -> dict[str, dict[str, object]]:
    auth = {"authorization": f"Bearer {key}"}
    json_body = b'{"model": "' + b"a" * BODY + b'"}'
    field = (
        f'--{B}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'.encode(),
        f"\r\n--{B}--\r\n".encode(),
    )
    return {
        "json, declared length": {"url": "/v1/fine_tuning/jobs", "headers": auth, "content": json_body},
        "json, chunked": {
            "url": "/v1/fine_tuning/jobs",
            "headers": {**auth, "content-type": "application/json"},
            "content": _stream(b'{"model": "', BODY, b'"}'),
        },
        "text/plain, declared length": {
            "url": "/v1/fine_tuning/jobs",
            "headers": {**auth, "content-type": "text/plain"},
            "content": json_body,
        },
        "no content-type, chunked, chat": {
            "url": "/v1/chat/completions",
            "headers": auth,
            "content": _stream(b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "', BODY, b'"}]}'),
        },
        "multipart text field, chunked": {
            "url": "/v1/files",
            "headers": {**auth, "content-type": f"multipart/form-data; boundary={B}"},
            "content": _stream(field[0], BODY, field[1]),
        },
    }


def test_oversize_bodies_of_every_kind_are_413_with_flat_memory_and_no_echo(lean_server: Server) -> None:
    key = lean_server.key("alpha")
    auth = {"authorization": f"Bearer {key}"}
    with httpx.Client(base_url=lean_server.base_url, timeout=120) as client:
        # Warm up every route once, so the baseline already holds what a first request loads.
        warm = client.post(
            "/v1/files", headers=auth, data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", chat_jsonl())}
        )
        assert warm.status_code == 200
        client.post("/v1/fine_tuning/jobs", headers=auth, json={"model": "tiny-chat"})
        client.post("/v1/chat/completions", headers=auth, json={"model": "tiny-chat", "messages": []})
        baseline_kib = lean_server.peak_rss_kib()
        for name, request in _oversize_requests(key).items():
            response = client.post(**request)  # type: ignore[arg-type]
            assert response.status_code == 413, f"{name}: {response.status_code} {response.text[:200]}"
            assert response.json()["error"]["code"] == "payload_too_large", name
            assert len(response.content) < 1024 and "aaaaaaaaaaaaaaaa" not in response.text, name
            growth_mib = (lean_server.peak_rss_kib() - baseline_kib) / 1024
            assert growth_mib < 32, f"{name}: server peak RSS grew {growth_mib:.0f} MiB for a 96 MiB body"
        # The connection is still good for the next request (the refused bodies were drained, not reset).
        assert client.get("/v1/files", headers=auth).status_code == 200


def _connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=15)
    return sock


def _request_head(path: str, key: str, content_type: str, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket timeout: the test fails)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _temp_files(server: Server) -> list[Path]:
    return list((server.data_dir / "blobs" / "incoming").glob("*"))


def _open_fds(server: Server) -> int:
    """Sockets and upload temp files the server holds open (database files come and go with its pool)."""
    folder = f"/proc/{server.process.pid}/fd"
    held = 0
    for name in os.listdir(folder):
        try:
            target = os.readlink(f"{folder}/{name}")
        except OSError:
            continue
        held += target.startswith("socket:") or target.endswith(".part")
    return held


def test_stalled_uploads_are_dropped_with_a_408_and_leave_no_temp_file(impatient_server: Server) -> None:
    key = impatient_server.key("alpha")
    fds_before = _open_fds(impatient_server)
    opening = (
        f'--{B}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{B}\r\nContent-Disposition: form-data; name="file"; filename="s.jsonl"\r\n\r\n{{"messages": '
    ).encode()
    head = _request_head("/v1/files", key, f"multipart/form-data; boundary={B}", 64 * MiB)  # within the cap
    sockets = [_connect(impatient_server) for _ in range(20)]
    for sock in sockets:
        sock.sendall(head + opening)
    # Trickle a byte each 0.2 s (under the idle timeout) until every upload holds its temp file:
    # data that keeps coming keeps an upload alive.
    deadline = time.monotonic() + 30
    while len(_temp_files(impatient_server)) < len(sockets):
        assert time.monotonic() < deadline, f"only {len(_temp_files(impatient_server))} uploads started"
        for sock in sockets:
            sock.sendall(b" ")
        time.sleep(0.2)
    stalled_at = time.monotonic()
    for sock in sockets:  # now every client stalls
        answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer and b"connection: close" in answer.lower()
        sock.close()
    assert time.monotonic() - stalled_at >= IDLE_S * 0.9
    assert _temp_files(impatient_server) == []
    time.sleep(0.5)
    assert _open_fds(impatient_server) <= fds_before + 1  # released: not two descriptors held per stalled client


def test_stalled_and_slow_json_bodies_are_408(impatient_server: Server) -> None:
    key = impatient_server.key("alpha")
    stalled = _connect(impatient_server)
    stalled.sendall(_request_head("/v1/fine_tuning/jobs", key, "application/json", 1000) + b'{"model": ')
    slow = _connect(impatient_server)  # never idle, but the whole body takes longer than the read timeout
    slow.sendall(_request_head("/v1/chat/completions", key, "application/json", 1000) + b'{"model": ')
    started = time.monotonic()
    while time.monotonic() - started < 6:
        try:
            slow.sendall(b" ")
        except OSError:
            break  # answered and closed
        time.sleep(0.2)
    for sock in (stalled, slow):
        answer = _read_until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        sock.close()


def test_a_malformed_upload_is_a_400_and_the_connection_stays_usable(impatient_server: Server) -> None:
    key = impatient_server.key("alpha")
    body = (
        f'--{B}\r\nContent-Disposition form-data; name="file"\r\n\r\n'.encode()
        + b"x" * MiB
        + f"\r\n--{B}--\r\n".encode()
    )
    sock = _connect(impatient_server)
    sock.sendall(_request_head("/v1/files", key, f"multipart/form-data; boundary={B}", len(body)) + body)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
    answers = _read_until_closed(sock)
    sock.close()
    assert answers.startswith(b"HTTP/1.1 400"), answers[:300]
    assert b"invalid_request_error" in answers and b"HTTP/1.1 200" in answers  # the second request was served
