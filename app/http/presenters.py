"""Wire shapes of stored objects, exactly as OpenAI's SDK expects them."""

from __future__ import annotations

from typing import Any

from app.core.ids import ns_to_s
from app.db.models import StoredFile


def file_object(row: StoredFile) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": ns_to_s(row.created_ns),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": row.status_details,
        "expires_at": row.expires_at,
    }


def cursor_list(data: list[dict[str, Any]], has_more: bool, *, with_ids: bool = True) -> dict[str, Any]:
    page: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if with_ids:
        page["first_id"] = data[0]["id"] if data else None
        page["last_id"] = data[-1]["id"] if data else None
    return page
