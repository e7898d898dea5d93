"""Liveness and readiness probes (no auth: load balancers call them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.http.deps import get_state
from app.http.state import AppState

router = APIRouter()


@router.get("/health")
def health() -> dict[str, str]:
    """Answers while the process lives."""
    return {"status": "ok"}


@router.get("/ready")
def ready(state: AppState = Depends(get_state)) -> JSONResponse:
    """200 only when the database and the queue are reachable."""
    checks = {"database": state.db.ping()}
    for probe in state.ready_checks:
        name, ok = probe()
        checks[name] = ok
    status = 200 if all(checks.values()) else 503
    return JSONResponse({"status": "ready" if status == 200 else "unavailable", "checks": checks}, status_code=status)
