"""FastAPI dependencies: shared state and the authenticated caller."""

from __future__ import annotations

from fastapi import Request

from app.core.errors import Unauthorized
from app.http.state import AppState
from app.usecases.keys import Caller, authenticate


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.tuneforge
    return state


def get_caller(request: Request) -> Caller:
    """Every /v1 route needs `Authorization: Bearer <key>`."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
    state = get_state(request)
    with state.db.session() as session:
        return authenticate(session, secret.strip())
