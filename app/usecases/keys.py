"""Projects and API keys. Keys are shown once and stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest, NotFound, Unauthorized
from app.core.ids import new_id, now_ns
from app.db.models import ApiKey, Project

KEY_PREFIX = "sk-tf-"
_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough (no bcrypt cost on every request).
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    project_id: str
    project_name: str
    secret: str


@dataclass(frozen=True)
class Caller:
    """The authenticated project behind a request."""

    project_id: str
    project_name: str
    key_id: str


def get_or_create_project(session: Session, name: str) -> Project:
    if not _PROJECT_NAME.match(name):
        raise InvalidRequest("Project names are 1-100 characters: letters, digits, '_', '.', '-'.", param="project")
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("proj_"), name=name, created_ns=now_ns())
        session.add(project)
        session.flush()
    return project


def create_key(session: Session, project_name: str) -> CreatedKey:
    project = get_or_create_project(session, project_name)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key_", 16),
        project_id=project.id,
        key_hash=hash_key(secret),
        display=f"{secret[:10]}...{secret[-4:]}",
        created_ns=now_ns(),
    )
    session.add(key)
    session.flush()
    return CreatedKey(key_id=key.id, project_id=project.id, project_name=project.name, secret=secret)


def list_keys(session: Session, project_name: str | None = None) -> list[tuple[ApiKey, Project]]:
    query = select(ApiKey, Project).join(Project, Project.id == ApiKey.project_id).order_by(ApiKey.created_ns)
    if project_name is not None:
        query = query.where(Project.name == project_name)
    return [(key, project) for key, project in session.execute(query).all()]


def revoke_key(session: Session, key_id: str) -> None:
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_ns.is_(None)).values(revoked_ns=now_ns())
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"No active API key with id {key_id}", param="key_id")


def authenticate(session: Session, secret: str) -> Caller:
    """Resolve a bearer secret to its project; revoked or unknown keys are refused alike."""
    if not secret:
        raise Unauthorized("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
    row = session.execute(
        select(ApiKey, Project)
        .join(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.key_hash == hash_key(secret), ApiKey.revoked_ns.is_(None))
    ).first()
    if row is None:
        shown = secret[:6] + "*" * 4 + secret[-4:] if len(secret) > 12 else "****"
        raise Unauthorized(f"Incorrect API key provided: {shown}.")
    key, project = row
    return Caller(project_id=project.id, project_name=project.name, key_id=key.id)
