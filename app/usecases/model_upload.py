"""Upload of an existing PEFT LoRA adapter (POST /v1/models): checked, unpacked and registered as a project model.

An archive (.tar, .tar.gz or .zip) of an adapter directory becomes a servable `fine_tuned` model after these
checks, all torch-free: the archive is safe (no absolute path, no '..', no link or device, size and member caps),
the weights are safetensors (no pickle anywhere), adapter_config.json is a LoRA config within the operator's rank
and target-module limits, and every tensor is a LoRA factor whose shape fits the chosen base model (read from the
safetensors headers of both). A TuneForge manifest.json then pins the base's content and tokenizer hashes, so
serving's manifest check accepts it like a trained adapter. Any refusal leaves nothing behind.
"""

from __future__ import annotations

import json
import lzma
import os
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sqlalchemy.orm import Session

from app.core.errors import InvalidRequest, PayloadTooLarge, Unavailable
from app.core.ids import new_id, now_ns, ns_to_s
from app.core.settings import Settings
from app.core.storage import fsync_dir
from app.db.models import RegisteredModel
from app.db.session import Database
from app.wire.models import ModelObject
from engine.manifest import ArtifactManifest, content_hash, tokenizer_hash

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
UPLOADS_DIR = "uploaded-models"
SUFFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
FORM_FIELDS = frozenset({"base_model", "suffix"})
# Formats that unpickle (run code) when loaded, or that serving would not read: refused wherever they appear.
REFUSED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".npy", ".npz")
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32"})
_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?:(?P<linear>lora_[AB])\.weight|(?P<embedding>lora_embedding_[AB]))$")


def _refuse(message: str, code: str = "invalid_adapter", param: str | None = "file") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


class ArchiveUpload:
    """The archive part as it streams in: written to a temp file under the uploads folder, under the size cap."""

    def __init__(self, settings: Settings) -> None:
        self._cap = settings.max_adapter_archive_bytes
        folder = settings.data_dir / UPLOADS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f".incoming-{uuid.uuid4().hex}.part"
        self._handle: IO[bytes] | None = self.path.open("wb")
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._handle is None:
            raise RuntimeError("upload already closed")
        if self.size + len(chunk) > self._cap:
            self.abort()
            raise PayloadTooLarge(f"The adapter archive exceeds the limit of {self._cap} bytes.", param="file")
        self._handle.write(chunk)
        self.size += len(chunk)

    def close(self) -> None:
        """The body ended: flush what was received so it can be read back."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def abort(self) -> None:
        """Drop the temp file (after use, or when the request fails)."""
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class UploadForm:
    """The text fields of the multipart body (the archive itself streamed to a temp file)."""

    fields: dict[str, str]
    file_seen: bool


@dataclass(frozen=True)
class _Member:
    """One regular file of the archive: its path inside it, its declared size and how to read it."""

    name: str
    size: int
    open: Callable[[], IO[bytes]]


# ---- the archive -----------------------------------------------------------------------------------------------


def _safe_name(raw: str) -> str:
    """An archive member's path, normalised; refused when absolute, climbing out or otherwise odd."""
    if "\\" in raw or "\0" in raw:
        raise _refuse(f"The archive holds an entry with an unsafe name: {raw[:80]!r}.", "unsafe_archive")
    path = PurePosixPath(raw)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", raw):
        raise _refuse(f"The archive holds an absolute path: {raw[:80]!r}.", "unsafe_archive")
    if ".." in path.parts:
        raise _refuse(f"The archive holds a path that climbs out of it ('..'): {raw[:80]!r}.", "unsafe_archive")
    return "/".join(p for p in path.parts if p not in ("", "."))


def _zip_members(zf: zipfile.ZipFile) -> Iterator[tuple[str, bool, int, Callable[[], IO[bytes]]]]:
    def opener(info: zipfile.ZipInfo) -> Callable[[], IO[bytes]]:
        return lambda: zf.open(info)

    for info in zf.infolist():
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(f"The archive holds a symbolic link: {info.filename[:80]!r}.", "unsafe_archive")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: the writer set no file type
            raise _refuse(f"The archive holds a special file: {info.filename[:80]!r}.", "unsafe_archive")
        yield info.filename, info.is_dir(), info.file_size, opener(info)


