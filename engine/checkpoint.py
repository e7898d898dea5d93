"""Atomic, verifiable checkpoint directories: temp dir, fsync each file, MANIFEST.json last, rename, fsync parent."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from engine.fsutil import fsync_dir, fsync_file, sha256_file

MANIFEST = "MANIFEST.json"
_STEP_RE = re.compile(r"^step-(\d+)$")
# Resume state only the newest checkpoint needs: the optimizer's moments (twice the trainable weights) and the
# scheduler. Older checkpoints lose them (strip_state) and stay servable and selectable; MANIFEST.json keeps
# listing them, so a checkpoint's sha256 never changes and a stripped file reads as absent, not as tampering.
STRIPPABLE = ("optimizer.pt", "scheduler.pt")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or does not match its manifest."""


def write_checkpoint(root: Path, step: int, fill: Callable[[Path], None]) -> tuple[Path, str]:
    """Let `fill` write files into a temp dir, seal it with a manifest and rename it to root/step-N.

    Returns the final path and the sha256 of its MANIFEST.json.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".step-{step}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        entries = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                fsync_file(p)
                entries[p.relative_to(tmp).as_posix()] = {"sha256": sha256_file(p), "size": p.stat().st_size}
        data = json.dumps({"step": step, "files": entries}, indent=2, sort_keys=True).encode()
        with (tmp / MANIFEST).open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for d in sorted((p for p in tmp.rglob("*") if p.is_dir()), reverse=True):
            fsync_dir(d)
        fsync_dir(tmp)
        final = root / f"step-{step}"
        if final.exists():  # a resumed run re-reaching a step replaces the older copy
            old = root / f".step-{step}.old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, hashlib.sha256(data).hexdigest()


def verify_checkpoint(path: str | Path) -> str:
    """Check every file against MANIFEST.json (no missing, extra or altered file); return the manifest sha256."""
    root = Path(path)
    man = root / MANIFEST
    if not root.is_dir() or not man.is_file():
        raise CheckpointError(f"{root}: not a checkpoint (no {MANIFEST}); refusing to resume from it")
    raw = man.read_bytes()
    try:
        entries = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{root}: unreadable {MANIFEST}") from err
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    expected = present | (set(entries) & set(STRIPPABLE))
    if expected != set(entries):
        diff = sorted(expected.symmetric_difference(entries))
        raise CheckpointError(f"{root}: files do not match {MANIFEST}: {diff}")
    for name, meta in entries.items():
        if name not in present:
            continue  # stripped resume state (STRIPPABLE)
        if sha256_file(root / name) != meta.get("sha256"):
            raise CheckpointError(f"{root}: {name} does not match its sha256 in {MANIFEST}")
    return hashlib.sha256(raw).hexdigest()


def is_stripped(path: str | Path) -> bool:
    """Whether a checkpoint lost its optimizer/scheduler state (resuming from it restarts the optimizer)."""
    return any(not (Path(path) / name).is_file() for name in STRIPPABLE)


def strip_state(root: Path, newest: Path) -> int:
    """Delete the optimizer/scheduler state of every checkpoint under root but `newest`; return bytes freed."""
    freed = 0
    for _, p in list_checkpoints(root):
        if p.resolve() == newest.resolve():
            continue
        for name in STRIPPABLE:
            f = p / name
            if f.is_file():
                freed += f.stat().st_size
                f.unlink()
        fsync_dir(p)
    return freed


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Sealed checkpoint dirs under root, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune(root: Path, keep: int, protect: Path | Sequence[Path] | None = None) -> None:
    """Delete all but the newest `keep` checkpoints (never the protected ones) and leftover temp dirs."""
    for p in root.glob(".step-*"):
        shutil.rmtree(p, ignore_errors=True)
    kept = {q.resolve() for q in ([protect] if isinstance(protect, Path) else protect or [])}
    ckpts = list_checkpoints(root)
    doomed = ckpts[: max(0, len(ckpts) - keep)]
    for _, p in doomed:
        if p.resolve() not in kept:
            shutil.rmtree(p, ignore_errors=True)
    if doomed:
        fsync_dir(root)
