"""The training child process: `python -m engine train SPEC --control-dir DIR`, dying with its parent."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue

from engine.events import EngineEvent, EventError, parse_event

_PR_SET_PDEATHSIG = 1
log = logging.getLogger("tuneforge.worker")


def die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the supervising thread's process dies (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def engine_command(configured: str) -> list[str]:
    return shlex.split(configured) if configured else [sys.executable, "-m", "engine"]


class TrainingChild:
    """One engine process; its stdout events are read on a thread into a queue."""

    def __init__(self, command: list[str], spec_path: Path, control_dir: Path, log_path: Path) -> None:
        self.control_dir = control_dir
        control_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115  (closed in wait)
        self.process = subprocess.Popen(
            [*command, "train", str(spec_path), "--control-dir", str(control_dir)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509  (no threads touch the child before exec)
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.events: Queue[EngineEvent | None] = Queue()
        self._reader = threading.Thread(target=self._read, name=f"engine-{self.process.pid}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                self.events.put(parse_event(line))
            except EventError as err:  # the contract says stdout is events only: note anything else, go on
                log.warning("engine %s wrote a line that is no event (%s)", self.process.pid, err)
        self.events.put(None)  # end of stream

    def next_events(self, timeout: float) -> Iterator[EngineEvent | None]:
        """Events that arrive within `timeout` (None marks the end of the stream)."""
        try:
            yield self.events.get(timeout=timeout)
        except Empty:
            return
        while True:
            try:
                yield self.events.get_nowait()
            except Empty:
                return

    def request(self, what: str) -> None:
        """Ask for pause or cancel through a control file the engine polls every step.

        Cancel also sends SIGTERM (its default action ends a child still importing, which is what cancel
        wants); pause sends no signal, since SIGUSR1 would kill a child that has not installed its handler yet.
        """
        (self.control_dir / what).touch()
        if what == "cancel":
            self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    def exited(self, timeout: float) -> bool:
        """Whether the process has ended, waiting at most `timeout` seconds for it."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def wait(self) -> int:
        code = self.process.wait()
        self._reader.join(timeout=10)
        self._log.close()
        return code
