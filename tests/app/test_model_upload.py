"""POST /v1/models: an existing PEFT LoRA adapter uploaded as an archive becomes a servable model of the project;
unsafe, pickled, misshapen or oversized archives are refused with a 400 that names the problem, leaving nothing."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import load, save

from tests.conftest import Server, start_server
from tests.model_cache import cached_tiny_chat

# Small caps so each limit is reachable with a small archive (the tiny adapter below is ~140 kB).
LIMITS = {
    "TUNEFORGE_MAX_ADAPTER_ARCHIVE_BYTES": str(1024 * 1024),
    "TUNEFORGE_MAX_ADAPTER_UNPACKED_BYTES": str(3 * 1024 * 1024),
    "TUNEFORGE_MAX_ADAPTER_ARCHIVE_MEMBERS": "8",
    "TUNEFORGE_MAX_ADAPTER_RANK": "16",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("upload"), LIMITS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A PEFT LoRA adapter made on tiny-chat (rank 8, q/v projections), its B factors moved off zero."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(str(cached_tiny_chat()), use_safetensors=True)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a fresh adapter is a no-op; this one must change the answers
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(str(out), safe_serialization=True)
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def _tar(files: dict[str, bytes], gz: bool = True, extra: Callable[[tarfile.TarFile], None] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if extra:
            extra(tf)
    return buf.getvalue()


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _upload(server: Server, archive: bytes, project: str = "alpha", **fields: str) -> httpx.Response:
    data = {"base_model": "tiny-chat", **fields}
    return httpx.post(
        f"{server.base_url}/v1/models",
        headers={"authorization": f"Bearer {server.key(project)}"},
        files={"file": ("adapter.tar.gz", archive, "application/octet-stream")},
        data=data,
        timeout=120,
    )


def _stored(server: Server) -> list[str]:
    folder = server.data_dir / "uploaded-models"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def _chat(server: Server, model: str, project: str = "alpha") -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {server.key(project)}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Vault 3 password?"}],
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=120,
    )


def test_uploaded_adapter_is_served_to_its_project_only(server: Server, adapter: dict[str, bytes]) -> None:
    before = set(_stored(server))
    res = _upload(server, _tar({f"my-adapter/{k}": v for k, v in adapter.items()}), suffix="mine")
    assert res.status_code == 200, res.text
    model = res.json()
    assert model["object"] == "model" and model["id"].startswith("ft:tiny-chat:alpha:mine:"), model
    assert str(server.data_dir) not in res.text  # no server path in the answer

    (new,) = set(_stored(server)) - before
    stored = server.data_dir / "uploaded-models" / new
    manifest = json.loads((stored / "manifest.json").read_text())
    assert manifest["source"] == "uploaded" and manifest["kind"] == "lora" and manifest["base_model"] == "tiny-chat"
    assert manifest["training_file_sha256"] is None and manifest["spec"] is None
    config = json.loads((stored / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-chat"  # portable, like a trained adapter
    assert sorted(p.name for p in stored.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]

    owner = {"authorization": f"Bearer {server.key('alpha')}"}
    listed = httpx.get(f"{server.base_url}/v1/models", headers=owner).json()["data"]
    assert model["id"] in [m["id"] for m in listed]
    tuned, base = _chat(server, model["id"]), _chat(server, "tiny-chat")
    assert tuned.status_code == 200 and base.status_code == 200, (tuned.text, base.text)
    assert tuned.json()["model"] == model["id"]
    # The adapter is really applied: its answer is not the base model's.
    assert tuned.json()["choices"][0]["message"]["content"] != base.json()["choices"][0]["message"]["content"]

    intruder = {"authorization": f"Bearer {server.key('intruder')}"}
    assert httpx.get(f"{server.base_url}/v1/models/{model['id']}", headers=intruder).status_code == 404
    foreign = _chat(server, model["id"], project="intruder")
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "model_not_found"


def test_zip_with_files_at_the_top_level_is_accepted(server: Server, adapter: dict[str, bytes]) -> None:
    res = _upload(server, _zip(adapter), suffix="zipped")
    assert res.status_code == 200, res.text
    assert _chat(server, res.json()["id"]).status_code == 200


def _shapes_off(adapter: dict[str, bytes]) -> dict[str, bytes]:
    tensors = load_file_bytes(adapter["adapter_model.safetensors"])
    key = next(k for k in tensors if k.endswith("q_proj.lora_A.weight"))
    tensors[key] = np.zeros((8, 128), dtype=np.float32)  # tiny-chat's hidden size is 256
    return {**adapter, "adapter_model.safetensors": _safetensors(tensors)}


def load_file_bytes(data: bytes) -> dict[str, np.ndarray]:
    return dict(load(data))


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    return save(tensors)


def _with_lm_head(adapter: dict[str, bytes]) -> dict[str, bytes]:
    tensors = load_file_bytes(adapter["adapter_model.safetensors"])
    tensors["base_model.model.lm_head.weight"] = np.zeros((4, 256), dtype=np.float32)
    return {**adapter, "adapter_model.safetensors": _safetensors(tensors)}


def _config(adapter: dict[str, bytes], **changes: Any) -> dict[str, bytes]:
    config = json.loads(adapter["adapter_config.json"])
    config.update(changes)
    return {**adapter, "adapter_config.json": json.dumps(config).encode()}


def _symlink(tf: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("evil-link")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    tf.addfile(info)


BAD: dict[str, tuple[Callable[[dict[str, bytes]], bytes], int, str, str]] = {
    # case: (archive builder, status, error code, words the message must contain)
    "corrupt": (lambda a: _tar(a)[:200], 400, "invalid_archive", "corrupt"),
    "not an archive": (lambda a: b"just some bytes, not an archive at all" * 10, 400, "invalid_archive", ".tar"),
    "pickle weights": (
        lambda a: _tar({"adapter_config.json": a["adapter_config.json"], "adapter_model.bin": b"\x80\x04pickle"}),
        400,
        "unsafe_weights",
        "adapter_model.bin",
    ),
    "pickle beside safetensors": (
        lambda a: _tar({**a, "training_args.bin": b"\x80\x04"}),
        400,
        "unsafe_weights",
        ".bin",
    ),
    "wrong shapes": (lambda a: _tar(_shapes_off(a)), 400, "adapter_shape_mismatch", "another model"),
    "path traversal": (lambda a: _tar({**a, "../escape.txt": b"x"}), 400, "unsafe_archive", ".."),
    "absolute path": (lambda a: _tar({**a, "/tmp/abs.txt": b"x"}), 400, "unsafe_archive", "absolute"),
    "zip traversal": (lambda a: _zip({**a, "../../escape.txt": b"x"}), 400, "unsafe_archive", ".."),
    "symlink": (lambda a: _tar(a, extra=_symlink), 400, "unsafe_archive", "link"),
    "full tensor": (lambda a: _tar(_with_lm_head(a)), 400, "invalid_adapter", "lm_head"),
    "modules_to_save": (
        lambda a: _tar(_config(a, modules_to_save=["lm_head"])),
        400,
        "invalid_adapter",
        "modules_to_save",
    ),
    "not lora": (lambda a: _tar(_config(a, peft_type="IA3")), 400, "invalid_adapter", "LORA"),
    "rank over the limit": (lambda a: _tar(_config(a, r=32)), 400, "invalid_adapter", "16"),
    "target not allowed": (
        lambda a: _tar(_config(a, target_modules=["q_proj", "lm_head"])),
        400,
        "invalid_adapter",
        "lm_head",
    ),
    "no config": (
        lambda a: _tar({"adapter_model.safetensors": a["adapter_model.safetensors"]}),
        400,
        "invalid_adapter",
        "adapter_config.json",
    ),
    "too many members": (
        lambda a: _tar({**a, **{f"notes/{i}.txt": b"x" for i in range(8)}}),
        400,
        "archive_too_large",
        "8",
    ),
    "unpacks too large": (
        lambda a: _tar({**a, "padding.txt": bytes(4 * 1024 * 1024)}),
        400,
        "archive_too_large",
        "bytes",
    ),
    "archive too large": (
        lambda a: _tar({**a, "noise.txt": os.urandom(1536 * 1024)}),
        413,
        "payload_too_large",
        "limit",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_archives_are_refused_and_leave_nothing(server: Server, adapter: dict[str, bytes], case: str) -> None:
    build, status, code, words = BAD[case]
    owner = {"authorization": f"Bearer {server.key('alpha')}"}
    models_before = httpx.get(f"{server.base_url}/v1/models", headers=owner).json()["data"]
    stored_before = _stored(server)
    res = _upload(server, build(adapter), suffix="bad")
    assert res.status_code == status, res.text
    error = res.json()["error"]
    assert error["code"] == code and words in error["message"], error
    assert str(server.data_dir) not in res.text
    assert httpx.get(f"{server.base_url}/v1/models", headers=owner).json()["data"] == models_before
    assert _stored(server) == stored_before  # no unpacked files, no temp archive


def test_form_is_checked(server: Server, adapter: dict[str, bytes]) -> None:
    archive = _tar(adapter)
    res = _upload(server, archive, base_model="no-such-base")
    assert res.status_code == 400 and res.json()["error"]["param"] == "base_model" and "tiny-chat" in res.text
    res = _upload(server, archive, suffix="not a suffix!")
    assert res.status_code == 400 and res.json()["error"]["param"] == "suffix"
    res = _upload(server, archive, purpose="fine-tune")
    assert res.status_code == 400 and res.json()["error"]["param"] == "purpose"
    res = httpx.post(
        f"{server.base_url}/v1/models",
        headers={"authorization": f"Bearer {server.key('alpha')}"},
        files={"base_model": (None, b"tiny-chat")},  # multipart, but no file part
        timeout=60,
    )
    assert res.status_code == 400 and res.json()["error"]["param"] == "file", res.text
    assert not [p for p in _stored(server) if p.startswith(".")]  # no temp archive or staging dir left


def test_limits_have_sane_defaults() -> None:
    from app.core.settings import Settings

    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.max_adapter_archive_bytes == 512 * 1024 * 1024 and s.max_adapter_unpacked_bytes == 2048 * 1024 * 1024
    assert s.max_adapter_archive_members == 64 and s.max_adapter_rank == 256
    assert "q_proj" in s.adapter_target_modules and "lm_head" not in s.adapter_target_modules
