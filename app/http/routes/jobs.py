"""Fine-tuning jobs API (wire reference §3): parse, call one use case, answer with its wire model."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from app.core.json_body import parse_json_body
from app.http.deps import get_caller, get_state
from app.http.state import AppState
from app.usecases.jobs import intake, views
from app.usecases.jobs.doorbell import Doorbell
from app.usecases.keys import Caller
from app.wire.base import request_body
from app.wire.jobs import CheckpointObject, EventObject, JobCreateRequest, JobObject
from app.wire.page import CursorPage, Page

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])


def get_doorbell(request: Request) -> Doorbell:
    """One producer per application, created on first use."""
    doorbell: Doorbell | None = getattr(request.app.state, "jobs_doorbell", None)
    if doorbell is None:
        doorbell = Doorbell(get_state(request).settings)
        request.app.state.jobs_doorbell = doorbell
    return doorbell


@router.post("", response_model=JobObject, openapi_extra=request_body(JobCreateRequest))
async def create_job(
    request: Request,
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
    doorbell: Doorbell = Depends(get_doorbell),
) -> JSONResponse:
    """Create a job (status validating_files); validated and queued right after the commit."""
    raw = await request.body()  # bounded by the body guard (max_json_body_bytes), whatever the content-type
    max_depth = state.settings.max_json_depth
    # Strict: NaN/Infinity/1e999 and deep nesting are 400s here, so nothing non-finite is stored or serialised.
    body = await anyio.to_thread.run_sync(lambda: parse_json_body(raw, max_depth=max_depth)) if raw.strip() else None
    key = request.headers.get("idempotency-key")
    created = await anyio.to_thread.run_sync(
        lambda: intake.create_job(state.db, state.settings, state.storage, doorbell, caller.project_id, body, key)
    )
    headers = {"idempotent-replayed": "true"} if created.replayed else {}
    return JSONResponse(created.job.model_dump(mode="json"), headers=headers)


@router.get("")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20, ge=1),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> Page[JobObject]:
    """List jobs newest first; `metadata[k]=v` filters (and `metadata=null` for jobs without metadata)."""
    query = request.query_params.multi_items()
    return views.list_jobs(state.db, state.settings, caller.project_id, after=after, limit=limit, query=query)


@router.get("/{fine_tuning_job_id}")
def retrieve_job(
    fine_tuning_job_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> JobObject:
    return views.get_job(state.db, state.settings, caller.project_id, fine_tuning_job_id)


@router.post("/{fine_tuning_job_id}/cancel")
def cancel_job(
    fine_tuning_job_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> JobObject:
    """Idle jobs are cancelled at once; a running job moves to `cancelling` until its run stops."""
    return views.cancel_job(state.db, state.settings, caller.project_id, fine_tuning_job_id)


@router.post("/{fine_tuning_job_id}/pause")
def pause_job(
    fine_tuning_job_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> JobObject:
    """A running job moves to `pausing`, writes a checkpoint and becomes `paused`."""
    return views.pause_job(state.db, state.settings, caller.project_id, fine_tuning_job_id)


@router.post("/{fine_tuning_job_id}/resume")
def resume_job(
    fine_tuning_job_id: str,
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
    doorbell: Doorbell = Depends(get_doorbell),
) -> JobObject:
    """Back to `queued`; the next run continues from the newest checkpoint."""
    return intake.resume_job(state.db, state.settings, doorbell, caller.project_id, fine_tuning_job_id)


@router.get("/{fine_tuning_job_id}/events")
def job_events(
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: int = Query(default=20, ge=1),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> Page[EventObject]:
    return views.job_events(state.db, state.settings, caller.project_id, fine_tuning_job_id, after=after, limit=limit)


@router.get("/{fine_tuning_job_id}/checkpoints")
def job_checkpoints(
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: int = Query(default=10, ge=1),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> CursorPage[CheckpointObject]:
    return views.job_checkpoints(
        state.db, state.settings, caller.project_id, fine_tuning_job_id, after=after, limit=limit
    )
