"""The per-run metrics CSV (`step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy`)."""

from __future__ import annotations

import csv
from pathlib import Path

HEADER = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


def _cell(v: float | None) -> str:
    return "" if v is None else f"{v:.6g}"


class MetricsCSV:
    """Appends one row per step; on resume, rows after the checkpoint's step are dropped first."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self._kept: list[list[str]] | None = []
        if resume_step is not None and path.is_file():
            with path.open(newline="") as fh:
                self._kept = [r for r in list(csv.reader(fh))[1:] if r and r[0].isdigit() and int(r[0]) <= resume_step]

    def _start(self) -> None:
        # Written on the first row, so a run cancelled before its first step leaves no file behind.
        if self._kept is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(HEADER)
            w.writerows(self._kept)
        self._kept = None

    def write(
        self,
        step: int,
        train_loss: float | None,
        train_accuracy: float | None,
        valid_loss: float | None = None,
        valid_accuracy: float | None = None,
    ) -> None:
        """Append one row; None becomes an empty cell."""
        self._start()
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow(
                [step, _cell(train_loss), _cell(train_accuracy), _cell(valid_loss), _cell(valid_accuracy)]
            )
