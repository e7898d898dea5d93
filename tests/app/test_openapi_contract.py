"""Our served OpenAPI document against OpenAI's own (tests/contract/): for each operation both have, every
property of OpenAI's request body and 200 answer is in ours with a compatible type.

Compatible: the same JSON type (an integer where OpenAI says number is fine in answers), null where OpenAI
allows null (when OpenAI's field is nullable or optional we only compare the non-null part), our enum a
superset of OpenAI's unless ALLOWED lists the exception with its reason. Objects and arrays are compared
recursively; a free-form object of ours (no properties) accepts whatever OpenAI nests there.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.app.local_app import local_app

OPENAI = Path(__file__).resolve().parents[1] / "contract" / "openai-openapi-subset.json"

# (operation, field path) -> why ours differs on purpose. Field paths use `[]` for array items.
_OUTPUT_PURPOSES = "OpenAI's assistants_output/batch_output files are never produced here (no Assistants or Batch API)"
ALLOWED: dict[tuple[str, str], str] = {
    ("GET /files", "<200>.data[].purpose"): _OUTPUT_PURPOSES,
    ("GET /files/{}", "<200>.purpose"): _OUTPUT_PURPOSES,
    ("POST /files", "<200>.purpose"): _OUTPUT_PURPOSES,
    (
        "POST /completions",
        "prompt[]",
    ): (
        "ours is str | list[str] | list[int] | list[list[int]] (token ids work); "
        "the comparator matches array items against our first array branch only"
    ),
}
INFERENCE = ("/chat/completions", "/completions")


@dataclass
class Tally:
    operations: list[str] = field(default_factory=list)
    fields: int = 0
    mismatches: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)


class Resolver:
    """Looks up `#/components/schemas/...` and merges `allOf` within one document."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})

    def __call__(self, schema: Any, depth: int = 0) -> dict[str, Any]:
        if not isinstance(schema, dict) or depth > 40:
            return {}
        if "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            return self({**self.schemas.get(name, {}), **{k: v for k, v in schema.items() if k != "$ref"}}, depth + 1)
        if "allOf" in schema:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part = self(part, depth + 1)
                merged.setdefault("properties", {}).update(part.get("properties", {}))
                merged["required"] = [*merged.get("required", []), *part.get("required", [])]
                for key in ("type", "description", "enum"):
                    if key in part:
                        merged.setdefault(key, part[key])
            return merged
        return schema


def _branches(schema: dict[str, Any], resolve: Resolver) -> list[dict[str, Any]]:
    """The alternatives of a schema (anyOf/oneOf flattened), each resolved; null branches dropped."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            out = []
            for branch in schema[key]:
                out.extend(_branches(resolve(branch), resolve))
            return out
    types = schema.get("type")
    if isinstance(types, list):
        return [{**schema, "type": t} for t in types if t != "null"]
    if types == "null":
        return []
    return [schema]


def _kind(schema: dict[str, Any]) -> str:
    if "type" in schema:
        return str(schema["type"])
    values = schema.get("enum") or ([schema["const"]] if "const" in schema else [])
    if values and all(isinstance(v, str) for v in values):
        return "string"
    if "properties" in schema or "additionalProperties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "any"


def _enum(schema: dict[str, Any]) -> set[Any] | None:
    if "enum" in schema:
        return set(schema["enum"])
    if "const" in schema:
        return {schema["const"]}
    return None


def _fits(theirs_kind: str, ours_kind: str) -> bool:
    return (
        ours_kind in (theirs_kind, "any") or theirs_kind == "any" or (theirs_kind, ours_kind) == ("number", "integer")
    )


def compare(
    theirs: Any, ours: Any, where: str, op: str, tally: Tally, them: Resolver, us: Resolver, depth: int = 0
) -> None:
    """Record a mismatch for each part of OpenAI's schema that ours lacks or types differently."""
    if depth > 12:
        return
    their_branches = _branches(them(theirs), them)
    our_branches = _branches(us(ours), us)
    if not their_branches or any(_kind(b) == "any" for b in our_branches) or not our_branches:
        return
    for branch in their_branches:
        kind = _kind(branch)
        matching = [b for b in our_branches if _fits(kind, _kind(b))]
        if not matching:
            _mismatch(op, where, f"type {kind} not in ours {[_kind(b) for b in our_branches]}", tally)
            continue
        if kind == "string" and _enum(branch) is not None:
            ours_values: set[Any] = set()
            for b in matching:
                values = _enum(b)
                if values is None:
                    ours_values = set(_enum(branch) or ())  # a free string of ours takes every value
                    break
                ours_values |= values
            missing = (_enum(branch) or set()) - ours_values
            if missing and len(matching) == len([b for b in matching if _enum(b) is not None]):
                _mismatch(op, where, f"enum lacks {sorted(missing)}", tally)
        if kind == "object":
            our_props: dict[str, Any] = {}
            for b in matching:
                our_props.update(b.get("properties", {}))
            if not our_props:
                continue  # a free-form object of ours
            for name, sub in branch.get("properties", {}).items():
                tally.fields += 1
                path = f"{where}.{name}" if where else name
                if name not in our_props:
                    _mismatch(op, path, "missing", tally)
                    continue
                compare(sub, our_props[name], path, op, tally, them, us, depth + 1)
        if kind == "array" and "items" in branch:
            our_items = [b["items"] for b in matching if "items" in b]
            if our_items:
                compare(branch["items"], our_items[0], f"{where}[]", op, tally, them, us, depth + 1)


