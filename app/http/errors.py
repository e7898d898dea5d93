"""Map every error to OpenAI's envelope {"error": {message, type, param, code}} with the fitting status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import RateLimited, TuneForgeError

log = logging.getLogger("tuneforge.http")

_STATUS_TYPES = {401: "invalid_request_error", 404: "invalid_request_error", 405: "invalid_request_error"}


def envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def request_id_of(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def _param_from_loc(loc: Any) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form")]
    return ".".join(parts) or None


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TuneForgeError)
    headers = {"x-request-id": request_id_of(request)}
    if isinstance(exc, RateLimited):
        headers["retry-after"] = f"{exc.retry_after:g}"
    return JSONResponse(
        envelope(exc.message, exc.error_type, exc.param, exc.code),
        status_code=exc.status_code,
        headers=headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "Invalid request"}
    param = _param_from_loc(first.get("loc", ()))
    message = f"{first.get('msg', 'Invalid value')}" + (f" - '{param}'" if param else "")
    return JSONResponse(
        envelope(message, "invalid_request_error", param, "invalid_value"),
        status_code=400,
        headers={"x-request-id": request_id_of(request)},
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
    return JSONResponse(
        envelope(message, _STATUS_TYPES.get(exc.status_code, "invalid_request_error"), None, None),
        status_code=exc.status_code,
        headers={"x-request-id": request_id_of(request), **(exc.headers or {})},
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
    app.add_exception_handler(Exception, _unexpected_error)
