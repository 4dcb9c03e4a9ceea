"""``run_folder.set_folder_mode`` and ``owner_bits_back``: a mode set without opening the entry for reading, never
through a link, one way for both (``chmod_entry``: by descriptor where there is ``/proc``, by name where there is
none)."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable

import pytest

from orchestrator import run_folder
from orchestrator.run_folder import owner_bits_back, set_folder_mode


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_folder_its_owner_may_not_open_is_made_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "job"
    folder.mkdir()
    os.chmod(folder, 0o077)
    set_folder_mode(folder, 0o700)
    assert mode_of(folder) == 0o700


@pytest.mark.parametrize("target", ["folder", "missing"])
def test_a_link_in_the_folders_place_is_refused_and_what_it_leads_to_left_as_it_is(tmp_path: Path,
                                                                                   target: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    if target == "folder":
        elsewhere.mkdir(mode=0o755)
    (tmp_path / "job").symlink_to(elsewhere)
    with pytest.raises(OSError):
        set_folder_mode(tmp_path / "job", 0o700)
    assert target == "missing" or mode_of(elsewhere) == 0o755


def test_a_file_in_the_folders_place_is_refused(tmp_path: Path) -> None:
    (tmp_path / "job").write_text("")
    os.chmod(tmp_path / "job", 0o644)
    with pytest.raises(NotADirectoryError):
        set_folder_mode(tmp_path / "job", 0o700)
    assert mode_of(tmp_path / "job") == 0o644


def without_proc(monkeypatch: pytest.MonkeyPatch, folder: Path, no_follow: Callable[[str, dict], None]) -> None:
    """A system without ``/proc`` (``/proc/self/fd/N`` is no such file) where ``folder`` may not be opened for reading
    (O_PATH aside), in a process that never saw a ``chmod`` by name without following a link work; ``no_follow(path,
    kwargs)`` is run before each such ``chmod`` (``follow_symlinks=False``)."""
    real_open, real_chmod = os.open, os.chmod

    def open_(path, flags, *args, **kw):
        if os.fspath(path) == str(folder) and not flags & getattr(os, "O_PATH", 0):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kw)

    def chmod(path, mode, *args, **kw):
        if str(path).startswith("/proc/self/fd/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        if kw.get("follow_symlinks") is False:
            no_follow(path, kw)
        return real_chmod(path, mode, *args, **kw)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "chmod", chmod)
    monkeypatch.setattr(run_folder, "_NO_FOLLOW_CHMOD_WORKS", [False])


@pytest.fixture
def unreadable_without_proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/job``, a folder of mode 077 that this user may not open for reading (a worker that is not root:
    here, as root may, the open is refused so), on a system without ``/proc`` (a chroot, a container without it:
    ``/proc/self/fd/N`` is no such file)."""
    folder = tmp_path / "job"
    folder.mkdir()
    os.chmod(folder, 0o077)

    def no_follow(path, kw) -> None:
        if kw.get("dir_fd") is not None:  # glibc before 2.39 does it by /proc
            raise ValueError("chmod: cannot use dir_fd and follow_symlinks together on this platform")

    without_proc(monkeypatch, folder, no_follow)
    return folder


def test_without_proc_a_folder_its_owner_may_not_open_is_made_owner_only_by_its_name_in_its_parent(
        unreadable_without_proc: Path) -> None:
    """Until the fix: ``FileNotFoundError: /proc/self/fd/3``, and a worker that is not root stopped, exit 10."""
    set_folder_mode(unreadable_without_proc, 0o700)
    assert mode_of(unreadable_without_proc) == 0o700


@pytest.mark.parametrize("o_path", [True, False], ids=["O_PATH", "no O_PATH"])
def test_without_proc_a_folder_whose_parent_others_may_write_is_left_as_it_is(
        unreadable_without_proc: Path, monkeypatch: pytest.MonkeyPatch, o_path: bool) -> None:
    """Another user who may write in the parent could put a link in the folder's place between the look at it and
    the ``chmod`` by name, which follows it: not done, ``PermissionError`` (the worker refuses the folder, naming the
    ``chmod`` its owner must run)."""
    if not o_path:
        monkeypatch.delattr(os, "O_PATH", raising=False)
    os.chmod(unreadable_without_proc.parent, 0o777)
    with pytest.raises(PermissionError, match="its parent folder is not this user's or root's alone"):
        set_folder_mode(unreadable_without_proc, 0o700)
    assert mode_of(unreadable_without_proc) == 0o077


@pytest.mark.parametrize("target", ["folder", "missing"])
def test_without_proc_or_o_path_a_link_in_the_folders_place_is_refused_and_what_it_leads_to_left_as_it_is(
        unreadable_without_proc: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """With neither, the folder is looked at by name only (``os.stat(..., follow_symlinks=False)``) before its
    ``chmod`` by name."""
    monkeypatch.delattr(os, "O_PATH", raising=False)
    elsewhere = unreadable_without_proc.parent / "elsewhere"
    if target == "folder":
        elsewhere.mkdir(mode=0o755)
    unreadable_without_proc.rmdir()
    unreadable_without_proc.symlink_to(elsewhere)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        set_folder_mode(unreadable_without_proc, 0o700)
    assert target == "missing" or mode_of(elsewhere) == 0o755


def test_without_proc_an_entry_a_run_left_without_its_owners_bits_is_given_them_back_by_its_name(
        unreadable_without_proc: Path) -> None:
    """``owner_bits_back`` (the copy of ``artifacts_from``, the walk after a run) goes the way ``set_folder_mode``
    goes: until 2026-12-07 it needed ``/proc``, and gave nothing back without it."""
    inner = unreadable_without_proc.parent / "made_by_a_run"
    inner.mkdir()
    inner.chmod(0o000)
    (inner.parent / "file").write_text("x")
    (inner.parent / "file").chmod(0o000)
    parent = os.open(inner.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert owner_bits_back(parent, "made_by_a_run") is not None
        assert owner_bits_back(parent, "file") is not None
    finally:
        os.close(parent)
    assert mode_of(inner) == 0o700 and mode_of(inner.parent / "file") == 0o400


def swap_before_chmod_by_name(monkeypatch: pytest.MonkeyPatch, folder: Path, into: str) -> Path:
    """Make ``folder``'s name lead elsewhere just before its ``chmod`` by name (``into``: another folder, renamed into
    its place, or a link to one): what this user or root could do in that window. Returns the other folder."""
    other = folder.parent / "other"
    other.mkdir()
    other.chmod(0o755)
    chmod = os.chmod

    def swapping(path, mode, *args, **kw):
        if kw.get("dir_fd") is not None and kw.get("follow_symlinks", True) and path == folder.name:
            folder.rename(folder.parent / "moved")
            if into == "folder":
                other.rename(folder)
            else:
                folder.symlink_to(other)
        return chmod(path, mode, *args, **kw)

    monkeypatch.setattr(os, "chmod", swapping)
    return folder if into == "folder" else other


@pytest.mark.parametrize("into", ["folder", "link"])
def test_without_proc_a_name_swapped_between_its_look_and_its_chmod_is_refused(
        unreadable_without_proc: Path, monkeypatch: pytest.MonkeyPatch, into: str) -> None:
    """By name, the entry is looked at again after its ``chmod``: another inode there (a folder renamed into its
    place, a link) is ``PermissionError``. Until 2026-12-07 it was not looked at again, and the mode set on whatever
    the name led to by then was taken as done. (The ``chmod`` has changed what is there now: only this user or root
    may write the parent, ``chmod_entry`` says what this cannot close.)"""
    swap_before_chmod_by_name(monkeypatch, unreadable_without_proc, into)
    with pytest.raises(PermissionError, match="another entry took its name between its look and its chmod"):
        set_folder_mode(unreadable_without_proc, 0o700)


def test_without_proc_owner_bits_back_of_a_name_swapped_between_its_look_and_its_chmod_is_refused(
        unreadable_without_proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inner = unreadable_without_proc.parent / "made_by_a_run"
    inner.mkdir()
    inner.chmod(0o000)
    swap_before_chmod_by_name(monkeypatch, inner, "folder")
    parent = os.open(inner.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert owner_bits_back(parent, "made_by_a_run") is None
    finally:
        os.close(parent)
    assert mode_of(inner.parent / "moved") == 0o000


def test_without_proc_a_link_swapped_in_before_a_no_follow_chmod_is_never_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library changes a mode by name without following a link (glibc 2.39 with Linux 6.6: ``fchmodat2``)
    but there is no ``/proc``, a link swapped in just before that ``chmod`` is refused by it (``EOPNOTSUPP``, which
    Python raises as ``ValueError`` with a ``dir_fd``, as where it cannot be done at all). Until 2026-12-07 that
    refusal was taken for a C library that cannot, and a plain ``chmod`` followed the link: what it led to was given
    the mode."""
    folder = tmp_path / "job"
    folder.mkdir()
    os.chmod(folder, 0o077)
    other = tmp_path / "other"
    other.mkdir()
    other.chmod(0o755)

    def link_swapped_in(path, kw) -> None:  # then glibc's by /proc (here) or fchmodat2: a link refused
        if path == folder.name and not folder.is_symlink():
            folder.rename(tmp_path / "moved")
            folder.symlink_to(other)

    without_proc(monkeypatch, folder, link_swapped_in)  # its first chmod by name
    with pytest.raises(OSError):
        set_folder_mode(folder, 0o700)
    assert mode_of(other) == 0o755
