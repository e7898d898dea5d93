"""Another project's id answers 404 exactly as a missing one does, on every id-bearing route."""

from __future__ import annotations

import re
import time

import httpx

from tests.app.datasets import chat_jsonl
from tests.conftest import Server

# Which object kind fills each path parameter; every id-bearing route must be listed here.
ID_KINDS = {"file_id": "file", "fine_tuning_job_id": "job", "model_id": "model"}


def _make_objects(server: Server) -> dict[str, str]:
    client = server.openai("owner")
    file_id = client.files.create(file=("o.jsonl", chat_jsonl()), purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="tiny-chat",
        training_file=file_id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "max_seq_length": 64}}},
    )
    deadline = time.monotonic() + 180
    while job.status != "succeeded":  # a finished job gives a fine-tuned model to test /v1/models with
        assert job.status not in ("failed", "cancelled") and time.monotonic() < deadline, job
        time.sleep(0.2)
        job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.fine_tuned_model is not None
    return {"file": file_id, "job": job.id, "model": job.fine_tuned_model}


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
        swaps: list[tuple[str, str]] = []
        for param in params:
            object_id = owned[ID_KINDS[param]]
            real = real.replace(f"{{{param}}}", object_id)
            fake = fake.replace(f"{{{param}}}", object_id[:-4] + "zzzz")
            swaps.append((object_id, object_id[:-4] + "zzzz"))
        body = {} if method == "POST" else None
        foreign = httpx.request(method, server.base_url + real, headers=intruder, json=body)
        missing = httpx.request(method, server.base_url + fake, headers=intruder, json=body)
        assert foreign.status_code == 404, (method, path, foreign.text)
        assert missing.status_code == 404, (method, path, missing.text)
        shape = foreign.json()["error"]
        expected = missing.json()["error"]
        foreign_message, missing_message = shape["message"], expected["message"]
        for real_id, fake_id in swaps:
            foreign_message = foreign_message.replace(real_id, "ID")
            missing_message = missing_message.replace(fake_id, "ID")
        assert foreign_message == missing_message, (method, path)
        assert (shape["type"], shape["code"], shape["param"]) == (
            expected["type"],
            expected["code"],
            expected["param"],
        )
    # The owner still sees its objects untouched (the intruder's DELETE did nothing).
    assert httpx.get(f"{server.base_url}/v1/files/{owned['file']}", headers=owner).status_code == 200
