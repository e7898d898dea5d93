"""Checkpoint directories that earlier runs of a job left on disk, deleted once the job no longer keeps them.

The engine prunes only its own run's folder; the job's retention (newest n_checkpoints over all runs, plus the
best) is decided in the database (jobs_run.record_checkpoint), and this removes what it let go.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger("tuneforge.worker")


def prune_earlier_runs(job_dir: Path, current_run: Path, kept: list[str]) -> list[Path]:
    """Delete every checkpoint dir (sealed or half-written) of the job's other runs that is not kept."""
    keep = {Path(p).resolve() for p in kept}
    current = current_run.resolve()
    removed: list[Path] = []
    for run in sorted(job_dir.glob("run-*")):
        if run.resolve() == current:
            continue  # the live engine prunes its own folder
        for ckpt in sorted((run / "output" / "checkpoints").glob("*step-*")):
            if ckpt.is_dir() and ckpt.resolve() not in keep:
                shutil.rmtree(ckpt, ignore_errors=True)
                removed.append(ckpt)
    if removed:
        log.info("retention: removed %d checkpoint(s) of earlier runs of %s", len(removed), job_dir.name)
    return removed
