"""Upload cap with flat memory and no partial files; filenames can never place anything outside storage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.app.datasets import chat_jsonl
from tests.conftest import Server, start_server

MiB = 1024 * 1024
CAP = 2 * MiB


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    handle = start_server(
        tmp_path_factory.mktemp("capped"),
        {
            "TUNEFORGE_MAX_UPLOAD_BYTES": str(CAP),
            "TUNEFORGE_UPLOAD_DRAIN_BYTES": str(512 * MiB),
            "TUNEFORGE_MAX_LINE_BYTES": "4096",
        },
    )
    yield handle
    handle.stop()


def _multipart_stream(boundary: str, total: int) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    line = b'{"messages": [{"role": "user", "content": "' + b"a" * 1000 + b'"}]}\n'
    block = line * (MiB // len(line))
    sent = 0
    while sent < total:
        yield block
        sent += len(block)
    yield f"\r\n--{boundary}--\r\n".encode()


def _stored_files(server: Server) -> list[Path]:
    blobs = server.data_dir / "blobs"
    return [p for p in blobs.rglob("*") if p.is_file()]


def test_upload_past_the_cap_is_413_with_no_leftovers_and_flat_memory(capped_server: Server) -> None:
    headers = {"authorization": f"Bearer {capped_server.key('alpha')}"}
    small = httpx.post(
        f"{capped_server.base_url}/v1/files",
        headers=headers,
        data={"purpose": "fine-tune"},
        files={"file": ("ok.jsonl", chat_jsonl())},
    )
    assert small.status_code == 200
    before_files = _stored_files(capped_server)
    rss_before = capped_server.peak_rss_kib()

    boundary = "tuneforgeboundary"
    response = httpx.post(
        f"{capped_server.base_url}/v1/files",
        headers={**headers, "content-type": f"multipart/form-data; boundary={boundary}"},
        content=_multipart_stream(boundary, 200 * MiB),  # 100x the cap, streamed with chunked encoding
        timeout=120,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert _stored_files(capped_server) == before_files  # no partial object, no temp file
    listed = httpx.get(f"{capped_server.base_url}/v1/files", headers=headers).json()["data"]
    assert [f["id"] for f in listed] == [small.json()["id"]]
    growth_mib = (capped_server.peak_rss_kib() - rss_before) / 1024
    assert growth_mib < 40, f"server peak RSS grew by {growth_mib:.0f} MiB while 200 MiB streamed past it"


def test_sdk_upload_over_the_cap_is_not_retried(capped_server: Server) -> None:
    client = capped_server.openai("alpha")
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", b"x" * (CAP + 1)), purpose="fine-tune")
    assert err.value.status_code == 413


def test_line_length_cap_is_a_setting(capped_server: Server) -> None:
    client = capped_server.openai("alpha")
    long_line = b'{"prompt": "' + b"p" * 5000 + b'", "completion": "c"}\n'
    created = client.files.create(file=("long.jsonl", long_line + chat_jsonl(10)), purpose="fine-tune")
    headers = {"authorization": f"Bearer {capped_server.key('alpha')}"}
    report = httpx.get(f"{capped_server.base_url}/v1/files/{created.id}/report", headers=headers).json()
    assert report["errors"][0]["line"] == 1 and report["errors"][0]["code"] == "line_too_long"


@pytest.mark.parametrize(
    "name",
    [
        "../../../../etc/evil.jsonl",
        "..\\..\\evil.jsonl",
        "/tmp/evil.jsonl",
        "..",
        "a/../../b.jsonl",
        "\x00evil\u202e.jsonl",
    ],
)
def test_client_filename_never_becomes_a_path(server: Server, name: str) -> None:
    client = server.openai("alpha")
    created = client.files.create(file=(name, chat_jsonl()), purpose="fine-tune")
    assert "/" not in created.filename and "\\" not in created.filename and "\x00" not in created.filename
    assert created.filename not in ("", ".", "..")
    stored = server.data_dir / "blobs" / "objects" / created.id
    assert stored.is_file() and stored.read_bytes() == chat_jsonl()
    assert not (server.data_dir.parent / "evil.jsonl").exists()
    assert not Path("/tmp/evil.jsonl").exists()
    assert client.files.content(created.id).read() == chat_jsonl()