def _tar_members(tf: tarfile.TarFile) -> Iterator[tuple[str, bool, int, Callable[[], IO[bytes]]]]:
    def opener(m: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
        def open_member() -> IO[bytes]:
            handle = tf.extractfile(m)
            assert handle is not None  # a regular file always has content
            return handle

        return open_member

    for m in tf:
        if m.issym() or m.islnk():
            raise _refuse(f"The archive holds a link: {m.name[:80]!r}.", "unsafe_archive")
        if not (m.isreg() or m.isdir()):
            raise _refuse(f"The archive holds a special file: {m.name[:80]!r}.", "unsafe_archive")
        yield m.name, m.isdir(), m.size, opener(m)


@contextmanager
def _open_archive(path: Path, settings: Settings) -> Iterator[list[_Member]]:
    """The archive's regular files after the safety checks (names, links, member count, unpacked size)."""
    members: list[_Member] = []
    total = count = 0
    try:
        with _archive_entries(path) as entries:
            for raw, is_dir, size, opener in entries:
                count += 1
                if count > settings.max_adapter_archive_members:
                    raise _refuse(
                        f"The archive holds more than {settings.max_adapter_archive_members} entries.",
                        "archive_too_large",
                    )
                name = _safe_name(raw)
                if is_dir or not name:
                    continue
                total += size
                if total > settings.max_adapter_unpacked_bytes:
                    raise _refuse(
                        f"The archive unpacks to more than {settings.max_adapter_unpacked_bytes} bytes.",
                        "archive_too_large",
                    )
                members.append(_Member(name, size, opener))
            yield members
    # OSError: gzip's and bz2's "not a valid stream" (a full disk would read as a bad archive too: rare, and a 400).
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError):
        raise _refuse("The archive is corrupt or truncated.", "invalid_archive") from None


@contextmanager
def _archive_entries(path: Path) -> Iterator[Iterator[tuple[str, bool, int, Callable[[], IO[bytes]]]]]:
    """Recognise the archive by its bytes (not its name): zip, or tar (plain, gzip, bzip2 or xz)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            yield _zip_members(zf)
        return
    if tarfile.is_tarfile(path):
        with tarfile.open(path, mode="r:*") as tf:
            yield _tar_members(tf)
        return
    raise _refuse("The file is not a .tar, .tar.gz or .zip archive of an adapter directory.", "invalid_archive")


def _adapter_root(members: list[_Member]) -> str:
    """The folder of adapter_config.json: the archive's top level or a single folder in it."""
    for m in members:
        if m.name.lower().endswith(REFUSED_WEIGHT_SUFFIXES):
            raise _refuse(
                f"The archive holds {PurePosixPath(m.name).name!r}: only safetensors weights are accepted "
                "(pickle-based files such as .bin or .pt are refused); remove it and upload again.",
                "unsafe_weights",
            )
    roots = sorted(str(PurePosixPath(m.name).parent) for m in members if PurePosixPath(m.name).name == ADAPTER_CONFIG)
    roots = [r for r in roots if r == "." or "/" not in r]
    if len(roots) != 1:
        why = "no" if not roots else "more than one"
        raise _refuse(f"The archive holds {why} {ADAPTER_CONFIG} at its top level (or in one folder there).")
    root = roots[0]
    if not any(m.name == _join(root, ADAPTER_WEIGHTS) for m in members):
        raise _refuse(f"The archive holds no {ADAPTER_WEIGHTS} next to {ADAPTER_CONFIG} (safetensors only).")
    return root


def _join(root: str, name: str) -> str:
    return name if root == "." else f"{root}/{name}"


def _extract(member: _Member, target: Path, limit: int) -> None:
    """Copy one member out, never writing more than its declared size (nor the unpacked cap)."""
    written = 0
    with member.open() as src, target.open("wb") as dst:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > min(member.size, limit):
                raise _refuse("The archive is corrupt: an entry is larger than it declares.", "invalid_archive")
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())


# ---- the adapter -----------------------------------------------------------------------------------------------


