"""The reaper loop: a thread in each worker, or its own process (`tuneforge reaper`)."""

from __future__ import annotations

import logging
import threading
import time

from app.usecases.jobs.reaper import sweep_once
from worker.runtime import Runtime

log = logging.getLogger("tuneforge.reaper")


def reap_forever(rt: Runtime, stop: threading.Event) -> None:
    """Sweep every `reaper_seconds` until stopped; a failed sweep is logged and retried next period.

    After the database was unreachable, leases are left alone for two heartbeat periods: live runs could
    not renew them during the outage and must get the chance to before anyone calls them lost.
    """
    settings = rt.settings
    # The database may be back any time before the next sweep; a run's heartbeat then comes within one period,
    # or two when its first try was still stuck connecting (up to database_timeout_s) as the database returned.
    hold = settings.reaper_seconds + 2 * settings.heartbeat_seconds + settings.database_timeout_s
    hold_until = 0.0
    while not stop.wait(settings.reaper_seconds):
        try:
            sweep = sweep_once(rt.db, settings, rt.storage, rt.doorbell, reap_leases=time.monotonic() >= hold_until)
        except Exception:
            log.exception("reaper sweep failed")
            hold_until = time.monotonic() + hold
            continue
        if sweep.requeued or sweep.ended or sweep.validated:
            log.info("reaper: requeued=%s ended=%s validated=%s", sweep.requeued, sweep.ended, sweep.validated)
        if sweep.rung:
            log.debug("reaper: doorbell re-sent for %s", sweep.rung)


def start_reaper_thread(rt: Runtime) -> threading.Event:
    stop = threading.Event()
    threading.Thread(target=reap_forever, args=(rt, stop), name="reaper", daemon=True).start()
    return stop
