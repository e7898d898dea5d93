"""The receive side of one request: counts and times its body, refuses it past a cap or a stall, drains the rest."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from starlette.types import Message, Receive, Scope

from app.core.settings import Settings

UPLOAD_ROUTES = frozenset({("POST", "/v1/files"), ("POST", "/v1/models")})  # models: adapter archives


@dataclass(frozen=True)
class BodyLimits:
    """Caps and timeouts for request bodies, from settings."""

    max_bytes: int  # every body except an upload
    max_upload_bytes: int  # the whole multipart body of an upload
    drain_bytes: int
    idle_timeout_s: float
    read_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BodyLimits:
        # The form around the file (text fields, part headers, boundaries) may add this much to the file itself;
        # the upload route enforces the file cap exactly, this is the backstop for the body as a whole.
        form_overhead = settings.max_form_fields_total_bytes + settings.max_form_parts * (
            settings.max_part_header_bytes + 1024
        )
        return cls(
            max_bytes=settings.max_json_body_bytes,
            max_upload_bytes=settings.max_upload_bytes + form_overhead,
            drain_bytes=settings.upload_drain_bytes,
            idle_timeout_s=settings.body_idle_timeout_s,
            read_timeout_s=settings.body_read_timeout_s,
        )


@dataclass(frozen=True)
class Refusal:
    """How a refused body is answered."""

    status: int
    message: str
    code: str


class BodyRefused(Exception):
    """Raised from receive once a body is refused; the middleware answers it."""


class BodyGuard:
    """Wraps one request's receive: every chunk is counted against the cap and awaited under the timeouts."""

    def __init__(self, scope: Scope, receive: Receive, limits: BodyLimits) -> None:
        self._receive = receive
        self._limits = limits
        upload = (scope.get("method"), scope.get("path")) in UPLOAD_ROUTES
        self.cap = limits.max_upload_bytes if upload else limits.max_bytes
        # Uploads may legitimately take long; only stalls end them. Other bodies must also arrive in time.
        self._deadline = None if upload else anyio.current_time() + limits.read_timeout_s
        headers = {bytes(k).lower(): bytes(v) for k, v in scope.get("headers", [])}
        self.declared = _int_or_none(headers.get(b"content-length"))
        self._expects_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        self.done = b"transfer-encoding" not in headers and not self.declared
        self.received = 0
        self.disconnected = False
        self.refusal: Refusal | None = None

    def declared_too_large(self) -> bool:
        return self.declared is not None and self.declared > self.cap

    def refuse_declared(self) -> Refusal:
        self.refusal = self._too_large()
        return self.refusal

    async def receive(self) -> Message:
        """The app's receive: pass-through once the body is complete (disconnect listeners wait here)."""
        if self.refusal is not None:
            raise BodyRefused()
        if self.done:
            return await self._receive()
        message = await self._read(self._deadline)
        if message is None:
            self.refusal = self._timed_out()
            raise BodyRefused()
        if self.received > self.cap:
            self.refusal = self._too_large()
            raise BodyRefused()
        return message

    async def drain(self) -> bool:
        """Read and drop the unread rest of the body within the drain budget; True when the body was read whole."""
        if self.done:
            return not self.disconnected
        if self._expects_continue and self.received == 0:
            return False  # the client waits for `100 Continue`; reading would invite the body we are refusing
        budget = self.received + self._limits.drain_bytes
        if self.declared is not None and self.declared > budget:
            return False  # it would be cut off anyway: reading up to the budget first buys the client nothing
        deadline = anyio.current_time() + self._limits.read_timeout_s
        while not self.done:
            if self.received > budget or await self._read(deadline) is None:
                return False
        return not self.disconnected

    async def _read(self, deadline: float | None) -> Message | None:
        """The next message, or None when the idle timeout or the deadline passes first."""
        timeout = self._limits.idle_timeout_s
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - anyio.current_time()))
        with anyio.move_on_after(timeout):
            message = await self._receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                self.done = not message.get("more_body", False)
            elif message["type"] == "http.disconnect":
                self.done = self.disconnected = True
            return message
        return None

    def _timed_out(self) -> Refusal:
        if self._deadline is not None and anyio.current_time() >= self._deadline:
            why = f"the whole body must arrive within {self._limits.read_timeout_s:g} s"
        else:
            why = f"no data came for {self._limits.idle_timeout_s:g} s"
        return Refusal(408, f"The request body was not received in time: {why}.", "request_timeout")

    def _too_large(self) -> Refusal:
        return Refusal(413, f"Request body exceeds the limit of {self.cap} bytes.", "payload_too_large")


def _int_or_none(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
