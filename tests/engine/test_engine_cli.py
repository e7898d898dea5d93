"""`python -m engine train` as the worker runs it: JSON events on stdout, exit codes, pause and cancel."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.checkpoint import verify_checkpoint
from tests.engine.engine_helpers import SUBPROCESS_ENV, secret_rows, spec, write_jsonl

REPO = Path(__file__).resolve().parents[2]


def _run(spec_dict: dict[str, Any], tmp: Path, control: Path | None = None) -> tuple[int, list[dict[str, Any]]]:
    path = tmp / f"spec-{len(list(tmp.glob('spec-*')))}.json"
    path.write_text(json.dumps(spec_dict))
    cmd = [sys.executable, "-m", "engine", "train", str(path)]
    if control is not None:
        cmd += ["--control-dir", str(control)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300, env=SUBPROCESS_ENV)
    lines = proc.stdout.decode().splitlines()
    events = [json.loads(line) for line in lines]  # every stdout line must be one JSON event
    return proc.returncode, events


def test_invalid_spec_exits_2_naming_the_field(tmp_path: Path) -> None:
    bad = spec(tmp_path, tmp_path / "x.jsonl", hp={"batch_size": -1})
    rc, events = _run(bad, tmp_path)
    assert rc == 2 and len(events) == 1
    assert events[0]["type"] == "result" and events[0]["status"] == "failed"
    assert "hyperparameters.batch_size" in events[0]["error"]["message"]


def test_pause_checkpoints_then_exits_3_and_resume_finishes(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    control = tmp_path / "control"
    control.mkdir()
    (control / "pause").touch()  # present from the start: the run pauses at its first step boundary
    s = spec(tmp_path, data, hp={"n_epochs": 2, "batch_size": 4})
    rc, events = _run(s, tmp_path, control)
    assert rc == 3, events[-1]
    assert events[-1]["type"] == "result" and events[-1]["status"] == "paused"
    ckpt = next(e for e in events if e["type"] == "checkpoint")  # announced before the result
    assert events[-1]["checkpoint"] == {k: ckpt[k] for k in ("step", "path", "sha256")}
    assert verify_checkpoint(ckpt["path"]) == ckpt["sha256"]
    assert not (tmp_path / "out" / "adapter").exists()

    (control / "pause").unlink()
    rc, events = _run({**s, "resume_from": ckpt["path"]}, tmp_path, control)
    assert rc == 0, events[-1]
    assert events[-1]["status"] == "succeeded" and Path(events[-1]["adapter_dir"]).is_dir()
    assert [e["step"] for e in events if e["type"] == "metrics"] == list(range(ckpt["step"] + 1, 5))


def test_cancel_exits_4_and_writes_nothing(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    control = tmp_path / "control"
    control.mkdir()
    (control / "cancel").touch()
    rc, events = _run(spec(tmp_path, data, hp={"n_checkpoints": 3}), tmp_path, control)
    assert rc == 4 and events[-1]["status"] == "cancelled" and events[-1]["checkpoint"] is None
    out = tmp_path / "out"
    assert not (out / "checkpoints").exists() and not (out / "adapter").exists()
    assert not out.exists() or not any(out.iterdir())  # nothing at all: no checkpoint, adapter, manifest or CSV


@pytest.mark.parametrize(("sig", "code", "status"), [(signal.SIGTERM, 4, "cancelled"), (signal.SIGUSR1, 3, "paused")])
def test_signals_cancel_or_pause(tmp_path: Path, sig: signal.Signals, code: int, status: str) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", secret_rows(8))
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec(tmp_path, data, hp={"n_epochs": 100, "batch_size": 1})))
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "train", str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=SUBPROCESS_ENV,
    )
    assert proc.stdout is not None
    events = []
    for line in proc.stdout:  # wait until training is really under way, then signal it
        events.append(json.loads(line))
        if events[-1]["type"] == "metrics":
            proc.send_signal(sig)
            break
    events += [json.loads(line) for line in proc.stdout]
    assert proc.wait(timeout=120) == code
    assert events[-1]["status"] == status
    assert not (tmp_path / "out" / "adapter").exists()
    ckpts = [e for e in events if e["type"] == "checkpoint"]
    if status == "paused":
        assert ckpts and events[-1]["checkpoint"]["path"] == ckpts[-1]["path"]
        verify_checkpoint(ckpts[-1]["path"])
    else:
        assert not ckpts and not (tmp_path / "out" / "checkpoints").exists()
