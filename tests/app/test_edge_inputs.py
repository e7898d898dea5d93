"""No client input is a 5xx: malformed multipart, odd JSON, non-finite numbers, huge values; errors never echo them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.errors import InvalidRequest
from app.usecases.jobs.request import parse_job_request
from tests.app.datasets import chat_jsonl
from tests.app.local_app import LocalApp, local_app

B = "tfboundary"
MiB = 1024 * 1024
DATA = chat_jsonl()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> LocalApp:
    return local_app(tmp_path_factory.mktemp("edge"), max_json_body_bytes=64 * 1024)


def _part(name: bytes, value: bytes, filename: bytes | None = None) -> bytes:
    disposition = b'Content-Disposition: form-data; name="' + name + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return b"--" + B.encode() + b"\r\n" + disposition + b"\r\n\r\n" + value + b"\r\n"


PURPOSE = _part(b"purpose", b"fine-tune")
FILE = _part(b"file", DATA, b"a.jsonl")
END = b"--" + B.encode() + b"--\r\n"
BND = B.encode()

# Each of these answered 500 (and reset the connection) before; each must be a 400 in the error envelope.
MALFORMED = {
    "header line without a colon": b"--" + BND + b'\r\nContent-Disposition form-data; name="file"\r\n\r\nx\r\n' + END,
    "space in a header name": b"--" + BND + b'\r\nContent Disposition: form-data; name="f"\r\n\r\nx\r\n' + END,
    "wrong boundary": b"--zzzzzzzzzz\r\n\r\nx\r\n--zzzzzzzzzz--\r\n",
    "garbage after the boundary": b"--" + BND + b"xx\r\n" + PURPOSE[len(BND) + 4 :] + END,
    "LF-only line ends": PURPOSE.replace(b"\r\n", b"\n") + END.replace(b"\r\n", b"\n"),
    "NUL instead of LF after a header": b"--"
    + BND
    + b'\r\nContent-Disposition: form-data; name="p"\r\x00\r\n\r\n'
    + END,
    "48 MiB part header": b"--"
    + BND
    + b'\r\nContent-Disposition: form-data; name="file"; filename="'
    + b"a" * (48 * MiB)
    + b'"\r\n\r\nx\r\n'
    + END,
    "too many headers in a part": b"--" + BND + b"\r\n" + b"X-A: b\r\n" * 50 + b"\r\nx\r\n" + END,
    "body cut before the closing boundary": PURPOSE + FILE[:-2],
    "file part cut mid-data": PURPOSE + FILE[:-40],
    "empty body": b"",
    "only the closing boundary missing its dashes": PURPOSE + FILE + b"--" + BND + b"\r\n",
    "bytes after the closing dashes": PURPOSE + b"--" + BND + b"-x",
    "non-UTF-8 field name": _part(b"\xff\xfe", b"x") + END,
    "missing content-disposition": b"--" + BND + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n" + END,
    "two file parts": PURPOSE + FILE + FILE + END,
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_multipart_is_a_400_and_leaves_no_file(edge: LocalApp, body: bytes) -> None:
    before = edge.stored_files()
    response = edge.client.post(
        "/v1/files", headers={**edge.headers, "content-type": f"multipart/form-data; boundary={B}"}, content=body
    )
    assert response.status_code == 400, response.text[:300]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
    assert len(response.content) < 1024  # nothing of the body comes back
    assert edge.temp_files() == [] and edge.stored_files() == before


@pytest.mark.parametrize(
    "content_type",
    [
        f"multipart/form-data; boundary={'b' * 300}",  # past the parser's boundary length limit
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "text/plain",
        "",
    ],
)
def test_bad_multipart_content_types_are_400(edge: LocalApp, content_type: str) -> None:
    response = edge.client.post(
        "/v1/files", headers={**edge.headers, "content-type": content_type}, content=PURPOSE + FILE + END
    )
    assert response.status_code == 400, response.text[:300]


def test_a_well_formed_upload_still_works(edge: LocalApp) -> None:
    response = edge.client.post(
        "/v1/files",
        headers={**edge.headers, "content-type": f"multipart/form-data; boundary={B}"},
        content=PURPOSE + FILE + END + b"\r\nepilogue is allowed\r\n",
    )
    assert response.status_code == 200, response.text
    assert response.json()["bytes"] == len(DATA)


def test_form_part_count_field_size_and_header_caps_are_settings(tmp_path: Path) -> None:
    edge = local_app(
        tmp_path,
        max_form_parts=4,
        max_form_fields_total_bytes=1000,
        max_form_field_bytes=600,
        max_part_header_bytes=300,
    )
    headers = {**edge.headers, "content-type": f"multipart/form-data; boundary={B}"}

    def post(body: bytes) -> tuple[int, dict[str, object]]:
        response = edge.client.post("/v1/files", headers=headers, content=body)
        return response.status_code, response.json()["error"] if response.status_code != 200 else {}

    assert post(PURPOSE + _part(b"x1", b"a") + FILE + END)[0] == 200  # 3 parts
    status, error = post(PURPOSE + b"".join(_part(f"x{i}".encode(), b"a") for i in range(4)) + FILE + END)
    assert status == 400 and "more than 4 parts" in str(error["message"])
    status, error = post(PURPOSE + _part(b"x1", b"a" * 601) + FILE + END)
    assert status == 413 and error["param"] == "x1"
    status, error = post(PURPOSE + _part(b"x1", b"a" * 500) + _part(b"x2", b"a" * 500) + FILE + END)
    assert status == 413 and "together" in str(error["message"])
    status, error = post(PURPOSE + _part(b"file", DATA, b"n" * 400) + END)
    assert status == 400 and "header" in str(error["message"])  # the parser's per-line cap or ours per part
    many_lines = b"".join(b"X-H%d: " % i + b"h" * 120 + b"\r\n" for i in range(3))  # each line under the cap
    status, error = post(PURPOSE + FILE.replace(b"\r\n\r\n", b"\r\n" + many_lines + b"\r\n", 1) + END)
    assert status == 400 and "exceed 300 bytes" in str(error["message"])
    assert edge.temp_files() == []


def _job_body(hyperparameters: str, *, legacy: bool = False) -> bytes:
    if legacy:
        return f'{{"model": "tiny-chat", "training_file": "file-x", "hyperparameters": {hyperparameters}}}'.encode()
    method = f'{{"type": "supervised", "supervised": {{"hyperparameters": {hyperparameters}}}}}'
    return f'{{"model": "tiny-chat", "training_file": "file-x", "method": {method}}}'.encode()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (_job_body('{"max_grad_norm": Infinity}'), "method.supervised.hyperparameters.max_grad_norm"),
        (_job_body('{"learning_rate_multiplier": NaN}'), "method.supervised.hyperparameters.learning_rate_multiplier"),
        (_job_body('{"learning_rate": 1e999}'), "method.supervised.hyperparameters.learning_rate"),
        (_job_body('{"grad_norm_limit": -Infinity}'), "method.supervised.hyperparameters.grad_norm_limit"),
        (_job_body('{"max_grad_norm": 1e999}', legacy=True), "hyperparameters.max_grad_norm"),
        (b'{"model": "tiny-chat", "training_file": "file-x", "seed": 1e999}', "seed"),
    ],
)
def test_non_finite_numbers_are_a_400_naming_the_param_and_create_no_job(
    tmp_path: Path, body: bytes, param: str
) -> None:
    edge = local_app(tmp_path)
    uploaded = edge.client.post(
        "/v1/files", headers=edge.headers, data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", DATA)}
    )
    assert uploaded.status_code == 200
    body = body.replace(b"file-x", uploaded.json()["id"].encode())
    response = edge.client.post("/v1/fine_tuning/jobs", headers=edge.headers, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    listed = edge.client.get("/v1/fine_tuning/jobs", headers=edge.headers)
    assert listed.status_code == 200 and listed.json()["data"] == []


@pytest.mark.parametrize("name", ["max_grad_norm", "learning_rate_multiplier", "warmup_ratio", "lora_dropout", "beta"])
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan"), 10**400])
def test_job_validation_refuses_non_finite_hyperparameters_whatever_parsed_them(name: str, value: object) -> None:
    """The second line of defence: a body parsed by plain json.loads must not pass either."""
    body = {
        "model": "tiny-chat",
        "training_file": "file-x",
        "method": {"type": "dpo", "dpo": {"hyperparameters": {name: value}}},
    }
    with pytest.raises(InvalidRequest) as err:
        parse_job_request(body)
    assert err.value.param == f"method.dpo.hyperparameters.{name}"


BIG = "A" * (1 * MiB)


@pytest.mark.parametrize(
    "body",
    [
        {BIG: 1},
        {"model": [BIG]},
        {"model": BIG, "training_file": "file-x"},
        {"model": "tiny-chat", "training_file": BIG},
        {"model": "tiny-chat", "training_file": "file-x", "method": {"type": BIG}},
        {"model": "tiny-chat", "training_file": "file-x", "method": {"type": "supervised", BIG: 1}},
        {"model": "tiny-chat", "training_file": "file-x", "hyperparameters": {BIG: 1}},
        {"model": "tiny-chat", "training_file": "file-x", "metadata": {BIG: "x"}},
        {"model": "tiny-chat", "training_file": "file-x", "suffix": BIG},
        [BIG],
    ],
)
def test_job_errors_never_echo_a_large_value(tmp_path_factory: pytest.TempPathFactory, body: object) -> None:
    edge = local_app(tmp_path_factory.mktemp("echo"), max_json_body_bytes=4 * MiB)
    response = edge.client.post("/v1/fine_tuning/jobs", headers=edge.headers, content=json.dumps(body).encode())
    assert 400 <= response.status_code < 500, response.text[:300]
    assert len(response.content) < 1024, response.text[:300]
    assert "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" not in response.text


def test_other_errors_never_echo_a_large_value(edge: LocalApp) -> None:
    big = "B" * 60_000
    purpose = edge.client.post(
        "/v1/files", headers=edge.headers, data={"purpose": big}, files={"file": ("t.jsonl", DATA)}
    )
    unknown_url = edge.client.get("/v1/" + "c" * 8000, headers=edge.headers)
    missing = edge.client.get("/v1/files/" + "d" * 8000, headers=edge.headers)
    for response in (purpose, unknown_url, missing):
        assert 400 <= response.status_code < 500 and len(response.content) < 1024, response.text[:300]


def _chunks(payload: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    for start in range(0, len(payload), size):
        yield payload[start : start + size]


@pytest.mark.parametrize(
    ("path", "content_type", "chunked"),
    [
        ("/v1/fine_tuning/jobs", "application/json", False),
        ("/v1/fine_tuning/jobs", "text/plain", False),
        ("/v1/fine_tuning/jobs", "text/plain", True),
        ("/v1/chat/completions", None, False),
        ("/v1/chat/completions", None, True),
        ("/v1/completions", "application/octet-stream", True),
    ],
)
def test_every_body_is_capped_whatever_its_content_type(
    edge: LocalApp, path: str, content_type: str | None, chunked: bool
) -> None:
    payload = b'{"model": "' + b"x" * (256 * 1024) + b'"}'
    headers = dict(edge.headers)
    if content_type is not None:
        headers["content-type"] = content_type
    content = _chunks(payload) if chunked else payload
    response = edge.client.post(path, headers=headers, content=content)
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["code"] == "payload_too_large" and len(response.content) < 1024
