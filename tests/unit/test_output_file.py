"""``OutputFile``: a command's output file is written whole or not at all, and refused before the work."""
from __future__ import annotations

import errno
import fcntl
import os
import re
import time
from pathlib import Path

import pytest

from orchestrator.errors import InvalidInputError, StorageError
from orchestrator.output_file import OutputFile, remove_leftovers
from orchestrator.store.files import STRAY_AGE


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
        with pytest.raises(InvalidInputError, match=re.escape(f"cannot write the output to {target} ({reason})")):
            OutputFile(target, "the output")
    assert sorted(os.listdir(tmp_path)) == ["a-file"]


def test_why_a_path_cannot_be_written_survives_sanitizing_when_it_is_named_like_a_secret(tmp_path: Path) -> None:
    """Every error shown is sanitized: a folder named like a secret's key must not get the reason after it redacted
    as that key's value."""
    from orchestrator.security import sanitize_text

    (tmp_path / "secret").mkdir()
    with pytest.raises(InvalidInputError) as caught:
        OutputFile(tmp_path / "secret", "the bundle")
    assert "(it is a folder)" in sanitize_text(caught.value.message)


@pytest.mark.parametrize("refusal", [errno.ENOSPC, errno.EDQUOT])  # a quota used up is a full disk for its user
def test_a_full_disk_is_a_storage_error_and_leaves_the_old_file(tmp_path: Path, monkeypatch, refusal: int) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")

    def full(fd: int) -> None:
        raise OSError(refusal, os.strerror(refusal))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match=os.strerror(refusal)), OutputFile(target, "the output") as out:
        out.write(b"new\n")
    assert target.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["out.jsonl"]


def aged(path: Path, seconds: float = STRAY_AGE + 60) -> Path:
    """``path`` as if untouched for ``seconds`` (a link itself, not what it points to)."""
    then = time.time() - seconds
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_a_leftover_temporary_file_of_the_same_target_is_removed_by_the_next_write_once_old(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    old = tmp_path / ".out.jsonl.0123abcd.tmp"
    old.write_bytes(b"a killed writer's half")
    aged(old)
    recent = tmp_path / ".out.jsonl.89abcdef.tmp"  # perhaps a writer that has not taken its lock yet
    recent.write_bytes(b"")
    with OutputFile(target, "the output") as out:
        out.write(b"new\n")
        assert not old.exists() and recent.exists()
    assert sorted(os.listdir(tmp_path)) == [".out.jsonl.89abcdef.tmp", "out.jsonl"]


def test_a_leftover_is_kept_while_a_process_holds_its_lock_however_old(tmp_path: Path) -> None:
    held = tmp_path / ".out.jsonl.0123abcd.tmp"
    with open(held, "wb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        aged(held)
        with OutputFile(tmp_path / "out.jsonl", "the output") as out:
            out.write(b"new\n")
        assert held.exists()
    assert remove_leftovers(tmp_path / "out.jsonl", time.time()) == [held.name]  # its holder is gone


def test_only_the_targets_own_temporary_files_are_ever_removed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep")
    folder = tmp_path / "work"
    folder.mkdir()
    for name in (".out.jsonl.0123abc.tmp", ".out.jsonl.0123abcde.tmp", ".out.jsonl.0123ABCD.tmp",
                 ".out.jsonl.0123abcd.tmp.bak", "out.jsonl.0123abcd.tmp", ".other.jsonl.0123abcd.tmp",
                 ".out.jsonl.x.0123abcd.tmp", ".out.jsonl.tmp"):
        (folder / name).write_bytes(b"not ours")
    (folder / ".out.jsonl.11111111.tmp").symlink_to(outside / "precious")  # a link: never followed, never removed
    (folder / ".out.jsonl.22222222.tmp").mkdir()
    (folder / ".out.jsonl.22222222.tmp" / "inside").write_bytes(b"keep")
    os.mkfifo(folder / ".out.jsonl.33333333.tmp")
    if os.geteuid() == 0:  # another user's file: only root can make one here
        (folder / ".out.jsonl.44444444.tmp").write_bytes(b"theirs")
        os.chown(folder / ".out.jsonl.44444444.tmp", 65534, 65534)
    for path in [*folder.iterdir(), outside / "precious"]:
        aged(path)
    before = sorted(os.listdir(folder))
    with OutputFile(folder / "out.jsonl", "the output") as out:
        out.write(b"new\n")
    assert sorted(os.listdir(folder)) == sorted([*before, "out.jsonl"])
    assert (outside / "precious").read_bytes() == b"keep" and (folder / ".out.jsonl.22222222.tmp" / "inside").exists()


def test_a_temporary_file_taken_away_before_the_rename_is_an_error_that_says_so(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(InvalidInputError, match=r"its temporary file \.out\.jsonl\.[0-9a-f]{8}\.tmp was removed"):
        with OutputFile(target, "the output") as out:
            out.write(b"new\n")
            [temp] = tmp_path.glob(".out.jsonl.*.tmp")
            temp.unlink()  # another machine's write, where locks are not shared
    assert target.read_bytes() == b"old\n"


@pytest.mark.parametrize("name", ["b" * 242, "b" * 255, "é" * 127 + "b"], ids=["242 bytes", "255 bytes", "255 bytes of UTF-8"])
def test_a_name_as_long_as_the_file_system_allows_is_written_whole(tmp_path: Path, name: str) -> None:
    assert len(os.fsencode(name)) == len(name.encode()) <= 255
    target = tmp_path / name
    target.write_bytes(b"old\n")
    with OutputFile(target, "the output") as out:
        out.write(b"new\n")
        [temp] = [p for p in tmp_path.iterdir() if p != target]
        assert temp.name.startswith(".") and temp.name.endswith(".tmp")  # hidden, as a short name's
    assert target.read_bytes() == b"new\n" and os.listdir(tmp_path) == [name]


def test_a_folder_that_cannot_be_synced_after_the_rename_is_an_error_that_says_the_file_is_in_place(
        tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.jsonl"
    target.write_bytes(b"old\n")

    def failing(path) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr("orchestrator.output_file.fsync_dir", failing)
    with pytest.raises(StorageError) as caught, OutputFile(target, "the output") as out:
        out.write(b"new\n")
    message = caught.value.message
    assert "nothing was written" not in message, message
    assert f"the output was written to {target}, but its folder could not be synced: Input/output error" in message
    assert target.read_bytes() == b"new\n" and os.listdir(tmp_path) == ["out.jsonl"]
