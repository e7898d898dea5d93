"""Another project's id answers 404 exactly as a missing one does, on every id-bearing route."""

from __future__ import annotations

import re

import httpx

from tests.app.datasets import chat_jsonl
from tests.conftest import Server

# Which object kind fills each path parameter; every id-bearing route must be listed here.
ID_KINDS = {"file_id": "file"}


def _make_objects(server: Server) -> dict[str, str]:
    client = server.openai("owner")
    return {"file": client.files.create(file=("o.jsonl", chat_jsonl()), purpose="fine-tune").id}


def _id_routes(server: Server) -> list[tuple[str, str, list[str]]]:
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    routes = []
    for path, methods in spec["paths"].items():
        params = re.findall(r"{([^}]+)}", path)
        if params:
            routes.extend((method.upper(), path, params) for method in methods)
    return routes


def test_foreign_ids_answer_404_like_missing_ids(server: Server) -> None:
    owned = _make_objects(server)
    intruder = {"authorization": f"Bearer {server.key('intruder')}"}
    owner = {"authorization": f"Bearer {server.key('owner')}"}
    routes = _id_routes(server)
    assert routes, "no id-bearing routes found"
    for method, path, params in routes:
        unknown = [p for p in params if p not in ID_KINDS]
        assert not unknown, f"{method} {path}: add {unknown} to ID_KINDS so isolation is tested"
        real = path
        fake = path
        for param in params:
            object_id = owned[ID_KINDS[param]]
            real = real.replace(f"{{{param}}}", object_id)
            fake = fake.replace(f"{{{param}}}", object_id[:-4] + "zzzz")
        body = {} if method == "POST" else None
        foreign = httpx.request(method, server.base_url + real, headers=intruder, json=body)
        missing = httpx.request(method, server.base_url + fake, headers=intruder, json=body)
        assert foreign.status_code == 404, (method, path, foreign.text)
        assert missing.status_code == 404, (method, path, missing.text)
        shape = foreign.json()["error"]
        expected = missing.json()["error"]
        assert shape["message"].replace(real.split("/")[3], "ID") == expected["message"].replace(
            fake.split("/")[3], "ID"
        ), (method, path)
        assert (shape["type"], shape["code"], shape["param"]) == (
            expected["type"],
            expected["code"],
            expected["param"],
        )
    # The owner still sees its objects untouched (the intruder's DELETE did nothing).
    assert httpx.get(f"{server.base_url}/v1/files/{owned['file']}", headers=owner).status_code == 200
