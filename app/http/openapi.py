"""The served OpenAPI document: bearer auth, and the error envelope on every status each operation answers.

Request and response bodies come from the wire models (app/wire); this adds what FastAPI cannot infer:
the security scheme, error answers in OpenAI's envelope, bounds that are settings, and non-JSON answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.wire.base import json_schema
from app.wire.errors import ErrorResponse

# Statuses any /v1 call may answer: bad input, no key, unknown id, body too slow or too large, database down.
COMMON_ERRORS = {
    "400": "Invalid request (the message names the parameter).",
    "401": "Missing or invalid API key.",
    "404": "No such object in this project.",
    "408": "The request body arrived too slowly.",
    "413": "The request body is over its size limit.",
    "503": "Temporarily unavailable (e.g. the database); retry after `Retry-After` seconds.",
}
IDEMPOTENT_ERRORS = {
    "409": "A request with this Idempotency-Key is still in progress.",
    "422": "This Idempotency-Key was used with a different request.",
}
INFERENCE_ERRORS = {
    "429": "Too many concurrent requests for this API key; retry after `Retry-After` seconds.",
    "502": "The inference backend answered badly.",
    "504": "The inference backend did not answer in time.",
}
# Successful answers that are not JSON.
SUCCESS_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/files/{file_id}/content"): {"application/octet-stream": {"schema": {"type": "string"}}},
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def _document_parameters(operation: dict[str, Any], list_limit_max: int) -> None:
    """Bounds the use cases check (settings-driven, or strings parsed by hand), stated for clients up front."""
    for parameter in operation.get("parameters", []):
        schema = parameter.get("schema", {})
        if parameter.get("name") == "limit" and parameter.get("in") == "query":
            schema["maximum"] = list_limit_max
        elif parameter.get("name") == "model" and parameter.get("in") == "query":
            parameter["schema"] = {"type": "string", "minLength": 1}
        elif parameter.get("name") == "train_on_inputs":
            parameter["schema"] = {"type": "string", "enum": ["true", "false"]}
        elif parameter.get("name") == "max_seq_length":
            parameter["schema"] = {"type": "integer", "minimum": 8, "maximum": 131072}


def _errors_of(path: str, method: str) -> dict[str, str]:
    errors = dict(COMMON_ERRORS)
    if method == "post" and path in ("/v1/files", "/v1/fine_tuning/jobs"):
        errors.update(IDEMPOTENT_ERRORS)
    if path in ("/v1/chat/completions", "/v1/completions"):
        errors.update(INFERENCE_ERRORS)
    if method == "delete" and path.startswith("/v1/models/"):
        errors["403"] = "Base models cannot be deleted."
    return errors


def _document_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's validation schema: we answer 400 in OpenAI's envelope instead
    for status, description in _errors_of(path, method).items():
        responses[status] = _error_response(description)
    if (method, path) in SUCCESS_CONTENT:
        responses.setdefault("200", {"description": "Successful Response"})["content"] = SUCCESS_CONTENT[(method, path)]
    operation["security"] = [{"bearerAuth": []}]


def build_openapi(app: FastAPI, list_limit_max: int) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorResponse"] = json_schema(ErrorResponse, mode="serialization")
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    components["securitySchemes"] = {
        "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A TuneForge API key: `sk-tf-...`."}
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                _document_operation(path, method, operation)
                _document_parameters(operation, list_limit_max)
    ready = document.get("paths", {}).get("/ready", {}).get("get")
    if ready is not None:
        ready.setdefault("responses", {})["503"] = {"description": "A dependency is unreachable."}
    return document


def install_openapi(app: FastAPI, list_limit_max: int) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, list_limit_max)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # reason: FastAPI's documented way to customise it
