"""The job worker of `tuneforge serve`: a child process, restarted if it dies, stopped with serve."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from app.core.settings import Settings
from worker.child import die_with_parent


class EmbeddedWorker:
    """`python -m tuneforge worker` under serve; it dies with serve (parent-death signal)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stopping = threading.Event()
        self.process = self._start()
        threading.Thread(target=self._watch, name="embedded-worker", daemon=True).start()

    def _start(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "tuneforge", "worker", "--concurrency", str(self._settings.worker_concurrency)]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509
        )
        # everything goes to worker.log; the job log's lines also to serve's own output
        log_path = self._settings.data_dir / "worker.log"
        threading.Thread(target=tee_job_log, args=(process, log_path), name="worker-log", daemon=True).start()
        return process

    def _watch(self) -> None:
        while not self._stopping.is_set():
            code = self.process.wait()
            if self._stopping.wait(1.0):
                return
            print(f"embedded worker exited with code {code}; restarting it", file=sys.stderr, flush=True)
            self.process = self._start()

    def stop(self) -> None:
        self._stopping.set()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()  # its runs lose their lease; the next reaper re-queues them
            self.process.wait()


def tee_job_log(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """Copy the worker's output to log_path, and its job-log lines (created, started, ...) to serve's stderr."""
    from app.usecases.job_log import MARKER

    marker = MARKER.encode()
    assert process.stdout is not None
    with open(log_path, "ab") as log:
        for line in iter(process.stdout.readline, b""):
            log.write(line)
            log.flush()
            if marker in line:
                try:
                    sys.stderr.buffer.write(line)
                    sys.stderr.flush()
                except (OSError, ValueError):  # serve's stderr closed: keep draining the pipe
                    pass
