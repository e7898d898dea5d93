"""Per-process objects the handlers share, built once by create_app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from app.core.settings import Settings
from app.core.storage import BlobStore
from app.db.session import Database
from app.gateway.backends import BackendRegistry
from app.gateway.limits import KeyConcurrency


@dataclass
class AppState:
    settings: Settings
    db: Database
    storage: BlobStore
    backends: BackendRegistry
    inference_limits: KeyConcurrency
    # Extra readiness probes (e.g. the queue); each returns (name, ok).
    ready_checks: list[Callable[[], tuple[str, bool]]] = field(default_factory=list)
