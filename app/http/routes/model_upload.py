"""Upload of an existing PEFT LoRA adapter: `POST /v1/models` (TuneForge extension; see app/usecases/model_upload)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from app.http.deps import get_caller, get_state
from app.http.multipart_stream import FormLimits, StreamingForm
from app.http.state import AppState
from app.usecases import model_upload as upload_uc
from app.usecases.keys import Caller
from app.wire.base import request_body
from app.wire.models import ModelObject

router = APIRouter(prefix="/v1/models", tags=["models"])


class AdapterUploadForm(BaseModel):
    """The multipart form of an adapter upload."""

    file: bytes = Field(
        json_schema_extra={"format": "binary", "type": "string"},
        description="A .tar, .tar.gz or .zip of a PEFT LoRA adapter directory (safetensors only)",
    )
    base_model: str = Field(description="One of the offered base models the adapter was made for")
    suffix: str | None = Field(default=None, description="Up to 64 characters added to the model's name")


@router.post("", response_model=ModelObject, openapi_extra=request_body(AdapterUploadForm, "multipart/form-data"))
async def upload_adapter(
    request: Request, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> ModelObject:
    """Register an existing LoRA adapter as a model of the caller's project; it is then served like a fine-tune."""
    archive = upload_uc.ArchiveUpload(state.settings)
    try:

        def on_file_start(_filename: str | None) -> Callable[[bytes], None]:
            return archive.write

        form = StreamingForm(
            request.headers.get("content-type", ""), "file", on_file_start, FormLimits.from_settings(state.settings)
        )
        async for chunk in request.stream():
            await anyio.to_thread.run_sync(form.feed, chunk)
        form.close()
    except BaseException:
        archive.abort()  # over the cap, malformed, stalled or gone: no temp file outlives the request
        raise
    fields = upload_uc.UploadForm(fields=dict(form.fields), file_seen=form.file_seen)
    return await anyio.to_thread.run_sync(
        lambda: upload_uc.register_upload(
            state.db, state.settings, caller.project_id, caller.project_name, archive, fields
        )
    )
