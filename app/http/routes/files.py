"""Files API (wire reference §2) plus the dataset report extension."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from app.http.deps import get_caller, get_state
from app.http.multipart_stream import FormLimits, StreamingForm
from app.http.state import AppState
from app.usecases import doctor as doctor_uc
from app.usecases import files as files_uc
from app.usecases.keys import Caller
from app.usecases.paging import check_limit
from app.wire.base import request_body
from app.wire.files import FileDeleted, FileObject, FileReport, FileUploadForm
from app.wire.page import CursorPage

router = APIRouter(prefix="/v1/files", tags=["files"])


async def _read_form(request: Request, state: AppState, upload: files_uc.FileUpload) -> files_uc.UploadedForm:
    """Stream the multipart body into the upload; fine-tune files are checked while they stream."""
    form: StreamingForm | None = None

    def on_file_start(_filename: str | None) -> Callable[[bytes], None]:
        assert form is not None
        if form.fields.get("purpose") == "fine-tune":
            upload.check_as_dataset()
        return upload.write

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
    return files_uc.UploadedForm(fields=dict(form.fields), filename=form.filename, file_seen=form.file_seen)


_UPLOAD_BODY = request_body(FileUploadForm, "multipart/form-data")
_UPLOAD_BODY["requestBody"]["content"]["multipart/form-data"]["encoding"] = {
    "expires_after": {"contentType": "application/json"}
}


@router.post("", response_model=FileObject, openapi_extra=_UPLOAD_BODY)
async def create_file(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> FileObject:
    """Upload a file (multipart: `purpose`, `file`); streamed to storage under the size cap."""
    upload = files_uc.FileUpload(state.storage, state.settings)
    form = await _read_form(request, state, upload)
    key = request.headers.get("idempotency-key")
    return await anyio.to_thread.run_sync(
        lambda: files_uc.store_upload(state.db, state.storage, caller.project_id, upload, form, key)
    )


@router.get("")
def list_files(
    purpose: str | None = None,
    limit: int = Query(default=10_000, ge=1),
    after: str | None = None,
    order: Literal["asc", "desc"] = "desc",
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> CursorPage[FileObject]:
    check_limit(state.settings, limit)
    with state.db.session() as session:
        page = files_uc.list_files(session, caller.project_id, purpose=purpose, limit=limit, after=after, order=order)
        return CursorPage[FileObject].of([files_uc.file_object(row) for row in page.items], page.has_more)


@router.get("/{file_id}")
def retrieve_file(
    file_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> FileObject:
    with state.db.session() as session:
        return files_uc.file_object(files_uc.get_file(session, caller.project_id, file_id))


@router.delete("/{file_id}")
def delete_file(
    file_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> FileDeleted:
    with state.db.session() as session:
        key = files_uc.delete_file(session, caller.project_id, file_id)
    state.storage.delete(key)  # after the commit: a crash in between leaves an orphan blob, never a dangling row
    return FileDeleted(id=file_id, deleted=True)


@router.get("/{file_id}/content", response_class=StreamingResponse)
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
) -> FileReport:
    """TuneForge extension: the dataset check of a fine-tune file, plus the doctor's token report for `model`."""
    query = doctor_uc.parse_query(state.settings, model, max_seq_length, train_on_inputs)
    return files_uc.file_report(state.db, state.settings, state.storage, caller.project_id, file_id, query)
