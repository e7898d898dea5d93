"""Models API (wire reference §6). Ids contain ':' and may contain '/', so the route takes the raw path."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from app.core.errors import NotFound
from app.http.deps import get_caller, get_state
from app.http.state import AppState
from app.usecases import model_export
from app.usecases import models as models_uc
from app.usecases.keys import Caller
from app.wire.models import ModelDeleted, ModelObject
from app.wire.page import ListOf

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("")
def list_models(state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)) -> ListOf[ModelObject]:
    with state.db.session() as session:
        infos = models_uc.list_models(session, state.settings, caller.project_id, caller.project_name)
    return ListOf[ModelObject](data=[models_uc.model_object(info) for info in infos])


_DOWNLOAD_DOC = """TuneForge extension: the model's weights as a Hugging Face folder, in a tar archive.

`format=adapter` (the default for LoRA models) is the PEFT adapter: `adapter_config.json` (its
`base_model_name_or_path` is the base's public name), `adapter_model.safetensors`. `format=merged` (the default
and only format for full fine-tunes) is complete weights: `config.json`, `model*.safetensors`; for a LoRA model the
adapter is merged into the base with PEFT's `merge_and_unload` on first download, then kept and reused. Both hold
the tokenizer and chat template, `generation_config.json`, TuneForge's `manifest.json` and a model card
`README.md`; never optimizer, scheduler or RNG state. Checkpoints download the same way.

The archive is a plain tar (`application/x-tar`, with `Content-Length`) of one top folder named after the model;
`compression=gzip` sends it gzipped (`application/gzip`, chunked). Base models are not downloadable (400,
`param: model`). A merge over the server's memory limit is refused before it starts (400, `param: format`); while
every merge slot is busy the answer is 503 with `Retry-After`.

Paths: a GET of `/v1/models/{id}/content` is a download of `{id}`, unless `{id}/content` itself names a model you
can see, which is then retrieved as usual (so download a model named `x/content` at `/v1/models/x/content/content`).
"""


@router.get(
    "/{model_id:path}/content",
    response_class=StreamingResponse,
    description=_DOWNLOAD_DOC,
    responses={
        200: {
            "description": "The model folder as a tar archive (or, see the rule above, a model object).",
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/ModelObject"}},
            },
        }
    },
)
async def download_model(
    model_id: str,
    format: str | None = Query(default=None, description="`adapter` or `merged`."),  # noqa: A002  (the wire name)
    compression: str | None = Query(default=None, description="`none` (default) or `gzip`."),
    state: AppState = Depends(get_state),
    caller: Caller = Depends(get_caller),
) -> Response:
    with state.db.session() as session:
        try:  # a model whose own id ends in "/content" is retrieved, as before this route existed
            whole = models_uc.get_model(
                session, state.settings, caller.project_id, caller.project_name, f"{model_id}/content"
            )
            return JSONResponse(models_uc.model_object(whole).model_dump(mode="json"))
        except NotFound:
            pass
        info = models_uc.get_model(session, state.settings, caller.project_id, caller.project_name, model_id)
    plan, archive = await model_export.download(state.settings, info, format, compression)
    headers = {"content-disposition": f'attachment; filename="{plan.filename}"'}
    if archive.length is not None:
        headers["content-length"] = str(archive.length)
    return StreamingResponse(archive.chunks, media_type=plan.media_type, headers=headers)


@router.get("/{model_id:path}")
def retrieve_model(
    model_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> ModelObject:
    with state.db.session() as session:
        info = models_uc.get_model(session, state.settings, caller.project_id, caller.project_name, model_id)
    return models_uc.model_object(info)


@router.delete("/{model_id:path}")
async def delete_model(
    model_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> ModelDeleted:
    return await models_uc.delete_and_forget(
        state.db, state.settings, state.backends, caller.project_id, caller.project_name, model_id
    )
