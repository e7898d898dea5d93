"""Files API (wire reference §2) plus the dataset report extension."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest
from app.http.deps import get_caller, get_state
from app.http.multipart_stream import FormLimits, StreamingForm
from app.http.presenters import cursor_list, file_object
from app.http.state import AppState
from app.usecases import doctor as doctor_uc
from app.usecases import files as files_uc
from app.usecases.idempotency import body_hash, check_key, run_once
from app.usecases.keys import Caller

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.post("")
async def create_file(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    """Upload a file (multipart: `purpose`, `file`); streamed to storage under the size cap."""
    upload = files_uc.FileUpload(state.storage, state.settings)
    form: StreamingForm | None = None
    content_hash = hashlib.sha256()  # identifies the request for Idempotency-Key

    def write(chunk: bytes) -> None:
        upload.write(chunk)
        content_hash.update(chunk)

    def on_file_start(_filename: str | None) -> Callable[[bytes], None]:
        assert form is not None
        if form.fields.get("purpose") == "fine-tune":
            upload.check_as_dataset()
        return write

    try:
        limits = FormLimits.from_settings(state.settings)
        form = StreamingForm(request.headers.get("content-type", ""), "file", on_file_start, limits)
        async for chunk in request.stream():
            await anyio.to_thread.run_sync(form.feed, chunk)
        form.close()
    except BaseException:
        # Over the cap, malformed, stalled (408 from the body guard) or gone: no temp file outlives the request.
        # The body guard drains what the client is still sending before the error answer goes out.
        upload.abort()
        raise
    try:
        if not form.file_seen:
            raise InvalidRequest("'file' is a required property", param="file")
        purpose = files_uc.validate_purpose(form.fields.get("purpose"))
        expires = files_uc.parse_expires_after(
            form.fields.get("expires_after[anchor]"), form.fields.get("expires_after[seconds]")
        )

        key = check_key(request.headers.get("idempotency-key"))
        digest = body_hash("POST /v1/files", [purpose, form.filename, content_hash.hexdigest(), expires])
        stored: dict[str, str] = {}

        def create(session: Session) -> str:
            row = upload.finish(session, state.storage, caller.project_id, purpose, form.filename, expires)
            stored["key"] = row.storage_key
            return row.id

        def undo() -> None:
            # Lost an idempotency race: drop our bytes, the first request's file stands.
            if "key" in stored:
                state.storage.delete(stored["key"])
            upload.abort()

        def store() -> dict[str, Any]:
            outcome = run_once(state.db, caller.project_id, key, "POST /v1/files", digest, create, undo)
            with state.db.session() as session:
                return file_object(files_uc.get_file(session, caller.project_id, outcome.object_id))

        return await anyio.to_thread.run_sync(store)
    except BaseException:
        upload.abort()
        raise


@router.get("")
def list_files(
    purpose: str | None = None,
    limit: int = Query(default=10_000, ge=1),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    if limit > state.settings.list_limit_max:
        raise InvalidRequest(f"limit must be at most {state.settings.list_limit_max}.", param="limit")
    with state.db.session() as session:
        page = files_uc.list_files(session, caller.project_id, purpose=purpose, limit=limit, after=after, order=order)
        return cursor_list([file_object(row) for row in page.items], page.has_more)


@router.get("/{file_id}")
def retrieve_file(
    file_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    with state.db.session() as session:
        return file_object(files_uc.get_file(session, caller.project_id, file_id))


@router.delete("/{file_id}")
def delete_file(
    file_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    with state.db.session() as session:
        key = files_uc.delete_file(session, caller.project_id, file_id)
    state.storage.delete(key)
    return {"id": file_id, "object": "file", "deleted": True}


@router.get("/{file_id}/content")
def file_content(
    file_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> StreamingResponse:
    with state.db.session() as session:
        row = files_uc.get_file(session, caller.project_id, file_id)
    return StreamingResponse(
        state.storage.iter_chunks(row.storage_key),
        media_type="application/octet-stream",
        headers={"content-length": str(row.bytes), "content-disposition": f'attachment; filename="{row.id}"'},
    )


@router.get("/{file_id}/report")
def file_report(
    file_id: str,
    model: str | None = None,
    max_seq_length: str | None = None,
    train_on_inputs: str | None = None,
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    """TuneForge extension: the dataset check of a fine-tune file, plus the doctor's token report for `model`."""
    query = doctor_uc.parse_query(state.settings, model, max_seq_length, train_on_inputs)
    with state.db.session() as session:
        report = files_uc.get_report(session, caller.project_id, file_id)
        row = files_uc.get_file(session, caller.project_id, file_id)
        session.expunge(row)
    tokens = doctor_uc.token_report(state.settings, state.storage, row, query)
    return {"object": "file.report", "id": file_id, **report, "tokens": tokens}
