"""Fine-tuning jobs API (wire reference §3): thin handlers over the jobs use cases."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from app.core.errors import InvalidRequest
from app.core.json_body import parse_json_body
from app.http.deps import get_caller, get_state
from app.http.presenters import cursor_list
from app.http.state import AppState
from app.usecases.idempotency import body_hash, check_key, run_once
from app.usecases.jobs import control, submit
from app.usecases.jobs.checkpoints import list_checkpoints
from app.usecases.jobs.doorbell import Doorbell
from app.usecases.jobs.events import list_events
from app.usecases.jobs.presentation import checkpoint_object, event_object, job_object
from app.usecases.jobs.request import parse_job_request
from app.usecases.keys import Caller

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
log = logging.getLogger("tuneforge.jobs")
CREATE_ROUTE = "POST /v1/fine_tuning/jobs"


def get_doorbell(request: Request) -> Doorbell:
    """One producer per application, created on first use."""
    doorbell: Doorbell | None = getattr(request.app.state, "jobs_doorbell", None)
    if doorbell is None:
        doorbell = Doorbell(get_state(request).settings)
        request.app.state.jobs_doorbell = doorbell
    return doorbell


def _check_limit(limit: int, state: AppState) -> None:
    if limit > state.settings.list_limit_max:
        raise InvalidRequest(f"limit must be at most {state.settings.list_limit_max}.", param="limit")


@router.post("")
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
    job_request = parse_job_request(body)
    key = check_key(request.headers.get("idempotency-key"))
    digest = body_hash(CREATE_ROUTE, body)

    def work() -> tuple[dict[str, Any], bool]:
        outcome = run_once(
            state.db,
            caller.project_id,
            key,
            CREATE_ROUTE,
            digest,
            lambda session: submit.create_job(session, state.settings, caller.project_id, job_request).id,
        )
        with state.db.session() as session:
            created = job_object(
                submit.get_job(session, caller.project_id, outcome.object_id), state.settings.organization_id
            )
        if not outcome.replayed:
            _validate_and_ring(state, doorbell, outcome.object_id)
        return created, outcome.replayed

    created, replayed = await anyio.to_thread.run_sync(work)
    headers = {"idempotent-replayed": "true"} if replayed else {}
    return JSONResponse(created, headers=headers)


def _validate_and_ring(state: AppState, doorbell: Doorbell, job_id: str) -> None:
    """After the commit: never let a failure here turn into an error for a job that exists (the reaper retries)."""
    try:
        with state.db.session() as session:
            status = submit.validate_job(session, state.settings, state.storage, job_id)
        if status == "queued":
            doorbell.ring([job_id])
    except Exception:
        log.exception("validating job %s failed; the reaper will validate it again", job_id)


@router.get("")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = Query(default=20, ge=1),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    """List jobs newest first; `metadata[k]=v` filters (and `metadata=null` for jobs without metadata)."""
    _check_limit(limit, state)
    wanted: dict[str, str] = {}
    metadata_null = False
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            wanted[name[len("metadata[") : -1]] = value
        elif name == "metadata" and value == "null":
            metadata_null = True
    with state.db.session() as session:
        page = submit.list_jobs(
            session, caller.project_id, after=after, limit=limit, metadata=wanted, metadata_null=metadata_null
        )
        data = [job_object(job, state.settings.organization_id) for job in page.items]
    return cursor_list(data, page.has_more, with_ids=False)


@router.get("/{fine_tuning_job_id}")
def retrieve_job(
    fine_tuning_job_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    with state.db.session() as session:
        job = submit.get_job(session, caller.project_id, fine_tuning_job_id)
        return job_object(job, state.settings.organization_id)


@router.post("/{fine_tuning_job_id}/cancel")
def cancel_job(
    fine_tuning_job_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """Idle jobs are cancelled at once; a running job moves to `cancelling` until its run stops."""
    with state.db.session() as session:
        job = control.cancel_job(session, caller.project_id, fine_tuning_job_id)
        return job_object(job, state.settings.organization_id)


@router.post("/{fine_tuning_job_id}/pause")
def pause_job(
    fine_tuning_job_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """A running job moves to `pausing`, writes a checkpoint and becomes `paused`."""
    with state.db.session() as session:
        job = control.pause_job(session, caller.project_id, fine_tuning_job_id)
        return job_object(job, state.settings.organization_id)


@router.post("/{fine_tuning_job_id}/resume")
def resume_job(
    fine_tuning_job_id: str,
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
    doorbell: Doorbell = Depends(get_doorbell),
) -> dict[str, Any]:
    """Back to `queued`; the next run continues from the newest checkpoint."""
    with state.db.session() as session:
        job = control.resume_job(session, caller.project_id, fine_tuning_job_id)
        body = job_object(job, state.settings.organization_id)
    if body["status"] == "queued":
        doorbell.ring([fine_tuning_job_id])
    return body


@router.get("/{fine_tuning_job_id}/events")
def job_events(
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: int = Query(default=20, ge=1),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    _check_limit(limit, state)
    with state.db.session() as session:
        submit.get_job(session, caller.project_id, fine_tuning_job_id)
        page = list_events(session, fine_tuning_job_id, after=after, limit=limit)
        return cursor_list([event_object(e) for e in page.items], page.has_more, with_ids=False)


@router.get("/{fine_tuning_job_id}/checkpoints")
def job_checkpoints(
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: int = Query(default=10, ge=1),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    _check_limit(limit, state)
    with state.db.session() as session:
        submit.get_job(session, caller.project_id, fine_tuning_job_id)
        page = list_checkpoints(session, fine_tuning_job_id, after=after, limit=limit)
        return cursor_list([checkpoint_object(c) for c in page.items], page.has_more)
