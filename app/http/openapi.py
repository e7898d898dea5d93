"""The served OpenAPI document: bearer auth, the error envelope on every status we answer, request bodies.

The routes read their bodies themselves (streamed multipart, strict JSON), so FastAPI cannot infer the
request schemas; they are declared here, in OpenAI's field names, so clients, `/docs` and the schema fuzzer
see what each operation takes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

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

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_HYPERPARAMETER = {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "number"}]}
_MESSAGE = {
    "type": "object",
    "required": ["role"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"type": ["string", "null"]},
        "name": {"type": "string"},
    },
}
_SAMPLING = {
    "model": {"type": "string", "minLength": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 128},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "seed": {"type": ["integer", "null"], "minimum": INT64_MIN, "maximum": INT64_MAX},
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
    },
    "user": {"type": "string"},
}
REQUEST_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/files"): {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "purpose": {"type": "string", "enum": ["fine-tune", "batch", "assistants", "user_data", "evals"]},
                    "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                    "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                },
            }
        }
    },
    ("post", "/v1/fine_tuning/jobs"): {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "training_file"],
                "properties": {
                    "model": {"type": "string", "minLength": 1},
                    "training_file": {"type": "string", "minLength": 1},
                    "validation_file": {"type": ["string", "null"], "minLength": 1},
                    "suffix": {"type": ["string", "null"], "minLength": 1, "maxLength": 64},
                    "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**31 - 1},
                    "metadata": {
                        "type": ["object", "null"],
                        "maxProperties": 16,
                        "additionalProperties": {"type": "string", "maxLength": 512},
                    },
                    "hyperparameters": {
                        "type": "object",
                        "properties": {
                            "batch_size": _HYPERPARAMETER,
                            "learning_rate_multiplier": _HYPERPARAMETER,
                            "n_epochs": _HYPERPARAMETER,
                        },
                    },
                    "method": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "enum": ["supervised", "dpo", "reinforcement"]},
                            "supervised": {"type": "object"},
                            "dpo": {"type": "object"},
                        },
                    },
                    "integrations": {"type": ["array", "null"], "items": {"type": "object"}},
                },
            }
        }
    },
    ("post", "/v1/chat/completions"): {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "messages"],
                "properties": {
                    **_SAMPLING,
                    "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
                    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
                },
            }
        }
    },
    ("post", "/v1/completions"): {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["model", "prompt"],
                "properties": {
                    **_SAMPLING,
                    "prompt": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                },
            }
        }
    },
}
# Successful answers that are not JSON.
SUCCESS_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/files/{file_id}/content"): {"application/octet-stream": {"schema": {"type": "string"}}},
    ("post", "/v1/chat/completions"): {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
    ("post", "/v1/completions"): {
        "application/json": {"schema": {"type": "object"}},
        "text/event-stream": {"schema": {"type": "string"}},
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }


def _document_parameters(operation: dict[str, Any], list_limit_max: int) -> None:
    """Bounds the routes check by hand (settings-driven), stated so that clients know them up front."""
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


def _document_operation(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's validation schema: we answer 400 in OpenAI's envelope instead
    errors = dict(COMMON_ERRORS)
    if method == "post" and path in ("/v1/files", "/v1/fine_tuning/jobs"):
        errors.update(IDEMPOTENT_ERRORS)
    if path in ("/v1/chat/completions", "/v1/completions"):
        errors.update(INFERENCE_ERRORS)
    if method == "delete" and path.startswith("/v1/models/"):
        errors["403"] = "Base models cannot be deleted."
    for status, description in errors.items():
        responses[status] = _error_response(description)
    if (method, path) in SUCCESS_CONTENT:
        responses.setdefault("200", {"description": "Successful Response"})["content"] = SUCCESS_CONTENT[(method, path)]
    if (method, path) in REQUEST_BODIES:
        operation["requestBody"] = {"required": True, "content": REQUEST_BODIES[(method, path)]}
    operation["security"] = [{"bearerAuth": []}]


def build_openapi(app: FastAPI, list_limit_max: int) -> dict[str, Any]:
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorResponse"] = ERROR_SCHEMA
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

    app.openapi = openapi  # type: ignore[method-assign]