def _lora_config(raw: bytes, settings: Settings) -> dict[str, Any]:
    """adapter_config.json as a dict, refused unless it is a LoRA config serving (and vLLM) can load."""
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _refuse(f"{ADAPTER_CONFIG} is not valid JSON.") from None
    if not isinstance(config, dict):
        raise _refuse(f"{ADAPTER_CONFIG} must be a JSON object.")
    if config.get("peft_type") != "LORA":
        raise _refuse(f'{ADAPTER_CONFIG}: peft_type must be "LORA" (only LoRA adapters can be uploaded).')
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        raise _refuse(f'{ADAPTER_CONFIG}: task_type must be "CAUSAL_LM".')
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= settings.max_adapter_rank:
        raise _refuse(f"{ADAPTER_CONFIG}: r must be an integer from 1 to {settings.max_adapter_rank}.")
    for name, pattern_rank in (config.get("rank_pattern") or {}).items():
        if not isinstance(pattern_rank, int) or not 1 <= pattern_rank <= settings.max_adapter_rank:
            raise _refuse(f"{ADAPTER_CONFIG}: rank_pattern[{str(name)[:40]!r}] exceeds {settings.max_adapter_rank}.")
    alpha = config.get("lora_alpha")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise _refuse(f"{ADAPTER_CONFIG}: lora_alpha must be a positive number.")
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise _refuse(f"{ADAPTER_CONFIG}: target_modules must be a list of module names (a regex is not accepted).")
    allowed = {t.strip() for t in settings.adapter_target_modules.split(",") if t.strip()}
    extra = sorted(set(targets) - allowed)
    if extra:
        raise _refuse(f"{ADAPTER_CONFIG}: target_modules {extra[:5]} are not allowed here; allowed: {sorted(allowed)}.")
    if config.get("modules_to_save"):
        raise _refuse(f"{ADAPTER_CONFIG}: modules_to_save is not supported (full copies of base layers).")
    if config.get("use_dora"):
        raise _refuse(f"{ADAPTER_CONFIG}: DoRA adapters (use_dora) are not supported.")
    if config.get("bias", "none") != "none":
        raise _refuse(f'{ADAPTER_CONFIG}: bias must be "none".')
    if config.get("fan_in_fan_out"):
        raise _refuse(f"{ADAPTER_CONFIG}: fan_in_fan_out adapters are not supported.")
    return config


def _shapes(path: Path) -> dict[str, tuple[list[int], str]]:
    """Tensor name -> (shape, dtype) from a safetensors header, without reading the tensors."""
    # Imported here: `import app.main` stays free of the weight libraries (tests/test_import_boundaries.py).
    from safetensors import safe_open

    out: dict[str, tuple[list[int], str]] = {}
    with safe_open(str(path), framework="numpy") as fh:
        names = fh.keys()
        for key in names:
            tensor = fh.get_slice(key)
            out[key] = (list(tensor.get_shape()), str(tensor.get_dtype()))
    return out


