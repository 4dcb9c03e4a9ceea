"""The copy of ``artifacts_from`` on its target side (``artifacts_import``): the job's own folder, which its handler
writes between runs, is never written through, an earlier copy's modes never block the next, a file a full disk cut
short is removed, and the plain read/write path copies every byte."""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from helpers import folder_of, in_a_child_as
from orchestrator import artifacts_import, faults
from orchestrator.artifacts_import import CopyFailed, import_artifacts
from orchestrator.artifacts_source import MAX_FOLDER_DEPTH
from orchestrator.errors import InvalidInputError, PathEscapeError
from orchestrator.worker_folders import WorkerFolders

OTHER_USER = 65534  # a worker that is not root: modes bind it (root passes every one of them)


def _source(state: Path) -> Path:
    """``artifacts/A``, the folder of the job whose artifacts are copied."""
    src = state / "artifacts" / "A"
    src.mkdir(parents=True)
    return src


def _copy(state: Path, between: Callable[[], None] = lambda: None) -> Path:
    """Copy job A's folder into job B's, as the worker does; B's copy of it (``inputs/A``)."""
    import_artifacts("B", ["A"], WorkerFolders(state), state / "artifacts" / "B", between)
    return state / "artifacts" / "B" / "inputs" / "A"


# -- links and what else a run left on the target side ----------------------------------------------------------------
@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_link_or_fifo_a_run_left_where_a_copied_file_goes_is_replaced_and_never_written_through(
        tmp_path: Path, planted: str) -> None:
    """The handler writes its folder, ``inputs/`` too: a link there to the worker's own ``~/.bashrc`` had the next
    copy write the other job's file into it."""
    src = _source(tmp_path)
    (src / "f.txt").write_text("copied")
    outside = tmp_path / "bashrc"
    outside.write_text("the worker's own")
    place = tmp_path / "artifacts" / "B" / "inputs" / "A" / "f.txt"
    place.parent.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        if planted == "link":
            place.symlink_to(outside)
        else:  # a reader, or a copy that opens it (as before the fix) would wait for one for ever
            os.mkfifo(place)
            reader = os.open(place, os.O_RDONLY | os.O_NONBLOCK)
            stack.callback(os.close, reader)
        _copy(tmp_path)
    assert outside.read_text() == "the worker's own"  # before the fix: "copied" (for "fifo": the bytes went to the pipe)
    assert stat.S_ISREG(os.lstat(place).st_mode) and place.read_text() == "copied"


@pytest.mark.parametrize("where", ["inputs", "inputs/A", "inputs/A/sub"])
def test_a_link_to_a_folder_where_a_copied_folder_goes_is_replaced_and_nothing_is_written_where_it_leads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str) -> None:
    src = _source(tmp_path)
    (src / "sub").mkdir()
    (src / "sub" / "g.txt").write_text("copied")
    (src / "f.txt").write_text("copied")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = tmp_path / "artifacts" / "B" / where
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere, target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="orchestrator.artifacts_import"):
        copy = _copy(tmp_path)
    # before the fix: "inputs/A/sub" filled elsewhere/; "inputs" and "inputs/A" were PATH_ESCAPE (safe_join), the
    # job failed for good
    assert list(elsewhere.iterdir()) == []
    assert not link.is_symlink() and link.is_dir()
    assert (copy / "f.txt").read_text() == "copied" and (copy / "sub" / "g.txt").read_text() == "copied"
    assert [r.path for r in caplog.records if "removed the symbolic link" in r.message] == [str(link)]


def test_the_jobs_own_folder_a_link_is_path_escape_and_nothing_is_copied_where_it_leads(tmp_path: Path) -> None:
    """The worker refuses it when the run starts (``WorkerFolders.artifacts_dir``); the copy does not follow it
    either, should it meet one."""
    (_source(tmp_path) / "f.txt").write_text("copied")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "artifacts" / "B").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PathEscapeError, match="is a symbolic link where a folder of the store belongs"):
        _copy(tmp_path)
    assert list(elsewhere.iterdir()) == []  # before the fix: inputs/A/f.txt made there


