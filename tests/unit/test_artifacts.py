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


def test_an_artifact_is_never_moved_out_of_the_jobs_folder_through_a_link_where_its_recorded_folder_would_be(
        tmp_path: Path) -> None:
    """``sk-.../report.md`` is recorded as ``[REDACTED]/report.md``; a run that left a link ``[REDACTED]`` to a
    folder elsewhere must not get its file moved there, nor a recorded name that leads out of the job's folder."""
    folder, elsewhere = tmp_path / "job", tmp_path / "elsewhere"
    secret = "sk-" + "a1B2c3D4e5F6g7H8i9J0k1L2"
    (folder / secret).mkdir(parents=True)
    (folder / secret / "report.md").write_text("the report")
    elsewhere.mkdir()
    (folder / "[REDACTED]").symlink_to(elsewhere)
    [name] = artifacts.recorded_names(folder, [f"{secret}/report.md"])
    assert list(elsewhere.iterdir()) == []
    recorded = folder / name
    assert recorded.resolve().parent == folder.resolve() and recorded.read_text() == "the report", name
    assert secret not in name and not (folder / secret).exists()
