"""The Celery application of job workers: early ack, prefetch 1, one task that runs one job."""

from __future__ import annotations

import faulthandler
import logging
import signal

from celery import Celery

from app.core.settings import get_settings
from app.usecases.jobs.doorbell import RUN_JOB_TASK, celery_app_config
from worker.runtime import runtime
from worker.supervise import run_job

log = logging.getLogger("tuneforge.worker")

# `kill -USR2 <worker pid>` prints every thread's stack to stderr: where is a run stuck?
faulthandler.register(signal.SIGUSR2, all_threads=True)

app = Celery("tuneforge")
app.conf.update(celery_app_config(get_settings()))


@app.task(name=RUN_JOB_TASK, ignore_result=True)  # type: ignore[untyped-decorator]  # celery ships no types
def run_job_task(job_id: str) -> str:
    """Doorbell handler: the claim inside decides whether this message runs anything."""
    return run_job(runtime(), job_id)
