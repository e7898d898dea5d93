"""Ride out a database outage inside a run: retry a write until the run's own lease would have expired."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as db_errors

from app.usecases.jobs.run import LeaseLost

log = logging.getLogger("tuneforge.worker")
T = TypeVar("T")

# Refused or dropped connections, connections closed under us, no pooled connection in time.
OUTAGE_ERRORS = (db_errors.OperationalError, db_errors.InterfaceError, db_errors.TimeoutError)


def retry_through_outage(write: Callable[[], T], lease_deadline: Callable[[], float], what: str) -> T:
    """Run `write`, retrying while the database is unreachable and this run may still own the job.

    Dropping the write instead would lose a checkpoint row or a result, and failing the run would make the
    job run twice; past the lease the reaper may have handed the job on, so the run must stop (LeaseLost).
    """
    pause = 0.2
    while True:
        try:
            return write()
        except OUTAGE_ERRORS as exc:
            if time.monotonic() > lease_deadline():
                raise LeaseLost(f"the database stayed unreachable past the lease ({what})") from exc
            log.warning("%s: database unreachable (%s); retrying in %.1fs", what, type(exc).__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)
