"""Per-process objects of a worker: settings, database, blob store, doorbell."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache

from app.core.settings import Settings, get_settings
from app.core.storage import BlobStore
from app.db.session import Database
from app.usecases.jobs.doorbell import Doorbell


@dataclass
class Runtime:
    settings: Settings
    db: Database
    storage: BlobStore
    doorbell: Doorbell

    def worker_name(self) -> str:
        """Lease owner label: host, pid and thread, so the attempt log says which process ran a run."""
        return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    settings = get_settings()
    return Runtime(
        settings=settings,
        db=Database(settings.resolved_database_url, settings.database_timeout_s),
        storage=BlobStore(settings.resolved_storage_dir),
        doorbell=Doorbell(settings),
    )