@pytest.mark.parametrize("left, source", [("folder", "file"), ("file", "folder"), ("fifo", "folder")])
def test_a_file_or_folder_a_run_left_where_the_copy_needs_the_other_is_the_jobs_failure_and_is_kept(
        tmp_path: Path, left: str, source: str) -> None:
    """Not a link: the run's own work, perhaps; removing a folder of it (a tree) is not the copy's to do."""
    src = _source(tmp_path)
    if source == "file":
        (src / "x").write_text("copied")
    else:
        (src / "x").mkdir()
    place = tmp_path / "artifacts" / "B" / "inputs" / "A" / "x"
    place.parent.mkdir(parents=True)
    if left == "folder":
        place.mkdir()
        (place / "work.txt").write_text("the run's")
    elif left == "file":
        place.write_text("the run's")
    else:
        os.mkfifo(place)
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)  # never waiting on the FIFO
    assert not failed.value.store and failed.value.error.filename == str(place)
    if left == "fifo":
        assert stat.S_ISFIFO(os.lstat(place).st_mode)
    else:
        assert (place / "work.txt" if left == "folder" else place).read_text() == "the run's"


# -- modes of an earlier copy -----------------------------------------------------------------------------------------
@pytest.fixture
def state_of_a_user() -> Iterator[Path]:
    """A state folder a worker that is not root can own: ``tmp_path`` lies in a folder only its owner may enter."""
    with folder_of(None, "copy-guard-") as state:
        yield state


def _copy_as_a_worker_that_is_not_root(state: Path) -> None:
    """``_copy`` by this user, or when the tests run as root by ``OTHER_USER``, owner of ``state``, in a forked
    child (no ``exec``: the interpreter may lie where that user cannot read)."""
    if os.geteuid() != 0:
        _copy(state)
        return
    for folder, subfolders, files in os.walk(state):
        for name in [folder, *(os.path.join(folder, n) for n in subfolders + files)]:
            os.chown(name, OTHER_USER, OTHER_USER)
    error = in_a_child_as(OTHER_USER, lambda: _copy(state))
    assert error == "", error


def _rewrite(path: Path, text: str) -> None:
    """Give a read-only file new contents, its mode kept."""
    mode = stat.S_IMODE(path.stat().st_mode)
    path.chmod(mode | stat.S_IWUSR)
    path.write_text(text)
    path.chmod(mode)


def test_a_read_only_file_and_folder_copied_once_are_copied_again_by_a_worker_that_is_not_root(
        state_of_a_user: Path) -> None:
    """The copy keeps the source's modes: a 0444 file, a 0555 folder. Its next run replaced neither (``EACCES``, the
    job's failure, at every run): the file is now made anew, the folder writable until it is filled."""
    src = _source(state_of_a_user)
    (src / "sealed").mkdir()
    for path in (src / "ro.txt", src / "sealed" / "f.txt"):
        path.write_text("one")
        path.chmod(0o444)
    (src / "sealed").chmod(0o555)
    _copy_as_a_worker_that_is_not_root(state_of_a_user)
    for path in (src / "ro.txt", src / "sealed" / "f.txt"):
        _rewrite(path, "two")
    _copy_as_a_worker_that_is_not_root(state_of_a_user)  # before the fix: CopyFailed (store=False): Permission denied
    copy = state_of_a_user / "artifacts" / "B" / "inputs" / "A"
    assert (copy / "ro.txt").read_text() == "two" and (copy / "sealed" / "f.txt").read_text() == "two"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (copy / "ro.txt", copy / "sealed", copy / "sealed/f.txt")}
    assert modes == {"ro.txt": 0o444, "sealed": 0o555, "f.txt": 0o444}  # the source's, as before


