"""The job worker of `tuneforge serve`: a child process, restarted if it dies, stopped with serve."""

from __future__ import annotations

import subprocess
import sys
import threading

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
        log = open(self._settings.data_dir / "worker.log", "ab")  # noqa: SIM115  (the child owns it)
        command = [sys.executable, "-m", "tuneforge", "worker", "--concurrency", str(self._settings.worker_concurrency)]
        return subprocess.Popen(command, stdout=log, stderr=log, preexec_fn=die_with_parent)  # noqa: PLW1509

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
