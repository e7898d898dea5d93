"""An inference app under a real uvicorn server in a thread, run as the CLI runs it (serve.runner)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
import time
from typing import Any

import pytest

from serve.runner import hooks_of, server_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """Starts on enter; on exit asks it to stop (as SIGTERM does) and closes an inference app's engine."""

    def __init__(self, app: Any, grace_s: float = 10.0) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = server_for(
            app, "127.0.0.1", self.port, grace_s=grace_s, before_shutdown=hooks_of(app), log_level="warning"
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30) -> float:
        """Ask the server to exit and wait; return how long it took."""
        start = time.monotonic()
        self.server.should_exit = True
        self.thread.join(timeout=timeout)
        return time.monotonic() - start

    def __exit__(self, *exc: object) -> None:
        self.stop()
        service = getattr(getattr(self.app, "state", None), "service", None)  # an inference app: its engine too
        if service is not None:
            service.engine.close()


def _raw_request(port: int, body: dict[str, Any], headers: dict[str, str], *, cut_body: bool = False) -> socket.socket:
    """A client that sends a request and never reads the answer (or never finishes sending the body)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # a small window: the server's writes back up
    sock.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock.sendall(head + (data[: len(data) // 2] if cut_body else data))
    return sock


def open_stuck_requests(port: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[socket.socket]:
    """Requests plain uvicorn waits on forever at shutdown: a half-sent body, a stream nobody reads, a plain one."""
    headers = headers or {}
    return [
        _raw_request(port, body, headers, cut_body=True),
        _raw_request(port, {**body, "stream": True, "n": 8}, headers),
        _raw_request(port, body, headers),
    ]


def sigterm_once(process: subprocess.Popen[bytes], bound_s: float = 20) -> float:
    """Send one SIGTERM and return how long the process took to exit (fails past bound_s)."""
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=bound_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"one SIGTERM did not stop the process within {bound_s}s")
    return time.monotonic() - start