def test_a_copied_folder_a_run_made_unopenable_is_copied_again_by_a_worker_that_is_not_root(
        state_of_a_user: Path) -> None:
    """A handler's ``chmod 000`` of its copy (``inputs/A/sub``) or of ``inputs`` itself: its owner may not even open
    it, so the next copy failed (``EACCES``, the job's failure at every run, until 2026-12-04). It is given the
    owner's bits by a ``chmod`` that never follows a link, and filled; the copy gets the source's mode again."""
    src = _source(state_of_a_user)
    (src / "sub").mkdir()
    (src / "sub" / "f.txt").write_text("one")
    _copy_as_a_worker_that_is_not_root(state_of_a_user)
    inputs = state_of_a_user / "artifacts" / "B" / "inputs"
    (src / "sub" / "f.txt").write_text("two")
    (inputs / "A" / "sub").chmod(0o000)
    _copy_as_a_worker_that_is_not_root(state_of_a_user)  # before the fix: CopyFailed (store=False): Permission denied
    assert (inputs / "A" / "sub" / "f.txt").read_text() == "two"
    assert stat.S_IMODE((inputs / "A" / "sub").stat().st_mode) == stat.S_IMODE((src / "sub").stat().st_mode)
    (src / "sub" / "f.txt").write_text("three")
    inputs.chmod(0o000)
    _copy_as_a_worker_that_is_not_root(state_of_a_user)
    assert (inputs / "A" / "sub" / "f.txt").read_text() == "three" and stat.S_IMODE(inputs.stat().st_mode) == 0o700


def test_the_chmod_that_reopens_a_folder_never_goes_through_a_link(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A link swapped in for the folder after the ``stat`` that saw a folder (the ``stat`` is made to say so): the
    folder the link leads to (anywhere) keeps its mode, and the copy fails as the job's, as before."""
    real_stat = os.stat
    monkeypatch.setattr(artifacts_import.os, "stat", lambda *a, **k: real_stat(tmp_path, **{
        key: value for key, value in k.items() if key == "follow_symlinks"}))  # a folder, as before the swap
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o000)
    outside.chmod(0o000)
    (tmp_path / "parent").mkdir()
    (tmp_path / "parent" / "sub").symlink_to(outside)
    parent = os.open(tmp_path / "parent", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert artifacts_import._opened_after_chmod(parent, "sub") is None  # noqa: SLF001
    finally:
        os.close(parent)
    monkeypatch.undo()  # the real stat again
    assert stat.S_IMODE(outside.stat().st_mode) == 0o000
    outside.chmod(0o700)


def test_a_copy_gets_the_sources_modes_and_times(tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "sub").mkdir()
    (src / "sub" / "run.sh").write_text("echo")
    (src / "sub" / "run.sh").chmod(0o751)
    (src / "sub").chmod(0o750)
    os.utime(src / "sub" / "run.sh", ns=(1_000_000_000, 2_000_000_000))
    os.utime(src / "sub", ns=(3_000_000_000, 4_000_000_000))
    copy = _copy(tmp_path)
    for name in ("sub", "sub/run.sh"):
        made, source = (copy / name).stat(), (src / name).stat()
        assert (stat.S_IMODE(made.st_mode), made.st_mtime_ns) == (stat.S_IMODE(source.st_mode), source.st_mtime_ns)


# -- a full disk ------------------------------------------------------------------------------------------------------
def test_a_file_whose_copy_fills_the_disk_is_removed_and_the_files_copied_before_it_stay(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Half a file is no copy, and it holds space until someone frees it: it goes; the whole ones stay (the next
    run copies over them)."""
    src = _source(tmp_path)
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(bytes([i]) * 2500)  # three chunks each
    monkeypatch.setattr(artifacts_import, "CHUNK", 1000)
    real, full = os.sendfile, []

    def sendfile(*args):
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    monkeypatch.setattr(os, "sendfile", sendfile)
    faults.arm("artifacts_import.after_chunk", lambda: full.append(True), nth=4)  # the first chunk of the second file
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)
    assert failed.value.store and failed.value.error.errno == errno.ENOSPC
    copy = tmp_path / "artifacts" / "B" / "inputs" / "A"
    [kept] = list(copy.iterdir())  # before the fix: two, the second 1000 bytes of 2500
    assert kept.read_bytes() == (src / kept.name).read_bytes()
    assert not Path(failed.value.error.filename).exists()


# -- the plain read/write path ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("refused_at", [1, 2, None], ids=["refused", "refused-after-a-chunk", "absent"])
def test_a_copy_without_sendfile_reads_and_writes_every_byte_calling_between_after_each_chunk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_at: int | None) -> None:
    """``sendfile`` refused (``EINVAL``: a file system that cannot) or missing (a platform without it): the copy goes
    on by ``read`` and ``write`` from where it got to, still in chunks, the lease renewed between them."""
    data = os.urandom(5500)
    (_source(tmp_path) / "big.bin").write_bytes(data)
    monkeypatch.setattr(artifacts_import, "CHUNK", 1000)
    calls = []
    if refused_at is None:
        monkeypatch.delattr(os, "sendfile")
    else:
        real = os.sendfile

        def sendfile(*args):
            calls.append(args)
            if len(calls) >= refused_at:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(*args)

        monkeypatch.setattr(os, "sendfile", sendfile)
    betweens = []
    copy = _copy(tmp_path, lambda: betweens.append(True))
    assert (copy / "big.bin").read_bytes() == data
    # when the walk before the copy looks at it, before the file is copied, and after each of its six chunks
    # (5 x 1000, 500)
    assert len(betweens) == 1 + 1 + 6
    assert len(calls) == (refused_at or 0)  # refused once: not asked again


# -- holes ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sendfile", ["sendfile", "read-write"])
def test_a_sparse_file_is_copied_with_its_holes_so_its_copy_takes_no_more_room_than_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sendfile: str) -> None:
    """A handler's ``truncate -s 1G big`` takes no room; copied byte for byte it took a gigabyte, and on a smaller
    disk the copy failed as a full disk, the store's fault: every worker that claimed the job stopped, for ever."""
    if sendfile == "read-write":
        monkeypatch.delattr(os, "sendfile")
    src = _source(tmp_path)
    size = 64 << 20
    with open(src / "middle", "wb") as f:  # a hole, data, a hole, data at the very end
        f.seek(size // 2)
        f.write(b"middle")
        f.seek(size - 3)
        f.write(b"end")
    with open(src / "tail", "wb") as f:  # data, then a hole to the end
        f.write(b"start")
        f.truncate(size)
    (src / "empty").write_bytes(b"")
    copy = _copy(tmp_path)
    for name in ("middle", "tail", "empty"):
        made, source = os.stat(copy / name), os.stat(src / name)
        assert made.st_size == source.st_size
        assert made.st_blocks <= source.st_blocks  # before the fix: 64 MiB of blocks each
    with open(copy / "middle", "rb") as f:
        assert f.read(4096) == bytes(4096)
        f.seek(size // 2 - 2)
        assert f.read(8) == b"\0\0middle"
        f.seek(size - 4)
        assert f.read() == b"\0end"
    with open(copy / "tail", "rb") as f:
        assert f.read(8) == b"start\0\0\0"
        f.seek(size - 2)
        assert f.read() == b"\0\0"


# -- room -------------------------------------------------------------------------------------------------------------
MIB = 1 << 20


def _disk(monkeypatch: pytest.MonkeyPatch, *, free: int, total: int = 1 << 40, inodes: int = 0,
          free_inodes: int = 0) -> None:
    """The job's folder on a file system of ``total`` bytes, ``free`` of them free, in blocks of 4 KiB, and
    ``inodes`` files (0: no count of them, as btrfs), as ``os.fstatvfs`` says."""
    real = os.fstatvfs

    def fstatvfs(fd: int) -> os.statvfs_result:
        st = real(fd)
        return os.statvfs_result((4096, 4096, total // 4096, free // 4096, free // 4096, inodes, free_inodes,
                                  free_inodes, st.f_flag, st.f_namemax))

    monkeypatch.setattr(os, "fstatvfs", fstatvfs)


def _three_files(tmp_path: Path) -> Path:
    src = _source(tmp_path)
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(os.urandom(MIB))
    return src


def _copied(tmp_path: Path) -> list[str]:
    copy = tmp_path / "artifacts" / "B" / "inputs" / "A"
    return sorted(p.name for p in copy.rglob("*")) if copy.exists() else []


def test_a_copy_larger_than_the_free_space_is_the_jobs_failure_found_before_anything_is_copied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3 MiB to copy, 2 MiB free: a disk that is not full, a source that does not fit. Copied until the disk
    refused, that was a full disk, the store's: the job handed back, the worker stopped, every worker after it."""
    _three_files(tmp_path)
    _disk(monkeypatch, free=2 * MIB)
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)
    assert not failed.value.store and failed.value.error.errno == errno.ENOSPC  # the job's: retried
    assert "3.0 MiB" in failed.value.error.strerror and "2.0 MiB free" in failed.value.error.strerror
    assert _copied(tmp_path) == []


def test_a_copy_of_more_files_than_the_file_system_can_still_make_is_the_jobs_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    for i in range(20):
        (src / f"f{i:02d}").write_bytes(b"")
    _disk(monkeypatch, free=1 << 30, inodes=10_000, free_inodes=10)
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)
    assert not failed.value.store and "21 files and folders" in failed.value.error.strerror
    assert "room for 10 more files" in failed.value.error.strerror
    assert _copied(tmp_path) == []


def test_a_copy_larger_than_the_whole_file_system_is_bad_input(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """It never fits there, whatever is freed: not retried."""
    _three_files(tmp_path)
    _disk(monkeypatch, free=2 * MIB, total=2 * MIB)
    with pytest.raises(InvalidInputError, match="^input artifacts_from: copying A takes 3.0 MiB"):
        _copy(tmp_path)
    assert _copied(tmp_path) == []


def test_a_file_system_already_full_is_the_stores_fault_whatever_the_copy_takes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk with less than the store keeps free for its own writes is full, whoever filled it: no attempt spent."""
    (_source(tmp_path) / "f.txt").write_text("small")
    _disk(monkeypatch, free=4096)
    with pytest.raises(CopyFailed) as failed:
        _copy(tmp_path)
    assert failed.value.store and failed.value.error.errno == errno.ENOSPC
    assert _copied(tmp_path) == []


def test_a_file_system_that_tells_no_size_is_not_taken_for_a_full_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Some FUSE file systems say 0 blocks, 0 free: "unknown", not "full" (every copy would stop its worker)."""
    (_source(tmp_path) / "f.txt").write_text("small")
    _disk(monkeypatch, free=0, total=0)
    assert (_copy(tmp_path) / "f.txt").read_text() == "small"


@pytest.mark.parametrize("earlier", ["copy", "link"])
def test_the_room_an_earlier_copy_gives_back_counts_but_never_what_a_link_there_leads_to(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, earlier: str) -> None:
    """Each file of an earlier copy is removed before its new copy is made: a retry of a job whose copy took most
    of the disk fits again. A link a run left in its place gives back nothing, wherever it leads."""
    src = _three_files(tmp_path)
    _copy(tmp_path)
    if earlier == "link":
        outside = tmp_path / "outside"
        outside.write_bytes(os.urandom(3 * MIB))
        place = tmp_path / "artifacts" / "B" / "inputs" / "A" / "f0.bin"
        place.unlink()
        place.symlink_to(outside)
    _disk(monkeypatch, free=2 * MIB)
    if earlier == "copy":
        _copy(tmp_path)  # before the fix of the room: fine too; with a room check not counting it: CopyFailed
        assert (tmp_path / "artifacts" / "B" / "inputs" / "A" / "f0.bin").read_bytes() == (src / "f0.bin").read_bytes()
    else:
        with pytest.raises(CopyFailed) as failed:
            _copy(tmp_path)
        assert not failed.value.store


# -- loops ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("link, to", [("d", "."), ("sub/up", ".."), ("sub/deeper/top", "A"),
                                      ("sub/deeper/sideways", "../..")])
def test_a_link_loop_in_the_source_is_bad_input_naming_the_link_before_anything_is_copied(
        tmp_path: Path, link: str, to: str) -> None:
    """``ln -s . d`` beside a 5 MB file was followed 40 levels deep (40 copies) until ``ELOOP``, then retried."""
    src = _source(tmp_path)
    (src / "f.bin").write_bytes(b"x" * 5000)
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / link).symlink_to(src if to == "A" else to, target_is_directory=True)
    with pytest.raises(InvalidInputError, match=f"^input artifacts_from: A/{link} leads back to "):
        _copy(tmp_path)
    assert _copied(tmp_path) == []


