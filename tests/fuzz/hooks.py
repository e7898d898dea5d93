"""Schemathesis hooks for the fuzz run: swap some generated ids and model names for real ones.

Random ids only ever reach the 404 path; real ones (given by the test in TUNEFORGE_FUZZ_IDS) let the fuzzer
reach the code behind it: reports, events, checkpoints, cancel/pause/resume and generation. Which values are
swapped depends on the generated value itself, so a run is reproducible from its seed.
"""

from __future__ import annotations

import json
import os
import zlib
from typing import Any

import schemathesis

IDS: dict[str, str] = json.loads(os.environ.get("TUNEFORGE_FUZZ_IDS", "{}"))


def _half(value: Any) -> bool:
    """Deterministically true for about half of the generated values."""
    return zlib.crc32(repr(value).encode()) % 2 == 0


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    if not path_parameters:
        return path_parameters
    for name, value in list(path_parameters.items()):
        if name in IDS and _half(value):
            path_parameters[name] = IDS[name]
    return path_parameters


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and _half(body):
        for name in ("model", "training_file", "validation_file"):
            # Only a schema-valid value is swapped: replacing a negative case's "" or 5 with a real id would turn
            # a request schemathesis meant to be refused into a valid one (a false ST201).
            if name in IDS and isinstance(body.get(name), str) and body[name]:
                body[name] = IDS[name]
    return body
