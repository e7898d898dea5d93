"""Models: the operator's base models plus the caller project's fine-tuned models and checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.errors import Forbidden, InvalidRequest, model_not_found
from app.core.ids import now_ns, ns_to_s
from app.core.settings import Settings
from app.db.models import RegisteredModel
from app.db.session import Database
from app.gateway.backends import BackendRegistry
from app.wire.models import ModelDeleted, ModelObject

BASE_OWNER = "system"


@dataclass(frozen=True)
class ModelInfo:
    id: str
    created: int
    owned_by: str
    kind: str  # "base" | "fine_tuned" | "checkpoint"
    base_model: str
    artifact_dir: str | None = None


@dataclass(frozen=True)
class InferenceTarget:
    """Where a chat request for `model_id` goes: a base model, optionally with an adapter on top."""

    model_id: str
    base_model: str
    adapter_dir: str | None


def model_object(info: ModelInfo) -> ModelObject:
    return ModelObject(id=info.id, created=info.created, owned_by=info.owned_by)


def base_models(settings: Settings) -> list[ModelInfo]:
    infos = []
    for name, source in settings.base_model_map.items():
        config = Path(source) / "config.json"
        created = int(config.stat().st_mtime) if config.exists() else 0
        infos.append(ModelInfo(id=name, created=created, owned_by=BASE_OWNER, kind="base", base_model=name))
    return infos


def _project_models(
    session: Session, project_id: str, project_name: str, model_id: str | None = None
) -> list[ModelInfo]:
    # Registry rows are written by the jobs code when a run succeeds; this module reads and soft-deletes them.
    query = select(RegisteredModel).where(
        RegisteredModel.project_id == project_id, RegisteredModel.deleted_ns.is_(None)
    )
    if model_id is not None:
        query = query.where(RegisteredModel.id == model_id)
    rows = session.scalars(query.order_by(RegisteredModel.created_ns, RegisteredModel.id))
    return [
        ModelInfo(
            id=row.id,
            created=ns_to_s(row.created_ns),
            owned_by=project_name,
            kind=row.kind,
            base_model=row.base_model,
            artifact_dir=row.artifact_dir,
        )
        for row in rows
    ]


def list_models(session: Session, settings: Settings, project_id: str, project_name: str) -> list[ModelInfo]:
    return base_models(settings) + _project_models(session, project_id, project_name)


def get_model(session: Session, settings: Settings, project_id: str, project_name: str, model_id: str) -> ModelInfo:
    for info in base_models(settings):
        if info.id == model_id:
            return info
    found = _project_models(session, project_id, project_name, model_id)
    if not found:
        raise model_not_found(model_id)
    return found[0]


def delete_model(session: Session, settings: Settings, project_id: str, project_name: str, model_id: str) -> ModelInfo:
    """Soft-delete a fine-tuned model of the caller's project; base models and checkpoints cannot be deleted."""
    info = get_model(session, settings, project_id, project_name, model_id)
    if info.kind == "base":
        raise Forbidden(f"You do not have permission to delete the base model `{model_id}`.", param="model")
    if info.kind != "fine_tuned":
        raise InvalidRequest(f"Only fine-tuned models can be deleted; `{model_id}` is a {info.kind}.", param="model")
    session.execute(
        update(RegisteredModel)
        .where(RegisteredModel.id == model_id, RegisteredModel.project_id == project_id)
        .values(deleted_ns=now_ns())
    )
    return info


def resolve_for_inference(
    session: Session, settings: Settings, project_id: str, project_name: str, model_id: str
) -> InferenceTarget:
    info = get_model(session, settings, project_id, project_name, model_id)
    return InferenceTarget(model_id=info.id, base_model=info.base_model, adapter_dir=info.artifact_dir)


async def delete_and_forget(
    db: Database, settings: Settings, backends: BackendRegistry, project_id: str, project_name: str, model_id: str
) -> ModelDeleted:
    """Delete the model, then make every backend of its base drop the adapter it may hold."""
    with db.session() as session:
        info = delete_model(session, settings, project_id, project_name, model_id)
    for backend in backends.all():
        if backend.base_model == info.base_model:
            await backend.forget_adapter(info.id)
    return ModelDeleted(id=model_id, deleted=True)