@pytest.fixture
def deep(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path``, whose deep folders are removed afterwards by ``rm -rf``: pytest's removal (``shutil.rmtree``, by
    recursion) cannot, and leaves them for every later session to fail on."""
    yield tmp_path
    subprocess.run(["rm", "-rf", str(tmp_path / "artifacts")], check=True)


def _nested(top: Path, depth: int) -> None:
    """``depth`` folders ``a``, one in another, in ``top`` (made by descriptor: the path grows past ``PATH_MAX``)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("a", dir_fd=fd)
        below = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    os.close(fd)


@pytest.mark.parametrize("walk", ["the walk", "the copy"])
def test_a_source_nested_deeper_than_a_copy_goes_is_bad_input_before_anything_is_copied(
        deep: Path, monkeypatch: pytest.MonkeyPatch, walk: str) -> None:
    """5,000 folders one in another: the walk (``measure``) and the copy, one level a call, raised
    ``RecursionError`` out of the worker's loop until 2026-12-07; now a clear refusal, as for a loop of links."""
    tmp_path = deep
    src = _source(tmp_path)
    (src / "f.txt").write_text("f")
    _nested(src, 5000)
    if walk == "the copy":  # the source changed between the walk and the copy
        monkeypatch.setattr(artifacts_import, "measure", lambda *args: None)
    with pytest.raises(InvalidInputError, match=f"^input artifacts_from: A/(a/){{255}}a lies {MAX_FOLDER_DEPTH} "
                                                f"folders below A, deeper than a copy goes"):
        _copy(tmp_path)
    if walk == "the walk":
        assert _copied(tmp_path) == []


