"""Random, unguessable object ids in OpenAI's shapes."""

from __future__ import annotations

import secrets
import string
import time

_ALPHABET = string.ascii_letters + string.digits


def random_base62(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    """`file-…`, `ftjob-…`, `ftevent-…`; 24 base62 chars carry ~142 bits."""
    return f"{prefix}{random_base62(length)}"


def now_ns() -> int:
    return time.time_ns()


def ns_to_s(value: int) -> int:
    return value // 1_000_000_000
