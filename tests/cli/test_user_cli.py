"""The user CLI (`tuneforge files|jobs|models|chat`) driven as a user runs it, against a real `tuneforge serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, start_server
from tests.jobs.helpers import FAST_ENV, chat_lines, logs

TIMEOUT = 300


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # No evaluation: no CLI output shows it (the engine and e2e tests cover it), and it adds two model
    # measurements to every job.
    server = start_server(tmp_path_factory.mktemp("cli"), {**FAST_ENV, "TUNEFORGE_EVAL_ENABLED": "false"})
    yield server
    server.stop()


def run(
    server: Server,
    *args: str,
    project: str = "cli",
    key: str | None = None,
    stdin: str | None = None,
    env_config: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`tuneforge ARGS` as a subprocess; the server comes from TUNEFORGE_BASE_URL/_API_KEY unless told otherwise."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_") or k.startswith("TUNEFORGE_TEST")}
    if env_config:
        env["TUNEFORGE_BASE_URL"] = server.base_url
        env["TUNEFORGE_API_KEY"] = key if key is not None else server.key(project)
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "tuneforge", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def broken_lines() -> bytes:
    """Twelve good chat lines and one broken one at line 5 (a missing assistant answer)."""
    lines = chat_lines(12).decode().splitlines()
    lines.insert(4, json.dumps({"messages": [{"role": "user", "content": "no answer"}]}))
    lines.insert(7, "{not json")
    return ("\n".join(lines) + "\n").encode()


def test_files_upload_list_check_delete(cli_server: Server, tmp_path: Path) -> None:
    good = write(tmp_path, "good.jsonl", chat_lines(12))
    uploaded = run(cli_server, "files", "upload", str(good), "--json")
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = json.loads(uploaded.stdout)["id"]
    assert file_id.startswith("file-")

    listed = run(cli_server, "files", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert file_id in [f["id"] for f in json.loads(listed.stdout)]
    table = run(cli_server, "files", "list")
    assert file_id in table.stdout and "good.jsonl" in table.stdout

    checked = run(cli_server, "files", "check", file_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "can train" in checked.stdout and "chat" in checked.stdout

    deleted = run(cli_server, "files", "delete", file_id, "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted"] is True


def test_files_check_exits_1_on_a_broken_file_and_names_its_lines(cli_server: Server, tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.jsonl", broken_lines())
    # a local path is uploaded first, then checked
    checked = run(cli_server, "files", "check", str(broken))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "cannot train" in checked.stdout
    assert "invalid_json" in checked.stdout or "json" in checked.stdout.lower()
    as_json = run(cli_server, "files", "check", str(broken), "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["can_train"] is False
    assert {5, 8} <= {e["line"] for e in report["errors"]}, report["errors"]


def test_errors_print_the_api_message_and_exit_non_zero(cli_server: Server) -> None:
    missing = run(cli_server, "jobs", "get", "ftjob-" + "x" * 24)
    assert missing.returncode != 0
    assert "ftjob-" in missing.stderr and "404" in missing.stderr, missing.stderr
    bad_key = run(cli_server, "models", "list", key="sk-not-a-key")
    assert bad_key.returncode != 0 and "401" in bad_key.stderr, bad_key.stderr
    no_key = run(cli_server, "files", "list", "--base-url", cli_server.base_url, env_config=False)
    assert no_key.returncode != 0 and "API key" in no_key.stderr
    unreachable = run(
        cli_server, "files", "list", "--base-url", "http://127.0.0.1:9", "--api-key", "x", env_config=False
    )
    assert unreachable.returncode != 0 and "cannot reach" in unreachable.stderr


def test_job_create_watch_succeeds_and_chat_answers(cli_server: Server, tmp_path: Path) -> None:
    train = write(tmp_path, "train.jsonl", chat_lines(10))
    created = run(
        cli_server,
        "jobs",
        "create",
        "--training-file",
        str(train),
        "--model",
        "tiny-chat",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--learning-rate",
        "0.001",
        "--max-seq-length",
        "32",
        "--suffix",
        "cli",
        "--seed",
        "7",
        "--metadata",
        "team=cli",
        "-H",
        "checkpoint_interval=2",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    job = json.loads(created.stdout)
    hparams = job["method"]["supervised"]["hyperparameters"]
    assert (hparams["n_epochs"], hparams["batch_size"], hparams["checkpoint_interval"]) == (1, 2, 2)
    assert job["seed"] == 7 and job["metadata"] == {"team": "cli"}

    watched = run(cli_server, "jobs", "watch", job["id"], "--interval", "0.3")
    assert watched.returncode == 0, watched.stdout + watched.stderr + logs(cli_server)
    assert "succeeded" in watched.stdout and "ft:tiny-chat:cli:cli:" in watched.stdout

    got = json.loads(run(cli_server, "jobs", "get", job["id"], "--json").stdout)
    assert got["status"] == "succeeded" and got["fine_tuned_model"]
    listed = json.loads(run(cli_server, "jobs", "list", "--status", "succeeded", "--json").stdout)
    assert job["id"] in [j["id"] for j in listed]
    assert json.loads(run(cli_server, "jobs", "list", "--metadata", "team=nobody", "--json").stdout) == []
    events = json.loads(run(cli_server, "jobs", "events", job["id"], "--json").stdout)
    assert any(e["type"] == "metrics" for e in events)
    checkpoints = json.loads(run(cli_server, "jobs", "checkpoints", job["id"], "--json").stdout)
    assert checkpoints and all(c["fine_tuned_model_checkpoint"].startswith("ft:") for c in checkpoints)
    models = json.loads(run(cli_server, "models", "list", "--json").stdout)
    assert got["fine_tuned_model"] in [m["id"] for m in models]

    one_shot = run(cli_server, "chat", got["fine_tuned_model"], "-m", "What is q 1?", "--max-tokens", "8")
    assert one_shot.returncode == 0 and one_shot.stdout.strip(), one_shot.stderr
    interactive = run(cli_server, "chat", "tiny-chat", "--max-tokens", "4", stdin="hello\nagain\n\n")
    assert interactive.returncode == 0, interactive.stderr
    assert interactive.stdout.count("> ") >= 2
    as_json = run(cli_server, "chat", "tiny-chat", "-m", "hi", "--max-tokens", "4", "--json")
    assert json.loads(as_json.stdout)["object"] == "chat.completion"

    archive, unpacked = tmp_path / "model.tar", tmp_path / "unpacked"
    fetched = run(
        cli_server, "models", "download", got["fine_tuned_model"], "-o", str(archive), "-x", str(unpacked), "--json"
    )
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["bytes"] == archive.stat().st_size > 0
    files = {p.name for p in unpacked.rglob("*") if p.is_file()}
    assert {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "README.md"} <= files, files
    assert not list(tmp_path.glob("*.part"))
    refused = run(cli_server, "models", "download", "ft:tiny-chat:nobody:x:y", "-o", str(tmp_path / "no.tar"))
    assert refused.returncode == 1 and "404" in refused.stderr and not (tmp_path / "no.tar").exists()

    deleted = run(cli_server, "models", "delete", got["fine_tuned_model"], "--json")
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["deleted"] is True


def test_watch_exits_non_zero_when_the_job_fails(cli_server: Server, tmp_path: Path) -> None:
    # a chat file cannot train a DPO job: it fails in validating_files, before any compute
    train = write(tmp_path, "chat.jsonl", chat_lines(10))
    watched = run(cli_server, "jobs", "create", "-t", str(train), "--method", "dpo", "--watch")
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "failed" in watched.stdout and "invalid_training_file" in watched.stdout


def test_cancel_pause_resume(cli_server: Server, tmp_path: Path) -> None:
    train = write(tmp_path, "train.jsonl", chat_lines(10))
    job = json.loads(
        run(
            cli_server,
            "jobs",
            "create",
            "-t",
            str(train),
            "--epochs",
            "50",
            "--batch-size",
            "1",
            "--max-seq-length",
            "32",
            "--json",
        ).stdout
    )
    paused = run(cli_server, "jobs", "pause", job["id"], "--json")
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["status"] in ("pausing", "paused")
    watched = run(cli_server, "jobs", "watch", job["id"], "--json", "--interval", "0.3")
    assert watched.returncode == 4 and json.loads(watched.stdout)["status"] == "paused"
    resumed = run(cli_server, "jobs", "resume", job["id"])
    assert resumed.returncode == 0 and job["id"] in resumed.stdout
    cancelled = run(cli_server, "jobs", "cancel", job["id"], "--json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] in ("cancelling", "cancelled")
    watched = run(cli_server, "jobs", "watch", job["id"], "--json", "--interval", "0.3")
    assert watched.returncode == 3 and json.loads(watched.stdout)["status"] == "cancelled"
    again = run(cli_server, "jobs", "cancel", job["id"])
    assert again.returncode != 0 and "error" in again.stderr


def test_server_log_has_one_line_per_transition_and_quiet_polling(cli_server: Server) -> None:
    """Runs last: the jobs above left their transitions in serve's own output (its worker's lines included)."""
    text = cli_server.log_path.read_text(errors="replace")
    lines = [line for line in text.splitlines() if " tuneforge.jobs " in line]
    for needle in (
        "created",
        "queued (files validated)",
        "started",
        "checkpoint",
        "published",
        "succeeded",
        "failed (invalid_training_file)",
        "pausing",
        "paused",
        "resumed",
        "cancelled",
    ):
        assert any(needle in line for line in lines), f"no job-log line with {needle!r}:\n" + "\n".join(lines)
    progress = [line for line in lines if " step " in line and " loss " in line]
    assert progress, "no progress line"
    # polling is quiet: no access line for the many successful GETs, but writes and errors are logged
    assert not [line for line in text.splitlines() if '"GET /v1/' in line and " 200 " in line]
    assert '"POST /v1/files HTTP/1.1" 200' in text
    assert " 404" in text
    # the filesystem transport keeps its exchange tables under the data dir, not in the working directory
    assert not (cli_server.data_dir / "control").exists()
    assert (cli_server.data_dir / "queue" / "control").is_dir()
