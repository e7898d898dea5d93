"""README stays the truth: the two commands come first, CI runs the same test command, every setting is listed."""

from __future__ import annotations

from pathlib import Path

from app.core.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_same_one() -> None:
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make run" in first_block and "make test" in first_block
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in ci


def test_every_setting_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [
        f"TUNEFORGE_{name.upper()}" for name in Settings.model_fields if f"TUNEFORGE_{name.upper()}`" not in readme
    ]
    assert not missing, f"document these settings in README.md: {missing}"