def _check_tensors(weights: Path, config: dict[str, Any], base_dir: Path) -> None:
    """Every tensor is a LoRA factor of an allowed module of the base, with shapes that fit it."""
    from safetensors import SafetensorError

    try:
        adapter = _shapes(weights)
    except (SafetensorError, OSError, ValueError):
        raise _refuse(f"{ADAPTER_WEIGHTS} is not a valid safetensors file.") from None
    if not adapter:
        raise _refuse(f"{ADAPTER_WEIGHTS} holds no tensors.")
    base: dict[str, tuple[list[int], str]] = {}
    for f in sorted(base_dir.glob("*.safetensors")):
        base.update(_shapes(f))
    modules: dict[str, dict[str, list[int]]] = {}
    for key, (shape, dtype) in adapter.items():
        match = _LORA_KEY.match(key.removeprefix(_PEFT_PREFIX)) if key.startswith(_PEFT_PREFIX) else None
        if match is None:
            raise _refuse(
                f"{ADAPTER_WEIGHTS}: tensor {key[:120]!r} is not a LoRA factor (lora_A/lora_B); full layer copies "
                "(embeddings, lm_head, modules_to_save) are not accepted."
            )
        if dtype not in FLOAT_DTYPES or len(shape) != 2:
            raise _refuse(f"{ADAPTER_WEIGHTS}: tensor {key[:120]!r} must be a 2-D float16/bfloat16/float32 matrix.")
        part = match.group("linear") or match.group("embedding")
        modules.setdefault(match.group("module"), {})[part[-1]] = shape
        modules[match.group("module")]["embedding" if match.group("embedding") else "linear"] = []
    targets = set(config["target_modules"])
    uniform = not config.get("rank_pattern")
    for module, parts in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf not in targets:
            raise _refuse(f"{ADAPTER_WEIGHTS}: module {module[:120]!r} is not in target_modules.")
        if "A" not in parts or "B" not in parts:
            raise _refuse(f"{ADAPTER_WEIGHTS}: module {module[:120]!r} lacks its lora_A or lora_B factor.")
        base_shape = base.get(f"{module}.weight", ([], ""))[0]
        if len(base_shape) != 2:
            raise _refuse(
                f"{ADAPTER_WEIGHTS}: module {module[:120]!r} does not exist in the base model "
                "(the adapter was made for another model)."
            )
        (a_rows, a_cols), (b_rows, b_cols) = parts["A"], parts["B"]
        if "embedding" in parts:  # A [r, vocab], B [dim, r] for an embedding [vocab, dim]
            fits = a_cols == base_shape[0] and b_rows == base_shape[1]
        else:  # A [r, in], B [out, r] for a linear weight [out, in]
            fits = a_cols == base_shape[1] and b_rows == base_shape[0]
        if not fits or a_rows != b_cols:
            raise _refuse(
                f"{ADAPTER_WEIGHTS}: the LoRA factors of {module[:120]!r} (A {parts['A']}, B {parts['B']}) do not "
                f"fit the base model's weight {base_shape}: the adapter was made for another model.",
                "adapter_shape_mismatch",
            )
        if uniform and a_rows != config["r"]:
            raise _refuse(
                f"{ADAPTER_WEIGHTS}: module {module[:120]!r} has rank {a_rows}, the config says r={config['r']}."
            )


# ---- the base model --------------------------------------------------------------------------------------------


def base_dir_for(settings: Settings, base_model: str) -> Path:
    """The local directory serving loads an offered base from (the engine's order: tiny-chat, dir, hub cache)."""
    source = settings.base_model_map[base_model]
    models_dir = settings.data_dir / "models"
    candidates = [Path(source), models_dir / source] if ".." not in Path(source).parts else [Path(source)]
    for path in candidates:
        if path.is_dir() and any(path.glob("*.safetensors")):
            return path
    try:
        from huggingface_hub import snapshot_download

        snap = Path(snapshot_download(source, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))
        if any(snap.glob("*.safetensors")):
            return snap
    except Exception:  # the cache lookup raises several types; all mean "not here (yet)"
        pass
    raise Unavailable(
        f"The base model `{base_model}` is not available on this server yet (it is built or fetched when first "
        "used); try again later.",
        param="base_model",
        retry_after=30,
    )


# ---- the use case ----------------------------------------------------------------------------------------------


def _check_form(settings: Settings, form: UploadForm) -> tuple[str, str]:
    unknown = sorted(set(form.fields) - FORM_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"Unknown form field `{unknown[0][:40]}`; expected file, base_model, suffix.", param=unknown[0][:40]
        )
    if not form.file_seen:
        raise InvalidRequest("Missing the `file` part: an archive of a PEFT adapter directory.", param="file")
    base_model = form.fields.get("base_model", "")
    if base_model not in settings.base_model_map:
        offered = ", ".join(sorted(settings.base_model_map))
        raise InvalidRequest(
            f"`base_model` must be one of the offered base models: {offered}.",
            param="base_model",
            code="model_not_found",
        )
    suffix = form.fields.get("suffix", "uploaded")
    if not SUFFIX_RE.match(suffix):
        raise InvalidRequest("`suffix` must be 1 to 64 letters, digits, '.', '_' or '-'.", param="suffix")
    return base_model, suffix.replace("_", "-")


