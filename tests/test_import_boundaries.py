"""The package arrows hold: the control plane starts without the ML stack; the import contracts pass."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The API image lacks the ML stack, so `import app.main` must reach none of it, nor the worker/serve side.
HEAVY = ("torch", "transformers", "peft", "accelerate", "safetensors", "worker", "serve", "tuneforge")

PROBE = """
import json, sys
import app.main
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))
"""


def loaded_top_level_modules(code: str) -> set[str]:
    """Top-level modules a fresh interpreter holds after running code (stdout's last line, JSON)."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_import_app_main_loads_no_ml_stack_worker_or_serve() -> None:
    loaded = loaded_top_level_modules(PROBE)
    assert "app" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_import_linter_contracts_pass() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    # Every contract in pyproject.toml was checked, none silently dropped.
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    summary = re.search(r"Contracts: (\d+) kept, (\d+) broken", done.stdout)
    assert summary is not None, done.stdout[-2000:]
    assert (int(summary.group(1)), int(summary.group(2))) == (len(contracts), 0)
