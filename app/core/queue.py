"""Celery wiring shared by the API (sends doorbells) and the worker (consumes them).

Celery is only a doorbell: a message may be lost, duplicated or late; the database holds the state.
"""

from __future__ import annotations

from typing import Any

from kombu.connection import Connection

from app.core.settings import Settings

JOBS_QUEUE = "tuneforge.jobs"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.is_embedded_queue:
        folder = settings.queue_dir
        for sub in ("in", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        # One folder for both directions: producer and consumer see the same messages.
        return {
            "data_folder_in": str(folder / "in"),
            "data_folder_out": str(folder / "in"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # kombu's exchange tables; its default is a `control/` folder in the working directory
            "control_folder": str(folder / "control"),
        }
    return {"visibility_timeout": 3600}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Early ack, prefetch 1: a crashed worker's job is recovered by the lease reaper, not by redelivery."""
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": broker_transport_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": JOBS_QUEUE,
        "task_acks_late": False,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "result_backend": None,
        "worker_hijack_root_logger": False,
    }


def broker_reachable(settings: Settings, timeout: float = 2.0) -> bool:
    """Readiness probe: can we open a connection to the broker right now?"""
    try:
        with Connection(  # type: ignore[no-untyped-call]  # reason: kombu ships py.typed but leaves __init__ bare
            settings.resolved_broker_url,
            transport_options=broker_transport_options(settings),
            connect_timeout=timeout,
        ) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            if not settings.is_embedded_queue:
                conn.default_channel.client.ping()
        return True
    except Exception:
        return False
