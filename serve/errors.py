"""How the inference process answers errors: app.core.errors' classes, in OpenAI's envelope."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.asgi import error_response
from app.core.errors import InvalidRequest, ServerError, TuneForgeError, Unavailable, invalid_fields
from engine.inference.types import EngineError, EngineShutdown

log = logging.getLogger(__name__)


def engine_error(exc: EngineError) -> TuneForgeError:
    """The answer to an engine failure (engine messages name models, never paths)."""
    if isinstance(exc, EngineShutdown):
        return Unavailable("The inference server is shutting down; retry shortly.", retry_after=1)
    return ServerError(str(exc), code="engine_error")


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves this app in the OpenAI envelope, validation errors as a 400 naming the field."""

    @app.exception_handler(TuneForgeError)
    async def _domain(_: Request, exc: TuneForgeError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(invalid_fields(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error: TuneForgeError = InvalidRequest(str(exc.detail))
        if exc.status_code >= 500:
            error = ServerError(str(exc.detail))
        error.status_code = exc.status_code  # the instance's status: 404 for an unknown path, 405 for a method
        return error_response(error, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # the exception text may name server paths or internals: it goes to the log only
        log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(ServerError("The inference server failed to handle this request."))
