"""Moving an artifact to its recorded (sanitized) name never replaces a file already there."""
from __future__ import annotations

from pathlib import Path

from orchestrator import artifacts


def test_a_name_taken_between_the_check_and_the_move_is_passed_over_not_overwritten(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    (tmp_path / "token=abc.txt").write_text("mine")
    (tmp_path / "token=[REDACTED]").write_text("another process moved its file here first")
    real = artifacts.os.path.lexists
    monkeypatch.setattr(artifacts.os.path, "lexists",  # the check ran before the other process's move
                        lambda p: False if str(p).endswith("/token=[REDACTED]") else real(p))
    assert artifacts.recorded_names(tmp_path, ["token=abc.txt"]) == ["2-token=[REDACTED]"]
    assert (tmp_path / "token=[REDACTED]").read_text() == "another process moved its file here first"
    assert (tmp_path / "2-token=[REDACTED]").read_text() == "mine" and not (tmp_path / "token=abc.txt").exists()
