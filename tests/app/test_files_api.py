"""Files API through the official openai SDK against a real server, on SQLite and on Postgres."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.app.datasets import chat_jsonl, preference_jsonl
from tests.conftest import Server


def test_upload_retrieve_content_report_delete(server: Server) -> None:
    client = server.openai("alpha")
    data = chat_jsonl(12)
    created = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
    assert created.id.startswith("file-") and len(created.id) == len("file-") + 24
    assert (created.object, created.purpose, created.filename, created.bytes) == (
        "file",
        "fine-tune",
        "train.jsonl",
        len(data),
    )
    assert created.status == "processed"
    assert created._request_id and created._request_id.startswith("req_")

    again = client.files.retrieve(created.id)
    assert again.model_dump() == created.model_dump()
    assert client.files.content(created.id).read() == data

    report = httpx.get(
        f"{server.base_url}/v1/files/{created.id}/report",
        headers={"authorization": f"Bearer {server.key('alpha')}"},
    ).json()
    assert report["format"] == "chat" and report["n_examples"] == 12 and report["can_train"] is True

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as err:
        client.files.retrieve(created.id)
    assert err.value.body["message"] == f"No such File object: {created.id}"  # type: ignore[index]


def test_report_carries_the_doctor_for_a_base_model(server: Server) -> None:
    client = server.openai("alpha")
    lines = chat_jsonl(12).decode().splitlines()
    long = json.dumps({"messages": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "x"}]})
    data = ("\n".join([*lines, lines[0], long]) + "\n").encode()  # line 13 repeats line 1; line 14 is long
    file_id = client.files.create(file=("train.jsonl", data), purpose="fine-tune").id
    url = f"{server.base_url}/v1/files/{file_id}/report"
    headers = {"authorization": f"Bearer {server.key('alpha')}"}
    default = httpx.get(url, headers=headers).json()
    tokens = default["tokens"]
    assert (tokens["model"], tokens["max_seq_length"], tokens["examined"]) == ("tiny-chat", 1024, 14)
    assert tokens["duplicates"]["groups"] == [[1, 13]] and tokens["over_max_seq_length"]["count"] == 0
    assert 0 < tokens["tokens"]["p50"] <= tokens["tokens"]["p95"] <= tokens["tokens"]["max"]
    short = httpx.get(url, headers=headers, params={"model": "tiny-chat", "max_seq_length": "64"}).json()["tokens"]
    assert short["dropped"]["lines"] == [14] and short["trainable_examples"] == 13
    inputs = httpx.get(url, headers=headers, params={"train_on_inputs": "true"}).json()["tokens"]
    assert inputs["trainable_tokens"] > tokens["trainable_tokens"]
    for params, param in (
        ({"model": "gpt-9"}, "model"),
        ({"max_seq_length": "4"}, "max_seq_length"),
        ({"max_seq_length": "lots"}, "max_seq_length"),
        ({"train_on_inputs": "maybe"}, "train_on_inputs"),
    ):
        bad = httpx.get(url, headers=headers, params=params)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text


def test_list_pagination_order_and_purpose(server: Server) -> None:
    client = server.openai("lister")
    ids = [
        client.files.create(file=(f"f{i}.jsonl", chat_jsonl(10, tag=str(i))), purpose="fine-tune").id for i in range(5)
    ]
    batch_id = client.files.create(file=("b.jsonl", b'{"custom_id": "1"}\n'), purpose="batch").id

    desc = [f.id for f in client.files.list(purpose="fine-tune", limit=2)]  # auto-paginates with `after`
    assert desc == list(reversed(ids))
    asc = [f.id for f in client.files.list(purpose="fine-tune", order="asc", limit=3)]
    assert asc == ids
    first = client.files.list(purpose="fine-tune", limit=2)
    assert first.has_more is True and [f.id for f in first.data] == desc[:2]
    raw = first.model_dump()
    assert raw["first_id"] == desc[0] and raw["last_id"] == desc[1]
    everything = [f.id for f in client.files.list()]
    assert set(everything) == {*ids, batch_id}
    batch = client.files.retrieve(batch_id)
    assert batch.expires_at is not None and batch.expires_at > batch.created_at


def test_preference_and_invalid_datasets_are_stored_with_reports(server: Server) -> None:
    client = server.openai("alpha")
    pref = client.files.create(file=("pref.jsonl", preference_jsonl(12)), purpose="fine-tune")
    headers = {"authorization": f"Bearer {server.key('alpha')}"}
    assert httpx.get(f"{server.base_url}/v1/files/{pref.id}/report", headers=headers).json()["format"] == "preference"

    broken = b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n'
    bad = client.files.create(file=("bad.jsonl", broken), purpose="fine-tune")
    assert client.files.content(bad.id).read() == broken  # stored even though it cannot train
    report = httpx.get(f"{server.base_url}/v1/files/{bad.id}/report", headers=headers).json()
    assert report["can_train"] is False
    assert {(e["line"], e["code"]) for e in report["errors"]} >= {
        (1, "example_missing_assistant_message"),
        (2, "invalid_json"),
    }
    assert bad.status_details  # says why it cannot train


def test_bad_requests_use_the_error_envelope(server: Server) -> None:
    client = server.openai("alpha")
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(file=("x.jsonl", chat_jsonl()), purpose="nonsense")  # type: ignore[arg-type]
    assert err.value.param == "purpose" and err.value.type == "invalid_request_error"
    headers = {"authorization": f"Bearer {server.key('alpha')}"}
    missing = httpx.post(
        f"{server.base_url}/v1/files",
        headers=headers,
        data={"purpose": "fine-tune"},
        files={"other": ("a", b"x")},
    )
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    with pytest.raises(openai.BadRequestError) as err:
        client.files.create(
            file=("x.jsonl", chat_jsonl()),
            purpose="fine-tune",
            expires_after={"anchor": "created_at", "seconds": 5},
        )
    assert err.value.param == "expires_after[seconds]"
    # The OpenAPI document's encoding: expires_after as one JSON part (schema clients send it so).
    for part, status, param in (
        ('{"anchor": "created_at", "seconds": 3600}', 200, None),
        ("{}", 400, "expires_after.anchor"),
        ('{"anchor": "created_at", "seconds": 5}', 400, "expires_after.seconds"),
    ):
        answer = httpx.post(
            f"{server.base_url}/v1/files",
            headers=headers,
            data={"purpose": "batch", "expires_after": part},
            files={"file": ("b.jsonl", b'{"custom_id": "1"}\n')},
        )
        assert answer.status_code == status, answer.text
        assert status == 200 or answer.json()["error"]["param"] == param
    for limit in (0, 10_001):  # 10,000 is TUNEFORGE_LIST_LIMIT_MAX's default, as OpenAI documents
        too_many = httpx.get(f"{server.base_url}/v1/files", headers=headers, params={"limit": limit})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "limit"
    unknown = httpx.get(f"{server.base_url}/v1/nowhere", headers=headers)
    assert unknown.status_code == 404 and set(unknown.json()["error"]) == {"message", "type", "param", "code"}
    assert unknown.headers["x-request-id"].startswith("req_")


def test_every_v1_route_needs_a_valid_key(server: Server) -> None:
    for headers in ({}, {"authorization": "Bearer sk-tf-wrong"}, {"authorization": "Basic abc"}):
        response = httpx.get(f"{server.base_url}/v1/files", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-tf-nope").files.list()
