"""Pure-ASGI middleware (no body buffering): request ids, and a size and time bound on every request body."""

from __future__ import annotations

import json
import secrets

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.body_guard import BodyGuard, BodyLimits, BodyRefused, Refusal


class RequestIdMiddleware:
    """Give every request an id, echo it in `x-request-id`, keep it in scope state for logs and 500s."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Bound every request body by size and by time while it streams, whatever its headers say.

    Uploads (POST /v1/files) get the upload cap, every other body the JSON cap, content-type or not; chunked
    bodies carry no Content-Length, so the count is kept in the receive path. A refused body is answered by
    this middleware (413 or 408), never by the route, so no handler can echo it or turn it into a 500.
    """

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        guard = BodyGuard(scope, receive, self.limits)
        if guard.declared_too_large():
            await _answer(scope, send, guard, guard.refuse_declared())
            return
        started = False

        async def gated_send(message: Message) -> None:
            nonlocal started
            if guard.refusal is not None:
                return  # the route answered a body we refused (e.g. FastAPI's 400 for a failed read): drop it
            if message["type"] == "http.response.start" and not started:
                started = True
                # Read the unread rest first: a client still sending would get a reset instead of this answer.
                if not await guard.drain():
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, guard.receive, gated_send)
        except BodyRefused:
            pass  # answered below
        except ClientDisconnect:
            if not guard.disconnected:
                raise
            return  # the client left mid-body: nobody to answer, and not a server error
        except Exception:
            if guard.refusal is None:
                raise
            # The route failed while its body was being refused (e.g. FastAPI wrapped our error): answered below.
        if guard.refusal is not None and not started:
            await _answer(scope, send, guard, guard.refusal)


async def _answer(scope: Scope, send: Send, guard: BodyGuard, refusal: Refusal) -> None:
    """Send the refusal in OpenAI's envelope; close the connection unless the whole body was read."""
    if guard.disconnected:
        return
    fully_read = await guard.drain() if refusal.status == 413 else False
    body = {"error": {"message": refusal.message, "type": "invalid_request_error", "param": None, "code": refusal.code}}
    request_id = str(scope.get("state", {}).get("request_id", ""))
    headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
    if not fully_read:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})
