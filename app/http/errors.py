"""Map every error to OpenAI's envelope {"error": {message, type, param, code}} with the fitting status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as db_errors
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core.asgi import error_response
from app.core.echo import ID_CHARS, clipped
from app.core.errors import TuneForgeError, envelope, invalid_fields

log = logging.getLogger("tuneforge.http")

_STATUS_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TuneForgeError)
    return error_response(exc, {"x-request-id": request_id_of(request)})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(invalid_fields(exc.errors()), {"x-request-id": request_id_of(request)})


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown request URL: {clipped(request.method)} {clipped(request.url.path, ID_CHARS)}."
    headers = {"x-request-id": request_id_of(request), **(exc.headers or {})}
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; list every method the path takes.
        message = f"Method {request.method} is not allowed for {request.url.path}."
        headers["allow"] = ", ".join(_allowed_methods(request))
        headers.pop("Allow", None)
    return JSONResponse(
        envelope(message, _STATUS_TYPES.get(exc.status_code, "invalid_request_error"), None, None),
        status_code=exc.status_code,
        headers=headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database cannot be reached (outage, restart, pool exhausted): a 503 the client may retry."""
    log.warning("database unavailable in %s %s: %s", request.method, request.url.path, type(exc).__name__)
    retry_after = request.app.state.tuneforge.settings.database_retry_after_s
    return JSONResponse(
        envelope(
            "The service is temporarily unavailable; retry shortly.",
            "server_error",
            None,
            "service_unavailable",
        ),
        status_code=503,
        headers={"x-request-id": request_id_of(request), "retry-after": str(retry_after)},
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    log.exception("unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id)
    headers = {"x-request-id": request_id}
    if request.method not in ("GET", "HEAD"):
        # The SDK retries 5xx; something may already be committed, so never invite a duplicate.
        headers["x-should-retry"] = "false"
    return JSONResponse(
        envelope(
            f"The server had an error while processing your request. Request id: {request_id}.",
            "server_error",
            None,
            "server_error",
        ),
        status_code=500,
        headers=headers,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(TuneForgeError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # OperationalError: refused or dropped connections; InterfaceError: a connection closed under us;
    # TimeoutError: no pooled connection within the database timeout.
    for outage in (db_errors.OperationalError, db_errors.InterfaceError, db_errors.TimeoutError):
        app.add_exception_handler(outage, _database_unavailable)
    app.add_exception_handler(Exception, _unexpected_error)