def _mismatch(op: str, where: str, what: str, tally: Tally) -> None:
    if (op, where) in ALLOWED:
        tally.allowed.append(f"{op} {where}: {what} ({ALLOWED[op, where]})")
    else:
        tally.mismatches.append(f"{op} {where}: {what}")


def _normal(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def _json_content(content: dict[str, Any]) -> tuple[str, Any] | None:
    for media in ("application/json", "multipart/form-data"):
        if media in content:
            return media, content[media].get("schema")
    return None


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    edge = local_app(tmp_path_factory.mktemp("openapi"))
    ours = edge.client.get("/openapi.json").json()
    return json.loads(OPENAI.read_text()), ours


def _tally(documents: tuple[dict[str, Any], dict[str, Any]], inference: bool) -> Tally:
    """Compare the shared operations: the inference ones, or all the others."""
    openai_doc, ours_doc = documents
    them, us = Resolver(openai_doc), Resolver(ours_doc)
    ours_ops = {
        (method, _normal(path.removeprefix("/v1"))): op
        for path, ops in ours_doc["paths"].items()
        if path.startswith("/v1/")
        for method, op in ops.items()
    }
    tally = Tally()
    for path, ops in openai_doc["paths"].items():
        for method, their_op in ops.items():
            ours = ours_ops.get((method, _normal(path)))
            if ours is None or (path in INFERENCE) != inference:
                continue
            name = f"{method.upper()} {_normal(path)}"
            tally.operations.append(name)
            their_body = _json_content(them(their_op.get("requestBody", {})).get("content", {}))
            if their_body is not None:
                our_body = ours.get("requestBody", {}).get("content", {}).get(their_body[0])
                if our_body is None:
                    tally.mismatches.append(f"{name}: no {their_body[0]} request body")
                else:
                    compare(their_body[1], our_body.get("schema"), "", name, tally, them, us)
            their_ok = _json_content(their_op.get("responses", {}).get("200", {}).get("content", {}))
            our_ok = ours.get("responses", {}).get("200", {}).get("content", {})
            if their_ok is not None and them(their_ok[1]).get("type") != "string":  # file content: bytes, not JSON
                if "application/json" not in our_ok:
                    tally.mismatches.append(f"{name}: no JSON 200 answer")
                else:
                    compare(their_ok[1], our_ok["application/json"].get("schema"), "<200>", name, tally, them, us)
    return tally


def _summary(tally: Tally) -> None:
    print(
        f"\nOpenAPI contract: {len(tally.operations)} operations compared, {tally.fields} fields checked, "
        f"{len(tally.mismatches)} mismatches, {len(tally.allowed)} allowed differences"
    )
    for line in tally.allowed:
        print("  allowed:", line)


def test_files_jobs_and_models_have_every_openai_field_with_a_compatible_type(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    tally = _tally(documents, inference=False)
    _summary(tally)
    assert len(tally.operations) >= 15 and tally.fields >= 100, tally.operations
    assert not tally.mismatches, "\n".join(sorted(set(tally.mismatches)))


def test_chat_and_completions_have_every_openai_field_with_a_compatible_type(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    tally = _tally(documents, inference=True)
    _summary(tally)
    assert len(tally.operations) == 2, tally.operations
    assert not tally.mismatches, "\n".join(sorted(set(tally.mismatches)))


def test_every_v1_operation_declares_bearer_auth_its_bodies_and_error_envelopes(
    documents: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    _, ours = documents
    assert ours["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for path, ops in ours["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            assert op["security"] == [{"bearerAuth": []}], (method, path)
            assert "200" in op["responses"], (method, path)
            for status in ("400", "401", "404", "413"):
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
    upload = ours["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload["properties"]["file"]["format"] == "binary" and set(upload["required"]) >= {"file", "purpose"}
    create = ours["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert create["additionalProperties"] is False and set(create["required"]) == {"model", "training_file"}
    for answer in ("/v1/chat/completions", "/v1/completions"):
        assert "application/json" in ours["paths"][answer]["post"]["requestBody"]["content"], answer


def test_the_comparison_sees_a_missing_field_a_wrong_type_and_a_narrower_enum() -> None:
    them = Resolver({"components": {"schemas": {}}})
    theirs = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "bytes": {"type": "integer"},
            "status": {"type": "string", "enum": ["uploaded", "processed"]},
        },
    }
    ours = {"type": "object", "properties": {"bytes": {"type": "string"}, "status": {"enum": ["processed"]}}}
    tally = Tally()
    compare(theirs, ours, "", "TEST", tally, them, them)
    assert tally.fields == 3 and len(tally.mismatches) == 3, tally.mismatches
