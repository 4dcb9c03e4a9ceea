"""``OutputFile``: a command's output file is written whole or not at all, and refused before the work."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInputError, StorageError
from orchestrator.output_file import OutputFile


def test_the_file_appears_only_when_the_block_ends_and_replaces_the_old_one_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with OutputFile(target, "the output") as out:
        out.write(b"new\n")
        assert target.read_bytes() == b"old\n"
    assert target.read_bytes() == b"new\n" and os.listdir(tmp_path) == ["out.jsonl"]


def test_an_error_in_the_block_or_a_discard_leaves_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(RuntimeError), OutputFile(target, "the output") as out:
        out.write(b"half")
        raise RuntimeError("the work failed")
    with OutputFile(target, "the output") as out:
        out.write(b"unwanted")
        out.discard()
    assert target.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["out.jsonl"]


def test_a_path_that_cannot_be_written_is_refused_when_opened(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    for target, reason in [(tmp_path / "missing" / "out", f"there is no folder {tmp_path / 'missing'}"),
                           (tmp_path / "a-file" / "out", f"{tmp_path / 'a-file'} is a file, not a folder"),
                           (tmp_path, "it is a folder")]:
        with pytest.raises(InvalidInputError, match=re.escape(f"cannot write the output to {target}: {reason}")):
            OutputFile(target, "the output")
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_a_full_disk_is_a_storage_error_and_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="No space left on device"), OutputFile(target, "the output") as out:
        out.write(b"new\n")
    assert target.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["out.jsonl"]
