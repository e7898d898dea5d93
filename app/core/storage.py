"""Local blob storage: streamed, size-capped, atomic (temp name, fsync, rename) writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from app.core.errors import PayloadTooLarge


def fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IncomingBlob:
    """A file being received; nothing is visible under its final name until commit()."""

    def __init__(self, store: BlobStore, max_bytes: int) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self.temp_path = store.incoming_dir / f"{uuid.uuid4().hex}.part"
        self._handle: BinaryIO | None = open(self.temp_path, "wb")  # noqa: SIM115  (closed in commit/abort)
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._handle is None:
            raise RuntimeError("blob already closed")
        if self.size + len(chunk) > self._max_bytes:
            self.abort()
            raise PayloadTooLarge(f"File exceeds the upload limit of {self._max_bytes} bytes.", param="file")
        self._handle.write(chunk)
        self._digest.update(chunk)
        self.size += len(chunk)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def commit(self, key: str) -> Path:
        """fsync, rename into place under a server-chosen key, fsync the directory."""
        if self._handle is None:
            raise RuntimeError("blob already closed")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        final = self._store.path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.temp_path, final)
        fsync_dir(final.parent)
        return final

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()


class BlobStore:
    """Blobs live under root/objects/<key>; keys are server-generated, never client filenames."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.objects_dir = self.root / "objects"
        self.incoming_dir = self.root / "incoming"
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        self.incoming_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        path = (self.objects_dir / key).resolve()
        if not path.is_relative_to(self.objects_dir):
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def begin(self, max_bytes: int) -> IncomingBlob:
        return IncomingBlob(self, max_bytes)

    def put_bytes(self, key: str, data: bytes) -> tuple[Path, str]:
        """Store a small blob atomically; returns its path and sha256."""
        blob = self.begin(max_bytes=max(len(data), 1))
        blob.write(data)
        return blob.commit(key), blob.sha256

    def open(self, key: str) -> BinaryIO:
        return open(self.path_for(key), "rb")  # noqa: SIM115  (caller closes)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        with self.open(key) as handle:
            while chunk := handle.read(chunk_size):
                yield chunk

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(key).unlink()

    def sweep_incoming(self) -> int:
        """Remove temp files left by a crash mid-upload; returns how many were removed."""
        removed = 0
        for path in self.incoming_dir.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed
