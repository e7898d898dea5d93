"""Domain errors shared by the API and the inference process; each renders as OpenAI's error envelope."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from app.core.echo import ID_CHARS, clipped

_NOT_FIELDS = ("body", "query", "path", "header", "form")  # FastAPI's location prefixes, not the client's field


def envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    """OpenAI's error body: {"error": {message, type, param, code}}, all four always present."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class TuneForgeError(Exception):
    """Base of every error a client may see."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def body(self) -> dict[str, dict[str, str | None]]:
        """This error in OpenAI's envelope."""
        return envelope(self.message, self.error_type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        """Headers the answer carries: Retry-After when the client may retry later."""
        return {"retry-after": f"{self.retry_after:g}"} if self.retry_after is not None else {}


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

    def __init__(
        self, message: str, *, retry_after: float = 1.0, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code, retry_after=retry_after)


class ServerError(TuneForgeError):
    """A failure on our side whose message is safe to show (it names models, never server paths)."""

    status_code = 500
    error_type = "server_error"
    default_code = "server_error"


class Unavailable(TuneForgeError):
    status_code = 503
    error_type = "server_error"
    default_code = "service_unavailable"


def not_found(kind: str, object_id: str, param: str | None = "id") -> NotFound:
    """Same answer for missing and foreign objects, so ids leak nothing across projects."""
    return NotFound(f"No such {kind} object: {clipped(object_id, ID_CHARS)}", param=param)


def model_not_found(model_id: str) -> NotFound:
    """OpenAI's exact answer for an unknown (or foreign) model: param is null, as the real API sends it."""
    return NotFound(
        f"The model `{clipped(model_id, ID_CHARS)}` does not exist or you do not have access to it.",
        param=None,
        code="model_not_found",
    )


def param_of(loc: Sequence[object]) -> str | None:
    """The client's field a pydantic error location points at (`messages.0.role`), without FastAPI's prefix."""
    parts = [clipped(str(p)) for p in loc if p not in _NOT_FIELDS]
    return clipped(".".join(parts), ID_CHARS) or None


def invalid_fields(errors: Sequence[Mapping[str, object]]) -> InvalidRequest:
    """A 400 naming the first invalid field of a pydantic error list (the input value is never echoed)."""
    first = errors[0] if errors else {}
    loc = first.get("loc", ())
    param = param_of(loc if isinstance(loc, tuple | list) else ())
    message = clipped(str(first.get("msg", "Invalid value")), 200) + (f" - '{param}'" if param else "")
    return InvalidRequest(message, param=param, code="invalid_value")
