"""``verify``'s look at the store's folders (``worker_folders.loose_folders``) reads each folder's status once."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest

from orchestrator import worker_folders
from orchestrator.worker_folders import loose_folders, trusted_folders


def test_verify_reads_the_status_of_each_store_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owners of the project folder and ``.orchestrator`` decide whose worker the folders are judged for
    (``store_user``): until the fix they were read for that, then read again, with the other two, to be judged."""
    state = tmp_path / "proj" / ".orchestrator"
    for folder in (state / "runs", state / "artifacts"):
        folder.mkdir(parents=True)
    reads: collections.Counter[str] = collections.Counter()
    real = worker_folders.folder_status

    def counted(folder: str, follow: bool = False):
        reads[folder] += 1
        return real(folder, follow)

    monkeypatch.setattr(worker_folders, "folder_status", counted)
    assert loose_folders(state) == []
    assert reads == {folder: 1 for folder in trusted_folders(state)}
