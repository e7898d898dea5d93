"""Pause/cancel requests from the parent: control files in a directory and signals.

The run polls at each step boundary. Inside a phase marked with `allow(...)` (model loading, evaluation, a
long step) a request of an allowed kind raises `Interrupted` in the main thread at once, the way Ctrl-C raises
KeyboardInterrupt, except while a `shield()` is up (an event or checkpoint being written): then it is raised
as the shield comes down. A watcher thread turns control files into the same interruption, so a request
that comes as a file only (pause) is noticed between steps too.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Literal

Request = Literal["pause", "cancel"]
_SIGNALS: dict[Request, signal.Signals] = {"pause": signal.SIGUSR1, "cancel": signal.SIGTERM}
WATCH_SECONDS = 0.2


class Interrupted(BaseException):
    """A request that arrived during a phase that allows it.

    A BaseException like KeyboardInterrupt, so library code that catches Exception cannot swallow it.
    """

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.request: Request = request


class Control:
    """Collects pause/cancel requests; cancel wins over pause."""

    def __init__(self, control_dir: str | Path | None = None) -> None:
        self.control_dir = Path(control_dir) if control_dir is not None else None
        self._pause = False
        self._cancel = False
        self._allowed: frozenset[Request] = frozenset()
        self._interrupts = False  # only once handlers are installed can a request interrupt the main thread
        self._raised = False
        self._notified: set[Request] = set()

    def request_pause(self) -> None:
        """Ask the run to checkpoint and stop at the next step boundary."""
        self._pause = True

    def request_cancel(self) -> None:
        """Ask the run to stop at the next step boundary without writing anything."""
        self._cancel = True

    def _read_files(self) -> None:
        if self.control_dir is not None:
            if (self.control_dir / "cancel").exists():
                self._cancel = True
            if (self.control_dir / "pause").exists():
                self._pause = True

    def _flags(self) -> Request | None:
        if self._cancel:
            return "cancel"
        if self._pause:
            return "pause"
        return None

    def poll(self) -> Request | None:
        """The pending request, if any (flags set by signals or files present in the control dir)."""
        self._read_files()
        return self._flags()

    def _due(self) -> Request | None:
        """The pending request that may interrupt right now (cancel first), if any."""
        if self._raised:
            return None
        pending_requests: tuple[tuple[Request, bool], ...] = (("cancel", self._cancel), ("pause", self._pause))
        for request, pending in pending_requests:
            if pending and request in self._allowed:
                return request
        return None

    def _raise_if_due(self) -> None:
        request = self._due()
        if request is not None:
            self._raised = True  # one interruption per run: the run is ending
            raise Interrupted(request)

    @contextmanager
    def allow(self, *kinds: Request) -> Iterator[None]:
        """Within the block, a request of these kinds raises Interrupted at once (once handlers are installed)."""
        previous = self._allowed
        if self._interrupts:
            self._allowed = previous | frozenset(kinds)
        try:
            self._read_files()
            self._raise_if_due()
            yield
        finally:
            self._allowed = previous

    @contextmanager
    def shield(self) -> Iterator[None]:
        """Within the block nothing interrupts; a request that arrived meanwhile is raised when it ends."""
        previous = self._allowed
        self._allowed = frozenset()
        try:
            yield
        finally:
            self._allowed = previous
        self._raise_if_due()

    def _on_signal(self, request: Request) -> None:
        """Runs in the main thread (Python signal handlers always do)."""
        if request == "cancel":
            self._cancel = True
        else:
            self._pause = True
        self._raise_if_due()

    def _watch(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            self._read_files()
            request = self._due()
            if request is not None and request not in self._notified:
                self._notified.add(request)
                # The handler re-checks in the main thread, so a phase that ended meanwhile is not interrupted.
                _thread.interrupt_main(_SIGNALS[request])

    def install_signal_handlers(self) -> None:
        """SIGUSR1 = pause, SIGTERM/SIGINT = cancel (main thread only); a daemon thread watches the control dir."""

        def _pause(_s: int, _f: FrameType | None) -> None:
            self._on_signal("pause")

        def _cancel(_s: int, _f: FrameType | None) -> None:
            self._on_signal("cancel")

        signal.signal(signal.SIGUSR1, _pause)
        signal.signal(signal.SIGTERM, _cancel)
        signal.signal(signal.SIGINT, _cancel)
        self._interrupts = True
        if self.control_dir is not None:
            threading.Thread(target=self._watch, name="control-watch", daemon=True).start()
