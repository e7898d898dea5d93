"""A TUNEFORGE_ENGINE_COMMAND for tests: the real engine, with a user's cancel or pause landing at the last moment.

It runs `python -m engine ARGS...` and relays its stdout; when the engine reports success, it first asks the API
to cancel or pause the job (as a user clicking just as the run completes) and writes down the answer, then lets
the result through. The plan is a JSON file named by TF_TEST_RACE_PLAN: {"base_url", "key", "action"}; it is
used once (deleted), so a later run of the job (a resume) is the plain engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

import httpx


def _take_plan() -> dict[str, str] | None:
    path = Path(os.environ.get("TF_TEST_RACE_PLAN", "/nonexistent"))
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    path.unlink()
    return dict(plan)


def _ask(plan: dict[str, str], job_id: str) -> None:
    answer = httpx.post(
        f"{plan['base_url']}/v1/fine_tuning/jobs/{job_id}/{plan['action']}",
        headers={"authorization": f"Bearer {plan['key']}"},
        timeout=60,
    )
    answered = Path(os.environ["TF_TEST_RACE_PLAN"] + ".answer")
    answered.write_text(json.dumps({"code": answer.status_code, "status": answer.json().get("status")}))


def main() -> int:
    args = sys.argv[1:]  # train SPEC --control-dir DIR
    job_id = Path(args[1]).parent.parent.name  # <data_dir>/jobs/<job id>/run-<n>/spec.json
    plan = _take_plan()
    child = subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE)

    def forward(sig: int, _frame: FrameType | None) -> None:  # the supervisor's cancel goes on to the engine
        child.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    assert child.stdout is not None
    for raw in child.stdout:
        event = json.loads(raw) if raw.strip().startswith(b"{") else {}
        if plan is not None and event.get("type") == "result" and event.get("status") == "succeeded":
            _ask(plan, job_id)
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
