"""OpenAI's error envelope, the body of every error answer."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """What went wrong: a message for people, a code and the offending parameter for programs."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """{"error": {message, type, param, code}}."""

    error: ErrorDetail
