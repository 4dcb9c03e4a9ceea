"""A full disk and a failing fsync: nothing unwritten is acknowledged, the error is clear, work resumes."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.errors import StorageError
from orchestrator.reliability import disk


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
