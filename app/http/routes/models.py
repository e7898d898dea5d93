"""Models API (wire reference §6). Ids contain ':' and may contain '/', so the route takes the raw path."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from app.http.deps import get_caller, get_state
from app.http.state import AppState
from app.usecases import models as models_uc
from app.usecases.keys import Caller

router = APIRouter(prefix="/v1/models", tags=["models"])


def model_object(info: models_uc.ModelInfo) -> dict[str, Any]:
    return {"id": info.id, "object": "model", "created": info.created, "owned_by": info.owned_by}


@router.get("")
def list_models(state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)) -> dict[str, Any]:
    with state.db.session() as session:
        infos = models_uc.list_models(session, state.settings, caller.project_id, caller.project_name)
    return {"object": "list", "data": [model_object(info) for info in infos]}


@router.get("/{model_id:path}")
def retrieve_model(
    model_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    with state.db.session() as session:
        info = models_uc.get_model(session, state.settings, caller.project_id, caller.project_name, model_id)
    return model_object(info)


@router.delete("/{model_id:path}")
async def delete_model(
    model_id: str, state: AppState = Depends(get_state), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    with state.db.session() as session:
        info = models_uc.delete_model(session, state.settings, caller.project_id, caller.project_name, model_id)
    for backend in state.backends.all():
        if backend.base_model == info.base_model:
            await backend.forget_adapter(info.id)
    return {"id": model_id, "object": "model", "deleted": True}
