"""Model download (TuneForge extension): a model's Hugging Face folder, streamed as a tar archive.

The folder is built by `python -m engine export` in a child process (a merge needs torch, which this process never
loads), once per model, manifest and format: it is cached under data_dir/exports and reused by later downloads.
Concurrent downloads of one folder wait for the same build; merges beyond `export_max_concurrent_merges` answer 503.
The archive is streamed in `export_chunk_bytes` pieces, so a download holds one chunk in memory, whatever its size.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shlex
import sys
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from app.core.errors import InvalidRequest, NotFound, ServerError, TuneForgeError, Unavailable
from app.core.settings import Settings
from app.usecases.models import ModelInfo
from engine.manifest import MANIFEST_FILE, ManifestError, read_manifest

log = logging.getLogger("tuneforge.export")

FORMATS = ("adapter", "merged")
COMPRESSIONS = ("none", "gzip")
_EXIT_REFUSED = 3
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True)
class ExportPlan:
    """What one download asks for, checked: the model, its format, where its folder is (or will be) cached."""

    model_id: str
    format: str
    kind: str  # the manifest's: "lora" | "full"
    artifact_dir: Path
    base_source: str
    cache_dir: Path
    gzip: bool

    @property
    def merging(self) -> bool:
        return self.format == "merged" and self.kind == "lora"

    @property
    def archive_root(self) -> str:
        """The archive's top folder: the model id in file-name-safe characters, plus the format."""
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.model_id).strip("-.") + f"-{self.format}"

    @property
    def filename(self) -> str:
        return self.archive_root + (".tar.gz" if self.gzip else ".tar")

    @property
    def media_type(self) -> str:
        return "application/gzip" if self.gzip else "application/x-tar"


def plan_export(settings: Settings, info: ModelInfo, fmt: str | None, compression: str | None) -> ExportPlan:
    """Check the query against the model; each refusal names its parameter (and never a path)."""
    if fmt is not None and fmt not in FORMATS:
        raise InvalidRequest(f"format must be one of {list(FORMATS)}.", param="format")
    if compression is not None and compression not in COMPRESSIONS:
        raise InvalidRequest(f"compression must be one of {list(COMPRESSIONS)}.", param="compression")
    if info.kind == "base":
        if fmt == "adapter":
            raise InvalidRequest(f"`{info.id}` is a base model: it has no adapter.", param="format")
        raise InvalidRequest(
            f"`{info.id}` is a base model; only fine-tuned models and checkpoints can be downloaded.",
            param="model",
            code="model_not_downloadable",
        )
    artifact = Path(info.artifact_dir) if info.artifact_dir else None
    if artifact is None or not artifact.is_dir():
        raise NotFound(f"The weights of model `{info.id}` are no longer stored.", param=None, code="model_not_found")
    try:
        manifest = read_manifest(artifact)
        manifest_sha = hashlib.sha256((artifact / MANIFEST_FILE).read_bytes()).hexdigest()
    except (ManifestError, OSError):
        raise ServerError(f"The stored weights of model `{info.id}` have no readable manifest.") from None
    chosen = fmt or ("adapter" if manifest.kind == "lora" else "merged")
    if chosen == "adapter" and manifest.kind != "lora":
        raise InvalidRequest(f"`{info.id}` is a full fine-tune: it has no adapter; use format=merged.", param="format")
    key = hashlib.sha256(f"{info.id}\0{manifest_sha}\0{chosen}".encode()).hexdigest()[:40]
    return ExportPlan(
        model_id=info.id,
        format=chosen,
        kind=manifest.kind,
        artifact_dir=artifact,
        base_source=settings.base_model_map.get(info.base_model, info.base_model),
        cache_dir=settings.data_dir / "exports" / key,
        gzip=compression == "gzip",
    )


class ExportBuilds:
    """Builds in flight in this process: one per cached folder, and a count of merges against the limit."""

    def __init__(self) -> None:
        self._running: dict[Path, asyncio.Task[None]] = {}
        self._merges = 0

    async def ensure(self, settings: Settings, plan: ExportPlan) -> Path:
        """The plan's folder, built unless cached; concurrent callers share one build."""
        if plan.cache_dir.is_dir():
            return plan.cache_dir
        task = self._running.get(plan.cache_dir)
        if task is None:
            if plan.merging and self._merges >= settings.export_max_concurrent_merges:
                raise Unavailable(
                    f"Every merge slot is busy; retry the download of `{plan.model_id}` later.",
                    retry_after=settings.export_retry_after_s,
                )
            task = asyncio.create_task(self._build(settings, plan))
            self._running[plan.cache_dir] = task
        # shield: a client that hangs up does not kill a build the next download will use
        await asyncio.shield(task)
        return plan.cache_dir

    async def _build(self, settings: Settings, plan: ExportPlan) -> None:
        self._merges += plan.merging
        try:
            await _run_export(settings, plan)
        finally:
            self._merges -= plan.merging
            self._running.pop(plan.cache_dir, None)


