"""A job's folder (``WorkerFolders.artifacts_dir``): its path object is made once for the job a worker runs, and what
the path leads to is checked at every call, so a link planted between two calls (a run that made its folder a link
out of the store) is refused at the second."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import PathEscapeError
from orchestrator.worker_folders import WorkerFolders


def test_the_same_jobs_folder_asked_again_is_the_same_path_and_another_jobs_its_own(tmp_path: Path) -> None:
    (tmp_path / "artifacts" / "job-a").mkdir(parents=True)
    folders = WorkerFolders(tmp_path)
    assert folders.artifacts_dir("job-a", trusted=True) == tmp_path / "artifacts" / "job-a"  # resolved in full
    first = folders.artifacts_dir("job-a", trusted=True)
    assert first == tmp_path / "artifacts" / "job-a"
    assert folders.artifacts_dir("job-a") is first  # made once
    assert folders.artifacts_dir("job-b") == tmp_path / "artifacts" / "job-b"  # none yet: its path all the same
    assert folders.artifacts_dir("job-a") == first


def test_a_link_planted_in_the_jobs_folder_after_a_first_call_is_refused_at_the_next(tmp_path: Path) -> None:
    (tmp_path / "artifacts" / "job-a").mkdir(parents=True)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    folders = WorkerFolders(tmp_path / "")
    folders.artifacts_dir("job-a", trusted=True)
    folders.artifacts_dir("job-a")
    os.rmdir(tmp_path / "artifacts" / "job-a")
    os.symlink(outside, tmp_path / "artifacts" / "job-a")
    with pytest.raises(PathEscapeError):
        folders.artifacts_dir("job-a")
