"""What every wire model shares: the request config, the refusal of invalid fields, schemas for OpenAPI."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from app.core.echo import ID_CHARS, clipped
from app.core.errors import InvalidRequest

# Location parts pydantic adds for union members, dict keys and validators: not the client's field names.
_TAG = re.compile(
    r"^(literal\[.*\]|int|float|str|bool|none|\[key\]|constrained-\w+|"
    r"(list|dict|set|tuple|function-\w+|json-or-python|nullable|union|tagged-union|is-instance|chain)\[.*\])$"
)


class RequestModel(BaseModel):
    """A request object: unknown fields refused (a typo never passes silently), no NaN or Infinity."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def omitted() -> Any:
    """A field left out of the answer when it has no value, as OpenAI leaves it out."""
    return Field(default=None, exclude_if=lambda value: value is None)


def param_of(loc: tuple[int | str, ...], prefix: str = "") -> str | None:
    """The client's field a pydantic error points at (`method.dpo.hyperparameters.beta`)."""
    parts = [clipped(str(part)) for part in loc if not (isinstance(part, str) and _TAG.match(part))]
    path = ".".join(([prefix] if prefix else []) + parts)
    return clipped(path, ID_CHARS) or None


def refusal(err: ValidationError, prefix: str = "") -> InvalidRequest:
    """A 400 in OpenAI's words for the first invalid field; the client's value is never echoed."""
    errors = err.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    param = param_of(first["loc"], prefix)
    if first["type"] == "missing":
        return InvalidRequest(f"'{param}' is a required property", param=param, code="missing_required_parameter")
    if first["type"] == "extra_forbidden":
        return InvalidRequest(f"Unrecognized request argument supplied: {param}", param=param, code="invalid_value")
    # A union ("auto" or a number) reports each member; the last is the one about the number's bounds.
    same = [e for e in errors if param_of(e["loc"], prefix) == param]
    message = clipped(str(same[-1]["msg"]), 200)
    return InvalidRequest(f"{message} - '{param}'", param=param, code="invalid_value")


def json_schema(model: type[BaseModel], mode: str = "validation") -> dict[str, JsonValue]:
    """model's JSON schema with every `$ref` inlined, for an OpenAPI body FastAPI does not parse itself."""
    schema: dict[str, JsonValue] = model.model_json_schema(mode=mode)  # type: ignore[arg-type]  # reason: str literal
    defs = schema.pop("$defs", {})
    assert isinstance(defs, dict)

    def inline(node: JsonValue) -> JsonValue:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])  # the wire models are not recursive
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result = inline(schema)
    assert isinstance(result, dict)
    return result


def request_body(model: type[BaseModel], media_type: str = "application/json") -> dict[str, Any]:
    """`openapi_extra` declaring model as the required body of a route that reads its body itself."""
    return {"requestBody": {"required": True, "content": {media_type: {"schema": json_schema(model)}}}}
