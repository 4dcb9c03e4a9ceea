"""A full disk and a failing fsync: nothing unwritten is acknowledged, the error is clear, work resumes."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.errors import StorageError
from orchestrator.reliability import disk
from orchestrator.store import jsonl
from orchestrator.store.jsonl import JsonlStore


def test_a_filling_disk_acknowledges_only_what_is_on_disk_and_resumes_when_freed(tmp_path: Path) -> None:
    result = disk.full_disk(tmp_path)
    assert result["error_code"] == "STORAGE_ERROR"
    assert result["acked"] > 0 and result["acked_missing"] == 0
    assert result["resumed"] and result["unfinished"] == 0 and result["verify_ok"]
    if result["mode"] == "tmpfs":
        assert result["cli_exit"] == 10 and result["cli_clear"] and result["worker_clear"]


def test_a_failed_fsync_is_never_acknowledged_and_the_next_append_repairs(tmp_path: Path) -> None:
    result = disk.failed_fsync(tmp_path, trials=10)
    assert result["raised"] == 10
    assert (result["acknowledged_anyway"], result["lines_kept"], result["verify_failures_after"]) == (0, 0, 0)


def test_a_full_disk_while_writing_a_head_record_is_a_storage_error(orch: Orchestrator,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)  # a record replaced by rename
    monkeypatch.setattr(os, "pwrite", full)  # a head record overwritten in place (its 512-byte slot)
    with pytest.raises(StorageError) as info:
        orch.submit("echo", {})
    assert info.value.exit_code == 10 and "No space left" in info.value.message
    assert not list((orch.settings.state_dir / "heads").glob(".*.tmp"))


def test_an_index_entry_that_cannot_be_written_is_a_storage_error_and_nothing_is_acknowledged(
        orch: Orchestrator) -> None:
    blocked = orch.settings.state_dir / "index" / "ready"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")  # entries cannot be created, like a disk out of inodes
    with pytest.raises(StorageError):
        orch.submit("echo", {})
    assert list(orch.store.job_ids()) == []  # the entry comes before the event: nothing was written


@pytest.mark.parametrize("left", [b"", b'{"seq":1,"ty'], ids=["created_never_written", "torn_first_line"])
def test_the_first_line_of_a_file_makes_its_folder_entry_durable_whoever_created_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: bytes) -> None:
    # a writer killed between creating a job's file and writing it (or whose first write failed, cut back to
    # nothing, or was torn) never synced the folder: the append that writes the file's first line does
    store = JsonlStore(tmp_path / ".orchestrator")
    store.jobs_dir.mkdir(parents=True)
    store.path("job-1").write_bytes(left)
    synced: list[Path] = []
    monkeypatch.setattr(jsonl, "fsync_dir", lambda path: synced.append(Path(path)))
    store.append("job-1", lambda head: [b'{"seq":1}'])
    assert synced == [store.jobs_dir]
    store.append("job-1", lambda head: [b'{"seq":2}'])  # the entry is durable now: no second sync
    assert synced == [store.jobs_dir]
