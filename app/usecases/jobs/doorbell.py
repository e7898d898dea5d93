"""The doorbell: a Celery message that only says "job X may be runnable". Rung after commit, never inside.

Losing it is harmless (the reaper rings again for jobs left queued); duplicates are harmless (the claim is a
conditional UPDATE).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from celery import Celery

from app.core.queue import JOBS_QUEUE, celery_config
from app.core.settings import Settings

RUN_JOB_TASK = "tuneforge.run_job"
log = logging.getLogger("tuneforge.doorbell")


def celery_app_config(settings: Settings) -> dict[str, Any]:
    """celery_config plus what producers and workers of jobs both need."""
    config = celery_config(settings)
    options = dict(config["broker_transport_options"])
    if settings.is_embedded_queue:
        options["polling_interval"] = 0.1  # filesystem transport: poll the folder often, it is cheap
    config.update(
        broker_transport_options=options,
        broker_connection_timeout=2,
        task_routes={RUN_JOB_TASK: {"queue": JOBS_QUEUE}},
        task_create_missing_queues=True,
    )
    return config


class Doorbell:
    """Sends run-job messages; failures are logged, never raised (the job is committed either way)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._app: Celery | None = None
        self._lock = threading.Lock()

    def _celery(self) -> Celery:
        with self._lock:
            if self._app is None:
                app = Celery("tuneforge-producer")
                app.conf.update(celery_app_config(self._settings))
                self._app = app
            return self._app

    def ring(self, job_ids: Iterable[str], queue: str = JOBS_QUEUE) -> int:
        """Send one message per job id; returns how many were handed to the broker."""
        sent = 0
        for job_id in job_ids:
            try:
                self._celery().send_task(
                    RUN_JOB_TASK,
                    args=[job_id],
                    queue=queue,
                    retry=True,
                    retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
                )
                sent += 1
            except Exception as exc:  # broker down: the reaper rings again later
                log.warning("doorbell for %s not sent (%s); the reaper will re-send it", job_id, exc)
        return sent
