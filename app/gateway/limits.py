"""The gateway's per-key limit is the shared one (app.core.limits); this name stays for existing imports."""

from __future__ import annotations

from app.core.limits import KeyLimiter as KeyConcurrency

__all__ = ["KeyConcurrency"]
