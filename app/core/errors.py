"""Domain errors; the HTTP layer maps each to OpenAI's error envelope and status."""

from __future__ import annotations

from app.core.echo import ID_CHARS, clipped


class TuneForgeError(Exception):
    """Base of every error a client may see."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequest(TuneForgeError):
    status_code = 400


class Unauthorized(TuneForgeError):
    status_code = 401
    default_code = "invalid_api_key"


class Forbidden(TuneForgeError):
    status_code = 403


class NotFound(TuneForgeError):
    status_code = 404


class Conflict(TuneForgeError):
    status_code = 409


class PayloadTooLarge(TuneForgeError):
    status_code = 413
    default_code = "payload_too_large"


class Unprocessable(TuneForgeError):
    status_code = 422


class RateLimited(TuneForgeError):
    status_code = 429
    default_code = "rate_limit_exceeded"
    error_type = "requests"

    def __init__(self, message: str, *, retry_after: float = 1.0, **kwargs: str | None) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unavailable(TuneForgeError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


def not_found(kind: str, object_id: str, param: str | None = "id") -> NotFound:
    """Same answer for missing and foreign objects, so ids leak nothing across projects."""
    return NotFound(f"No such {kind} object: {clipped(object_id, ID_CHARS)}", param=param)


def model_not_found(model_id: str) -> NotFound:
    """OpenAI's exact answer for an unknown (or foreign) model."""
    return NotFound(
        f"The model `{clipped(model_id, ID_CHARS)}` does not exist or you do not have access to it.",
        param=None,
        code="model_not_found",
    )
