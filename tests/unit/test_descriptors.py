"""``descriptors.readable``: the one wait on descriptors, for any descriptor number (``select`` stopped at 1023)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.descriptors import readable

from helpers import HIGH_FD, descriptors_numbered_high


@pytest.fixture
def high_pipe():
    """A pipe whose ends are numbered above 1023."""
    with descriptors_numbered_high():
        r, w = os.pipe()
    assert r >= HIGH_FD and w >= HIGH_FD
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):  # a test closed it
            os.close(fd)


def test_a_pipe_numbered_above_1023_is_readable_once_written_and_not_before(high_pipe) -> None:
    r, w = high_pipe
    assert readable([r], 0) == set()
    os.write(w, b"x")
    assert readable([r], 0) == {r}


def test_a_pipe_whose_writer_closed_counts_as_readable_as_select_counted_it(high_pipe) -> None:
    """POLLHUP without POLLIN: the read that follows returns the end at once."""
    r, w = high_pipe
    os.close(w)
    assert readable([r], 5.0) == {r}
    assert os.read(r, 1) == b""


def test_only_the_ready_descriptors_are_returned(high_pipe) -> None:
    r, w = high_pipe
    other_r, other_w = os.pipe()
    try:
        os.write(other_w, b"x")
        assert readable([r, other_r], 0) == {other_r}
    finally:
        os.close(other_r)
        os.close(other_w)


def test_a_timeout_returns_nothing_after_about_that_long(high_pipe) -> None:
    started = time.monotonic()
    assert readable([high_pipe[0]], 0.05) == set()
    assert 0.05 <= time.monotonic() - started < 2.0


def test_a_negative_timeout_looks_once_instead_of_waiting_for_ever(high_pipe) -> None:
    assert readable([high_pipe[0]], -1.0) == set()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd_open needs Linux 5.3+")
def test_a_pidfd_numbered_above_1023_turns_readable_when_its_process_exits() -> None:
    with descriptors_numbered_high():
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.1)"])
        pidfd = os.pidfd_open(proc.pid)
    try:
        assert pidfd >= HIGH_FD
        assert readable([pidfd], 10.0) == {pidfd}
    finally:
        os.close(pidfd)
        proc.wait()


def test_a_closed_descriptor_raises_oserror_as_select_did(high_pipe) -> None:
    r, w = high_pipe
    os.close(r)
    with pytest.raises(OSError):
        readable([r], 0)


class Stop(BaseException):
    """What the worker's signal handler raises (``WorkerStop``)."""


def test_an_exception_from_a_signal_handler_ends_the_wait(high_pipe) -> None:
    def stop(_signum, _frame):
        raise Stop

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 0.05)
    started = time.monotonic()
    try:
        with pytest.raises(Stop):
            readable([high_pipe[0]], 30.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 5.0


def test_a_signal_whose_handler_returns_does_not_end_the_wait_early(high_pipe) -> None:
    seen: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, _frame: seen.append(signum))
    signal.setitimer(signal.ITIMER_REAL, 0.02)
    started = time.monotonic()
    try:
        assert readable([high_pipe[0]], 0.3) == set()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert seen == [signal.SIGALRM] and time.monotonic() - started >= 0.3


def test_read_at_most_reads_a_pipe_numbered_above_1023(high_pipe) -> None:
    """``limits.read_at_most`` waits for a pipe's bytes in slices: its wait must take any descriptor number, as this
    module's does (``Orchestrator.verify(against=)`` of a pipe, in a service past 1023 descriptors); until 2026-12-07 its
    ``select`` raised ``ValueError: filedescriptor out of range``."""
    from orchestrator.limits import read_at_most

    r, w = high_pipe
    os.write(w, b'{"a": 1}')
    os.close(w)
    with open(r, "rb", closefd=False) as source:
        assert read_at_most(source, 100) == b'{"a": 1}'
        assert read_at_most(source, 100) == b""  # at its end: nothing more, no wait


@pytest.mark.parametrize("limit", [3 * 1024 * 1024 + 5, 3 * 1024 * 1024 + 4, 100_000])
def test_read_at_most_reads_a_pipe_larger_than_one_read_whole_and_never_past_limit_plus_one(limit: int) -> None:
    """A pipe holding many reads' worth (``READ_PART_BYTES`` at a time): all of it when it fits ``limit``, else None
    having read ``limit + 1`` bytes and not one more (the rest is still in the pipe)."""
    import threading

    from orchestrator.limits import READ_PART_BYTES, read_at_most

    sent = bytes(range(256)) * (3 * 4096) + b"tail"  # 3 MiB + 4: some 48 reads of a pipe
    assert len(sent) > 40 * READ_PART_BYTES
    r, w = os.pipe()

    def writer() -> None:
        with open(w, "wb") as sink:
            sink.write(sent)

    thread = threading.Thread(target=writer)
    thread.start()
    with open(r, "rb") as source:
        got = read_at_most(source, limit)
        if limit >= len(sent):
            assert got == sent
        else:
            assert got is None
            assert source.read() == sent[limit + 1:]  # what it left unread
    thread.join(10)