def _unpack(archive: Path, stage: Path, settings: Settings) -> dict[str, Any]:
    """Unpack adapter_config.json and the weights into `stage` after every archive check; return the config."""
    with _open_archive(archive, settings) as members:
        root = _adapter_root(members)
        by_name = {m.name: m for m in members}
        config_member = by_name[_join(root, ADAPTER_CONFIG)]
        if config_member.size > 1024 * 1024:
            raise _refuse(f"{ADAPTER_CONFIG} is larger than 1 MiB.")
        with config_member.open() as fh:
            config = _lora_config(fh.read(1024 * 1024 + 1), settings)
        _extract(by_name[_join(root, ADAPTER_WEIGHTS)], stage / ADAPTER_WEIGHTS, settings.max_adapter_unpacked_bytes)
    return config


def register_upload(
    db: Database, settings: Settings, project_id: str, project_name: str, archive: ArchiveUpload, form: UploadForm
) -> ModelObject:
    """Check the streamed archive and register its adapter as a model of the project; nothing stays on refusal."""
    try:
        base_model, suffix = _check_form(settings, form)
        base_dir = base_dir_for(settings, base_model)
        model_id = f"ft:{base_model}:{project_name}:{suffix}:{new_id('', 8)}"
        uploads = settings.data_dir / UPLOADS_DIR
        uploads.mkdir(parents=True, exist_ok=True)
        final = uploads / uuid.uuid4().hex
        stage = uploads / f".{final.name}.tmp"
        stage.mkdir()
        try:
            archive.close()
            config = _unpack(archive.path, stage, settings)
            _check_tensors(stage / ADAPTER_WEIGHTS, config, base_dir)
            public_name = settings.public_base_model_name(base_model)
            # Portable like a trained adapter: the base named by its public name, never a path on some machine.
            config = {**config, "base_model_name_or_path": public_name, "revision": None, "inference_mode": True}
            (stage / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            _manifest(public_name, base_dir).write(stage)
            for f in stage.iterdir():
                with f.open("rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(stage)
            os.rename(stage, final)
            fsync_dir(uploads)
            created = now_ns()
            with db.session() as session:
                _insert(session, model_id, project_id, base_model, str(final), created)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            raise
    finally:
        archive.abort()  # the archive itself is never kept
    return ModelObject(id=model_id, created=ns_to_s(created), owned_by=project_name)


def _manifest(public_name: str, base_dir: Path) -> ArtifactManifest:
    """The manifest serving checks: the base's content and tokenizer hashes, its chat template and stop tokens."""
    tok_config: dict[str, Any] = {}
    if (base_dir / "tokenizer_config.json").is_file():
        tok_config = json.loads((base_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = base_dir / "chat_template.jinja"
    chat_template = template.read_text(encoding="utf-8") if template.is_file() else tok_config.get("chat_template")
    special = {k: v for k, v in tok_config.items() if k.endswith("_token") and isinstance(v, str)}
    eos = special.get("eos_token")
    added: dict[str, int] = {}
    if (base_dir / "tokenizer.json").is_file():
        tokenizer = json.loads((base_dir / "tokenizer.json").read_text(encoding="utf-8"))
        added = {t["content"]: int(t["id"]) for t in tokenizer.get("added_tokens") or [] if "content" in t}
    return ArtifactManifest(
        kind="lora",
        source="uploaded",
        base_model=public_name,
        base_model_sha256=content_hash(base_dir),
        tokenizer_sha256=tokenizer_hash(base_dir),
        chat_template=chat_template if isinstance(chat_template, str) else None,
        special_tokens=special,
        stop_tokens=[eos] if eos else [],
        stop_token_ids=[added[eos]] if eos in added else [],
        step=0,
        trained_tokens=0,
    )


def _insert(session: Session, model_id: str, project_id: str, base_model: str, artifact_dir: str, created: int) -> None:
    session.add(
        RegisteredModel(
            id=model_id,
            project_id=project_id,
            base_model=base_model,
            kind="fine_tuned",
            job_id=None,
            step=None,
            artifact_dir=artifact_dir,
            created_ns=created,
        )
    )