def test_a_source_as_deep_as_a_copy_goes_is_copied(tmp_path: Path) -> None:
    _nested(_source(tmp_path), MAX_FOLDER_DEPTH - 1)
    copy = _copy(tmp_path)
    assert (copy / "/".join(["a"] * (MAX_FOLDER_DEPTH - 1))).is_dir()


def test_a_loop_made_after_the_walk_before_the_copy_is_caught_by_the_copy_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other job may still be running: its folder can change between the walk and the copy."""
    src = _source(tmp_path)
    (src / "f.bin").write_bytes(b"x" * 5000)
    (src / "d").symlink_to(".", target_is_directory=True)
    monkeypatch.setattr(artifacts_import, "measure", lambda *args: None)  # the walk saw no loop
    with pytest.raises(InvalidInputError, match="^input artifacts_from: A/d leads back to A, "):
        _copy(tmp_path)
    assert not (tmp_path / "artifacts" / "B" / "inputs" / "A" / "d").exists()


def test_a_folder_two_links_lead_to_is_no_loop_and_is_copied_at_each(tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "sub").mkdir()
    (src / "sub" / "g.txt").write_text("g")
    (src / "twin").symlink_to("sub", target_is_directory=True)
    copy = _copy(tmp_path)
    assert (copy / "twin" / "g.txt").read_text() == (copy / "sub" / "g.txt").read_text() == "g"
    assert not (copy / "twin").is_symlink()


def _links_doubling(src: Path, levels: int = 30) -> None:
    """``A/d0``, a link to ``d0`` of folders ``d0`` .. ``d<levels>`` beside ``A``, each ``d<i>`` holding a file and
    two links to ``d<i+1>``: no loop, but 2**i paths to ``d<i>``, 2**30 folders to walk, a copy as large, from 31
    folders on disk."""
    chain = src.parent.parent / "chain"
    for i in range(levels + 1):
        (chain / f"d{i}").mkdir(parents=True)
        (chain / f"d{i}" / "f.txt").write_text(str(i))
    for i in range(levels):
        for name in ("a", "b"):
            (chain / f"d{i}" / name).symlink_to(chain / f"d{i + 1}", target_is_directory=True)
    (src / "d0").symlink_to(chain / "d0", target_is_directory=True)


class Endless(Exception):
    """The walk still going after far more entries than the source holds."""


def _bounded(calls: int = 200_000) -> Callable[[], None]:
    """A ``between`` that stops a walk after ``calls`` entries (the walk of 2**30 paths never ends by itself)."""
    count = iter(range(calls))

    def between() -> None:
        if next(count, None) is None:
            raise Endless(f"{calls} entries walked")

    return between


def test_a_folder_reached_through_exponentially_many_paths_of_links_is_bad_input_found_at_once(
        tmp_path: Path) -> None:
    """Walked path by path, 2**30 of them, renewing the lease, until the job was cancelled or the worker stopped
    (a copy made first, as large). A folder reached through more than ``MAX_PATHS_TO_A_FOLDER`` paths is refused,
    naming the path and the folder, nothing copied."""
    src = _source(tmp_path)
    _links_doubling(src)
    with pytest.raises(InvalidInputError, match=r"^input artifacts_from: A/d0/[ab/]+ leads to A/d0(/[ab]){30}, a folder "
                                                r"reached through 1000 paths of symbolic links already"):
        _copy(tmp_path, _bounded())
    assert _copied(tmp_path) == []


def test_a_folder_reached_through_too_many_paths_after_the_walk_is_caught_by_the_copy_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    _links_doubling(src, levels=12)
    monkeypatch.setattr(artifacts_import, "measure", lambda *args: None)  # the walk saw a folder of files
    with pytest.raises(InvalidInputError, match="paths of symbolic links already"):
        _copy(tmp_path, _bounded())


def test_a_folder_reached_through_fewer_paths_than_the_bound_is_copied_at_each(tmp_path: Path) -> None:
    """512 paths to ``d9``: each a copy, as ``copytree`` made them (2**10 - 1 copies of the 10 folders' files)."""
    src = _source(tmp_path)
    _links_doubling(src, levels=9)
    copy = _copy(tmp_path, _bounded())
    assert (copy / "d0" / "a" / "b" / "a" / "b" / "a" / "b" / "a" / "b" / "a" / "f.txt").read_text() == "9"
    assert sum(1 for p in copy.rglob("f.txt")) == 2 ** 10 - 1


@pytest.mark.parametrize("name, to, why", [("gone", "nowhere", "No such file or directory"),
                                           ("self", "self", "Too many levels of symbolic links"),
                                           ("under", "../a.txt/x", "Not a directory")])
def test_a_link_that_leads_to_nothing_is_bad_input_naming_it_before_anything_is_copied(
        tmp_path: Path, name: str, to: str, why: str) -> None:
    """A link to a path that is not there (or to itself, or below a file) fails the same way at every attempt: bad
    input, as a loop of folders is, not a source that could not be read (retried, the files before it copied)."""
    src = _source(tmp_path)
    (src / "a.txt").write_text("first")
    (src / "z").mkdir()
    (src / "z" / name).symlink_to(to)
    with pytest.raises(InvalidInputError, match=f"^input artifacts_from: A/z/{name} is a symbolic link to '{to}', "
                                                f"which leads to nothing \\({why}\\): nothing of A copied$"):
        _copy(tmp_path)
    assert _copied(tmp_path) == []


def test_a_link_broken_after_the_walk_before_the_copy_is_caught_by_the_copy_too(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    (src / "gone").symlink_to("nowhere")
    monkeypatch.setattr(artifacts_import, "measure", lambda *args: None)  # the walk saw its file
    with pytest.raises(InvalidInputError, match="^input artifacts_from: A/gone is a symbolic link to 'nowhere', "):
        _copy(tmp_path)


def test_a_fifo_anywhere_in_the_source_is_bad_input_before_anything_is_copied(tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "a.txt").write_text("first")
    (src / "z").mkdir()
    os.mkfifo(src / "z" / "pipe")
    with pytest.raises(InvalidInputError, match="A/z/pipe is not a regular file"):
        _copy(tmp_path)
    assert _copied(tmp_path) == []  # before: a.txt copied, then the pipe refused
