"""Run an ASGI app under uvicorn so that one SIGTERM stops it: generation is cut first, then a bounded drain."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn

log = logging.getLogger(__name__)
DEFAULT_GRACE_S = 10.0


class GracefulServer(uvicorn.Server):
    """uvicorn's server, running before_shutdown hooks as soon as shutdown starts."""

    # uvicorn alone waits for every open request before it exits: a stream of a long answer, a request queued in
    # the engine, a client that stopped reading, a body never finished. The hooks end generation (requests get a
    # 503 or an error event), and timeout_graceful_shutdown cancels whatever is still open after the grace period.

    def __init__(self, config: uvicorn.Config, before_shutdown: Sequence[Callable[[], None]] = ()) -> None:
        super().__init__(config)
        self.before_shutdown = list(before_shutdown)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for hook in self.before_shutdown:
            try:
                await asyncio.to_thread(hook)  # off the loop: it joins the engine thread, which posts to this loop
            except Exception:
                log.exception("shutdown hook failed")
        await super().shutdown(sockets)


def server_for(
    app: Any,
    host: str,
    port: int,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    before_shutdown: Sequence[Callable[[], None]] = (),
    log_level: str = "info",
) -> GracefulServer:
    """A server for app whose shutdown runs the hooks, then waits at most grace_s for open requests."""
    grace = math.ceil(grace_s)  # uvicorn takes whole seconds
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
    return GracefulServer(config, before_shutdown)


def hooks_of(app: Any) -> list[Callable[[], None]]:
    """The app's own shutdown hook (serve.app sets app.state.before_shutdown), if it has one."""
    hook = getattr(getattr(app, "state", None), "before_shutdown", None)
    return [hook] if callable(hook) else []
