"""Models API (wire reference §6). Ids contain ':' and may contain '/', so the route takes the raw path."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.http.deps import get_caller, get_state
from app.http.state import AppState
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
