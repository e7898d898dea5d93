"""Quieter access log: successful GET/HEAD lines (clients polling jobs and events) are dropped by default.

Errors (status >= 400) and writes (POST, DELETE, ...) are always logged. TUNEFORGE_LOG_POLLING_REQUESTS=true
logs every request, as uvicorn does by default.
"""

from __future__ import annotations

import logging

ACCESS_LOGGER = "uvicorn.access"


class PollingFilter(logging.Filter):
    """Drops uvicorn access records of successful reads; uvicorn's args are (client, method, path, http, status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple) or len(args) < 5:
            return True
        method, status = args[1], args[4]
        if not isinstance(status, int | str):
            return True
        try:
            code = int(status)
        except ValueError:
            return True
        return not (method in ("GET", "HEAD") and code < 400)


def quiet_polling(enabled: bool) -> None:
    """Install (or remove) the filter on uvicorn's access logger; idempotent."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for existing in [f for f in logger.filters if isinstance(f, PollingFilter)]:
        logger.removeFilter(existing)
    if enabled:
        logger.addFilter(PollingFilter())
