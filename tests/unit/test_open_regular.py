"""``open_regular``: the one way a file something else may have replaced is opened (run output and terminal files,
key files, artifacts, left-over temporary files)."""
from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from orchestrator.store.files import NotRegularFileError, open_regular


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("flags", [os.O_RDONLY, os.O_WRONLY], ids=["read", "write"])
def test_a_regular_file_opens_and_its_status_is_the_one_of_the_file_opened(tmp_path: Path, flags: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    fd, st = open_regular(path, flags)
    try:
        assert stat.S_ISREG(st.st_mode) and st.st_size == 3
        assert (st.st_dev, st.st_ino) == (os.stat(path).st_dev, os.stat(path).st_ino)
        assert os.get_inheritable(fd) is False  # never kept by a handler process the worker starts
    finally:
        os.close(fd)


@pytest.mark.parametrize("what", ["FIFO", "folder", "FIFO through a followed link"])
def test_anything_but_a_regular_file_is_refused_at_once_and_closed(tmp_path: Path, what: str) -> None:
    """A FIFO nobody writes opens without waiting (a plain open waits for a writer for ever), and is refused."""
    path = tmp_path / "f"
    if what == "folder":
        path.mkdir()
    else:
        os.mkfifo(tmp_path / "fifo")
        path = tmp_path / "fifo" if what == "FIFO" else path
        if what != "FIFO":
            path.symlink_to(tmp_path / "fifo")
    before = _fds()
    with pytest.raises(NotRegularFileError, match="is not a regular file"):
        open_regular(path, follow=what.endswith("link"))
    assert _fds() == before


def test_a_link_is_never_followed_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(OSError) as refused:
        open_regular(tmp_path / "link")
    assert refused.value.errno == errno.ELOOP
    fd, st = open_regular(tmp_path / "link", follow=True)
    os.close(fd)
    assert st.st_size == len(b"secret")


def test_a_missing_file_or_a_socket_is_the_oserror_of_the_open(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(OSError) as refused:
            open_regular(tmp_path / "sock")
    assert refused.value.errno == errno.ENXIO and not isinstance(refused.value, NotRegularFileError)
