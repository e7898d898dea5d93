"""One tiny-chat build per test run, shared by every server and engine test through hard links.

Building tiny-chat pretrains it (minutes), so the suite builds it once, under the directory named by
TUNEFORGE_TEST_MODEL_CACHE (conftest points it at a fresh temporary folder for each run unless it is set; set it
to a lasting folder to reuse the build across local runs: the folder is keyed by the recipe's source files).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

CACHE_ENV = "TUNEFORGE_TEST_MODEL_CACHE"
REPO = Path(__file__).resolve().parents[1]
# Everything that decides tiny-chat's bytes: a change to any of them means a new build.
RECIPE_SOURCES = (
    "engine/tinychat.py",
    "engine/tinychat_bpe.py",
    "engine/pretrain.py",
    "engine/skills.py",
    "engine/corpus.py",
    "engine/chat.py",
    "engine/assets/corpus.txt",
)


def _key() -> str:
    h = hashlib.sha256()
    for name in RECIPE_SOURCES:
        h.update((REPO / name).read_bytes())
    return h.hexdigest()[:16]


def cached_tiny_chat() -> Path:
    """The shared build, made on first use (a file lock keeps concurrent first uses to one build)."""
    from engine.models import ensure_base_model

    root = Path(os.environ[CACHE_ENV]) / _key()
    return ensure_base_model("tiny-chat", root)


def seed_tiny_chat(data_dir: Path) -> Path:
    """Give data_dir a models/tiny-chat made of hard links to the shared build (a copy across filesystems)."""
    target = data_dir / "models" / "tiny-chat"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        source = cached_tiny_chat()
        try:
            shutil.copytree(source, target, copy_function=os.link)
        except OSError:
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(source, target)
    return target