BUILDS = ExportBuilds()


def _engine_command(settings: Settings) -> list[str]:
    return shlex.split(settings.engine_command) if settings.engine_command else [sys.executable, "-m", "engine"]


async def _run_export(settings: Settings, plan: ExportPlan) -> None:
    command = [
        *_engine_command(settings),
        "export",
        str(plan.artifact_dir),
        str(plan.cache_dir),
        "--format",
        plan.format,
        "--base",
        plan.base_source,
        "--data-dir",
        str(settings.data_dir),
        "--model-id",
        plan.model_id,
        "--max-memory-mb",
        str(settings.export_merge_max_memory_mb),
    ]
    plan.cache_dir.parent.mkdir(parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=settings.export_timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise Unavailable(f"The export of `{plan.model_id}` took too long; retry later.") from None
    lines = out.decode("utf-8", "replace").strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if proc.returncode == 0 and result.get("status") == "ok":
        log.info(
            "model export built: model=%s format=%s cached=%s seconds=%s peak_rss_mb=%s estimate_mb=%s",
            plan.model_id,
            plan.format,
            result.get("cached"),
            result.get("seconds"),
            result.get("peak_rss_mb"),
            result.get("estimate_mb"),
        )
        return
    if proc.returncode == _EXIT_REFUSED and result.get("status") == "refused":
        raise _refusal(plan, str(result.get("code")), str(result.get("message")))
    log.error("model export of %s failed (exit %s): %s", plan.model_id, proc.returncode, err.decode()[-4000:])
    raise ServerError(f"The export of `{plan.model_id}` failed.")


def _refusal(plan: ExportPlan, code: str, message: str) -> TuneForgeError:
    """The engine's refusal as an API error; its messages name models only (engine.export makes sure)."""
    if code == "merge_too_large":
        return InvalidRequest(message, param="format", code=code)
    if code == "invalid_format":
        return InvalidRequest(message, param="format", code=code)
    if code == "base_unavailable":
        return Unavailable(message, code=code)
    return ServerError(message, code=code)


@dataclass(frozen=True)
class Archive:
    """A tar stream of a folder: its pieces and, when uncompressed, its exact length."""

    chunks: Iterator[bytes]
    length: int | None


def _members(directory: Path, root: str) -> list[tuple[bytes, Path | None, int]]:
    """(tar header, file, size) of the top folder and each file, sorted by name."""
    members: list[tuple[bytes, Path | None, int]] = []
    top = tarfile.TarInfo(root)
    top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, int(directory.stat().st_mtime)
    members.append((top.tobuf(tarfile.PAX_FORMAT), None, 0))
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        info = tarfile.TarInfo(f"{root}/{path.name}")
        stat = path.stat()
        info.size, info.mode, info.mtime = stat.st_size, 0o644, int(stat.st_mtime)
        members.append((info.tobuf(tarfile.PAX_FORMAT), path, stat.st_size))
    return members


def _padding(size: int, unit: int) -> int:
    return -size % unit


def _tar_pieces(members: list[tuple[bytes, Path | None, int]], chunk_bytes: int) -> Iterator[bytes]:
    """What tarfile's stream mode writes (headers, data padded to blocks, two zero blocks, a full record)."""
    written = 0
    for header, path, size in members:
        yield header
        written += len(header)
        if path is None:
            continue
        sent = 0
        with path.open("rb") as fh:
            while sent < size:
                piece = fh.read(min(chunk_bytes, size - sent))
                if not piece:
                    raise OSError("a file of the export shrank while it was streamed")
                sent += len(piece)
                yield piece
        pad = _padding(size, _BLOCK)
        written += size + pad
        if pad:
            yield b"\0" * pad
    end = 2 * _BLOCK
    yield b"\0" * (end + _padding(written + end, _RECORD))


def _tar_length(members: list[tuple[bytes, Path | None, int]]) -> int:
    body = sum(len(h) + size + _padding(size, _BLOCK) for h, _, size in members) + 2 * _BLOCK
    return body + _padding(body, _RECORD)


def _gzipped(pieces: Iterator[bytes]) -> Iterator[bytes]:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    for piece in pieces:
        out = packer.compress(piece)
        if out:
            yield out
    yield packer.flush()


def archive(settings: Settings, plan: ExportPlan, directory: Path) -> Archive:
    """The folder as a tar (gzip when asked), read lazily in export_chunk_bytes pieces."""
    members = _members(directory, plan.archive_root)
    pieces = _tar_pieces(members, settings.export_chunk_bytes)
    if plan.gzip:
        return Archive(_gzipped(pieces), None)
    return Archive(pieces, _tar_length(members))


async def download(
    settings: Settings, info: ModelInfo, fmt: str | None, compression: str | None
) -> tuple[ExportPlan, Archive]:
    """Plan, build (or reuse) and open the archive of a model the caller may see."""
    plan = plan_export(settings, info, fmt, compression)
    directory = await BUILDS.ensure(settings, plan)
    return plan, archive(settings, plan, directory)
