"""Moving an artifact to its recorded (sanitized) name never replaces a file already there."""
from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator import artifacts


def test_a_name_taken_between_the_check_and_the_move_is_passed_over_not_overwritten(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    (tmp_path / "token=abc.txt").write_text("mine")
    (tmp_path / "token=[REDACTED]").write_text("another process moved its file here first")
    real = artifacts._taken
    monkeypatch.setattr(artifacts, "_taken",  # the check ran before the other process's move
                        lambda fd, name: False if name == "token=[REDACTED]" else real(fd, name))
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


def test_a_folder_whose_name_holds_the_secret_is_moved_to_its_sanitized_name_when_it_holds_another_file(
        tmp_path: Path) -> None:
    """``password=pw1/report.md`` is recorded, and moved, as ``password=[REDACTED]``: the folder ``password=pw1/``
    stayed on disk, the secret in its name, when it held a file the payload did not name. Each folder on the way
    to a moved file is moved, outermost first; a file the payload does not name keeps its own name."""
    (tmp_path / "password=pw1" / "token=y").mkdir(parents=True)
    for name in ("report.md", "other.txt", "token=y/t.txt", "token=y/u.txt"):
        (tmp_path / "password=pw1" / name).write_text(name)
    names = artifacts.recorded_names(tmp_path, ["password=pw1/report.md", "password=pw1/token=y/t.txt"])
    assert names == ["password=[REDACTED]", "2-password=[REDACTED]"]
    assert [(tmp_path / name).read_text() for name in names] == ["report.md", "token=y/t.txt"]
    assert (tmp_path / "3-password=[REDACTED]" / "other.txt").read_text() == "other.txt"
    assert (tmp_path / "3-password=[REDACTED]" / "token=[REDACTED]" / "u.txt").read_text() == "token=y/u.txt"
    assert [p for p in tmp_path.rglob("*") if "pw1" in p.name or "=y" in p.name] == []


def test_a_thousand_artifacts_of_one_sanitized_name_are_moved_in_linear_time(tmp_path: Path) -> None:
    """Each file tried every name the files before it took (``2-``, ``3-``, ...): 1,000 artifacts, a payload's
    most, took 6 s to record, the run's lease not renewed meanwhile."""
    paths = [f"password={i}" for i in range(1000)]
    for path in paths:
        (tmp_path / path).write_text(path)
    start = time.perf_counter()
    names = artifacts.recorded_names(tmp_path, paths)
    assert time.perf_counter() - start < 1.0
    assert names == ["password=[REDACTED]", *(f"{n}-password=[REDACTED]" for n in range(2, 1001))]
    assert [(tmp_path / name).read_text() for name in names] == paths


def test_a_file_below_a_folder_swapped_for_a_link_since_it_was_listed_is_never_moved(tmp_path: Path) -> None:
    """Stale recovery lists what a dead run left (``sub/token=abc.txt``), then moves each file whose name holds a
    secret: a folder on the way swapped for a link in between (by a process that still had its parent open) is not
    followed. Until the fix the file the link led to was moved into the job's folder (``sub_token=[REDACTED]``),
    gone from its own folder."""
    folder, elsewhere = tmp_path / "job", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (elsewhere / "token=abc.txt").write_text("this user's own, elsewhere")
    (folder / "sub").symlink_to(elsewhere)  # a folder when it was listed
    assert artifacts.recorded_names(folder, ["sub/token=abc.txt"]) == ["sub/token=[REDACTED]"]
    assert os.listdir(elsewhere) == ["token=abc.txt"] and os.listdir(folder) == ["sub"]
    assert (elsewhere / "token=abc.txt").read_text() == "this user's own, elsewhere"


def test_a_folder_below_a_folder_swapped_for_a_link_since_it_was_listed_is_never_moved(tmp_path: Path) -> None:
    """``password=pw1/`` of ``sub/password=pw1/report.md``, moved to its sanitized name as a file is: not through
    ``sub`` made a link since."""
    folder, elsewhere = tmp_path / "job", tmp_path / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    (elsewhere / "password=pw1").mkdir(parents=True)
    (elsewhere / "password=pw1" / "report.md").write_text("elsewhere's")
    (elsewhere / "password=pw1" / "other.md").write_text("elsewhere's")
    (folder / "sub").rmdir()
    (folder / "sub").symlink_to(elsewhere)
    assert artifacts.recorded_names(folder, ["sub/password=pw1/report.md"]) == ["sub/password=[REDACTED]"]
    assert sorted(os.listdir(elsewhere / "password=pw1")) == ["other.md", "report.md"]
    assert os.listdir(elsewhere) == ["password=pw1"] and os.listdir(folder) == ["sub"]
