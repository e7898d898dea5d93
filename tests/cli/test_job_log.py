"""The job log's lines and its progress throttle (no server needed)."""

from __future__ import annotations

from app.usecases import job_log


def test_transitions_have_one_line_each_and_failures_name_their_code() -> None:
    assert job_log.line_for("ftjob-a", "created", "Created", 0, {}) == "job ftjob-a created"
    failed = job_log.line_for("ftjob-a", "failed", "no examples", 1, {"code": "invalid_training_file"})
    assert failed == "job ftjob-a failed (invalid_training_file): no examples"
    assert job_log.line_for("ftjob-a", "message", "engine chatter", 1, {}) is None


def test_progress_lines_are_throttled_but_the_last_step_is_always_logged() -> None:
    job_log.configure(progress_seconds=60)
    first = job_log.line_for("ftjob-p", "metrics", "", 1, {"step": 1, "total_steps": 10, "train_loss": 2.0})
    assert first is not None and first.startswith("job ftjob-p step 1/10 loss 2.0000")
    assert job_log.line_for("ftjob-p", "metrics", "", 1, {"step": 2, "total_steps": 10, "train_loss": 1.9}) is None
    last = job_log.line_for("ftjob-p", "metrics", "", 1, {"step": 10, "total_steps": 10, "train_loss": 1.0})
    assert last is not None and "step 10/10" in last
    job_log.configure(progress_seconds=0)
    again = job_log.line_for("ftjob-q", "metrics", "", 1, {"step": 1, "total_steps": 3, "train_loss": 1.0})
    assert again is not None
    assert job_log.line_for("ftjob-q", "metrics", "", 1, {"step": 2, "total_steps": 3, "train_loss": 1.0})
