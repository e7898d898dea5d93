"""Pause/cancel requests from the parent: control files in a directory and signals, polled once per step."""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Literal

Request = Literal["pause", "cancel"]


class Control:
    """Collects pause/cancel requests; cancel wins over pause."""

    def __init__(self, control_dir: str | Path | None = None) -> None:
        self.control_dir = Path(control_dir) if control_dir is not None else None
        self._pause = False
        self._cancel = False

    def request_pause(self) -> None:
        """Ask the run to checkpoint and stop at the next step boundary."""
        self._pause = True

    def request_cancel(self) -> None:
        """Ask the run to stop at the next step boundary without writing anything."""
        self._cancel = True

    def poll(self) -> Request | None:
        """The pending request, if any (flags set by signals or files present in the control dir)."""
        if self.control_dir is not None:
            if (self.control_dir / "cancel").exists():
                self._cancel = True
            if (self.control_dir / "pause").exists():
                self._pause = True
        if self._cancel:
            return "cancel"
        if self._pause:
            return "pause"
        return None

    def install_signal_handlers(self) -> None:
        """SIGUSR1 = pause, SIGTERM/SIGINT = cancel (main thread only)."""

        def _pause(_s: int, _f: FrameType | None) -> None:
            self.request_pause()

        def _cancel(_s: int, _f: FrameType | None) -> None:
            self.request_cancel()

        signal.signal(signal.SIGUSR1, _pause)
        signal.signal(signal.SIGTERM, _cancel)
        signal.signal(signal.SIGINT, _cancel)
