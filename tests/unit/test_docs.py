"""The README documents every setting, and starts with the run and test commands."""

from __future__ import annotations

from pathlib import Path

from outbox.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_readme() -> None:
    missing = [name for name in Settings.model_fields if f"`S3OUTBOX_{name.upper()}`" not in README]
    assert missing == []


def test_readme_starts_with_run_and_test_commands() -> None:
    head = README.split("\n## ", 1)[0]
    assert "make run" in head and "make test" in head
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert "make test" in ci
