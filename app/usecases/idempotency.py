"""Idempotency-Key (Stripe semantics): same key and body -> the first object; another body -> 422."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest, Unprocessable
from app.core.ids import now_ns
from app.db.models import IdempotencyRecord
from app.db.session import Database

MAX_KEY_LENGTH = 255


def body_hash(route: str, payload: Any) -> str:
    """Hash of the route and a canonical JSON form of what identifies the request."""
    text = json.dumps([route, payload], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters.", param="Idempotency-Key")
    return key


def _replay(session: Session, project_id: str, key: str, route: str, digest: str) -> str | None:
    row = session.get(IdempotencyRecord, (project_id, key))
    if row is None:
        return None
    if row.route != route or row.request_hash != digest:
        raise Unprocessable(
            "Keys for idempotent requests can only be used with the same parameters they were first used "
            "with. Use a new Idempotency-Key for a different request.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return row.object_id


@dataclass(frozen=True)
class Outcome:
    object_id: str
    replayed: bool


def run_once(
    db: Database,
    project_id: str,
    key: str | None,
    route: str,
    digest: str,
    create: Callable[[Session], str],
    undo: Callable[[], None] | None = None,
) -> Outcome:
    """Create at most one object per key: the key row and the object commit in one transaction.

    A concurrent request with the same key blocks on the key's primary key until the first commits, then
    fails its insert and replays the first object; `undo` cleans up what it created outside the database.
    """
    if key is None:
        with db.session() as session:
            return Outcome(create(session), replayed=False)
    with db.session() as session:
        existing = _replay(session, project_id, key, route, digest)
    if existing is not None:
        if undo is not None:
            undo()
        return Outcome(existing, replayed=True)
    try:
        with db.session() as session:
            object_id = create(session)
            session.add(
                IdempotencyRecord(
                    project_id=project_id,
                    key=key,
                    route=route,
                    request_hash=digest,
                    object_id=object_id,
                    created_ns=now_ns(),
                )
            )
            session.flush()
            return Outcome(object_id, replayed=False)
    except IntegrityError:
        if undo is not None:
            undo()
        with db.session() as session:
            existing = _replay(session, project_id, key, route, digest)
        if existing is None:
            raise
        return Outcome(existing, replayed=True)
