"""Waking an idle worker when a job becomes ready, without busy polling.

On Linux, ``InotifyWatcher`` (libc through ctypes, no dependency) blocks in ``poll`` on
an inotify descriptor watching the ready index folder: a new entry (``IN_CREATE``) or an
announced one (``IN_ATTRIB``, touched after the event is durable) wakes it at once.
Elsewhere, or if inotify is unavailable, ``PollingWatcher`` compares the folder's mtime
every ``POLL_INTERVAL`` seconds (``ORCH_WAKEUP=poll`` forces it).

inotify wakes every watcher of a folder, so the idle workers of one queue take turns (``WatchTurn``): one watches,
the others wait until it stops, or a job comes while it runs one (``TurnBell``).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import select
import stat
import struct
import sys
import threading
import time
from pathlib import Path

from orchestrator.descriptors import readable
from orchestrator.errors import ConfigError
from orchestrator.libc import load_libc
from orchestrator.security import shown
from orchestrator.store.files import open_creating
from orchestrator.store.locks import close_lock_descriptor, open_lock_descriptor

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
IN_ATTRIB, IN_MOVED_TO, IN_CREATE, IN_CLOSE_WRITE = 0x4, 0x80, 0x100, 0x8
# the watched folder itself went away: moved (IN_MOVE_SELF), or removed, which ends the watch (IN_IGNORED)
IN_MOVE_SELF, IN_IGNORED = 0x800, 0x8000
IN_Q_OVERFLOW = 0x4000  # events were lost: which names changed is not known
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then len bytes of name
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
WAKEUP_MODES = ("auto", "poll")  # ORCH_WAKEUP


def wakeup_mode(value: str | None) -> str:
    """``ORCH_WAKEUP`` checked: ``auto`` (also unset or empty) or ``poll``. Anything else is a ``ConfigError``, as
    for every other setting: a typo (``polling``) must not leave a worker on inotify where it asked to poll."""
    mode = (value or "").strip().lower() or "auto"
    if mode not in WAKEUP_MODES:
        raise ConfigError(f"ORCH_WAKEUP must be {' or '.join(WAKEUP_MODES)}, not {shown(value)}")
    return mode


class Watcher:
    lost = False  # the folder watched is gone (removed or moved away): a new watch must be made to see entries

    def wait(self, timeout: float) -> bool:
        """True if something changed (maybe spuriously), False on timeout."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def changed(self, most: int) -> set[str] | None:
        """The names of the entries the last ``wait`` that returned True was woken for; None if that is not known
        (polling, events lost, the folder itself changed) or more than ``most``."""
        return None


class PollingWatcher(Watcher):
    def __init__(self, path: Path, interval: float = POLL_INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self._last = self._stamp()

    def _stamp(self) -> tuple[int, int]:
        try:
            st = os.stat(self.path)
            return st.st_mtime_ns, st.st_nlink
        except FileNotFoundError:
            return (0, 0)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            stamp = self._stamp()
            if stamp != self._last:
                self._last = stamp
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            pause.wait(min(self.interval, left))


class InotifyWatcher(Watcher):
    def __init__(self, path: Path) -> None:
        libc = load_libc()
        if not libc:
            raise OSError(errno.ENOSYS, "no C library to call inotify_init1 in")
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_CREATE | IN_ATTRIB | IN_MOVED_TO | IN_CLOSE_WRITE | IN_MOVE_SELF
        if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch({path}) failed")
        self.fd = fd
        self._read: list[bytes] = []  # what the last wait that returned True read: its events

    def wait(self, timeout: float) -> bool:
        if not readable([self.fd], timeout):
            return False
        read = []
        try:
            while data := os.read(self.fd, 65536):
                read.append(data)
                self.lost = self.lost or _folder_gone(data)
        except BlockingIOError:
            pass
        self._read = read  # the names in it parsed only if asked (``changed``): a reader's watch never asks
        return True

    def changed(self, most: int) -> set[str] | None:
        names: set[str] = set()
        for data in self._read:
            pos = 0
            while pos + _EVENT.size <= len(data):
                _, mask, _, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size:pos + _EVENT.size + length].rstrip(b"\0")
                if not name or mask & IN_Q_OVERFLOW:  # the folder itself, or events lost: not known
                    return None
                names.add(os.fsdecode(name))
                if len(names) > most:
                    return None
                pos += _EVENT.size + length
        return names

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _folder_gone(data: bytes) -> bool:
    """Whether these inotify events say the watched folder itself was removed or moved away (a read returns
    whole events)."""
    pos = 0
    while pos + _EVENT.size <= len(data):
        _, mask, _, length = _EVENT.unpack_from(data, pos)
        if mask & (IN_IGNORED | IN_MOVE_SELF):
            return True
        pos += _EVENT.size + length
    return False


TURN_LOCK = ".watching"  # in the index folder: held (``flock``) by the idle worker whose turn it is to watch
TURN_FIFO = ".turns"  # in the index folder: a byte written there wakes one of the idle workers waiting their turn


class WatchTurn:
    """Whose turn it is to watch the ready folder, among the idle workers of one queue: one at a time.

    inotify wakes every watcher of a folder: with four idle workers on one queue, each new job woke four processes,
    three of which walked the index and read the job for nothing, and the wake-ups alone cost the job ~1.5 ms at
    the median on two CPUs (docs/performance.md, "Several workers on one queue"). The worker whose turn it is
    holds ``flock`` on ``.watching`` and waits on its watch; the others wait on the FIFO ``.turns`` with
    ``EPOLLEXCLUSIVE``, so that one byte written there wakes one of them. The worker watching lets go once it has
    claimed a job (``release``: a byte only if other entries are ready) and takes its turn again when idle; a
    ready entry made while nobody watches rings for a waiter (``TurnBell``). One that stops, or leaves a job for
    another, lets go and rings (``hand_over``). One that dies leaves the lock free: the next entry rings, and the
    waiters try to take it each time a wait of theirs ends (``STOP_CHECK_SECONDS``). Each thread has its own (its
    own descriptions of both files: ``flock`` tells threads apart by them)."""

    def __init__(self, folder: str) -> None:
        self.mine = False
        self._lock = self._fifo = -1
        self._poll: "select.epoll | None" = None
        try:
            # a planted link, or a file of another kind, is refused: ``OSError``, and the caller watches as before
            # a process forked meanwhile (a handler process) never keeps the lock (``store.locks._LOCK_FDS``): one that
            # outlived a worker killed while watching would keep the turn from every other idle worker
            self._lock = open_lock_descriptor(
                lambda: open_creating(os.path.join(folder, TURN_LOCK), folder, os.O_RDWR | os.O_CLOEXEC))
            fifo = os.path.join(folder, TURN_FIFO)
            try:
                os.mkfifo(fifo, 0o600)
            except FileExistsError:
                pass
            self._fifo = _open_fifo(fifo)
            self._poll = select.epoll(1)
            self._poll.register(self._fifo, select.EPOLLIN | select.EPOLLEXCLUSIVE)  # Linux 4.5 and later
        except BaseException:
            self.close()
            raise

    def take(self) -> bool:
        """Whether it is this thread's turn to watch: it was, or it takes the lock now."""
        if not self.mine:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.mine = True
        return True

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the worker watching to let go, or the bytes written so far are read:
        the lock is then tried (``take``) after the last hand-over they tell of, so either it is free or another
        worker took it since."""
        assert self._poll is not None
        if self._poll.poll(timeout):
            try:
                while os.read(self._fifo, 4096):
                    pass
            except BlockingIOError:
                pass

    def release(self) -> None:
        """Let go of the turn without waking anyone: this worker has claimed a job, and takes its turn again when it
        is idle, unless a job came meanwhile (whoever makes a ready entry wakes a waiter if nobody watches:
        ``TurnBell``). So one job at a time goes to the worker that ran the last one, its process not asleep for long."""
        if self.mine:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self.mine = False

    def ring(self) -> None:
        """Wake one worker waiting its turn (a byte on the FIFO)."""
        _ring(self._fifo)

    def hand_over(self) -> None:
        """Let another idle worker watch, and wake one: this one stops, or leaves a job for another."""
        if self.mine:
            self.release()
            self.ring()

    def close(self) -> None:
        if self._lock >= 0 and self._fifo >= 0:
            self.hand_over()
        if self._poll is not None:
            self._poll.close()
            self._poll = None
        if self._lock >= 0:
            close_lock_descriptor(self._lock)
        if self._fifo >= 0:
            os.close(self._fifo)
        self._lock = self._fifo = -1


_generation = 0  # of this process: a forked child's is another (its ``TurnBell`` opens its own descriptors)


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)  # no ``getpid`` system call at each ring


def _open_fifo(path: str) -> int:
    """The turns' FIFO, to read and write: never blocks, never reads an end of file, and one descriptor both waits
    and rings. A link or a file of another kind planted there is ``OSError``."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a FIFO")
    return fd


def _ring(fifo: int) -> None:
    try:
        os.write(fifo, b"\0")
    except BlockingIOError:  # full: bytes nobody read yet will wake the next waiter
        pass


class TurnBell:
    """What a process that makes ready entries (a submit, a resume, a retry) rings after each: if no idle worker is
    watching (the turn's lock is free: the one watching claimed a job, or died), one waiting its turn is woken to
    look. One per index and process; nothing when no worker ever took turns here (the files are a worker's to make:
    looked for again at most once a second)."""

    RETRY_SECONDS = 1.0

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._fds: tuple[int, int] | None = None
        self._opened_in = -1  # the process (``_generation``) that opened them: a forked child opens its own
        self._retry_at = 0.0
        self._opening = threading.Lock()

    def ring_if_nobody_watches(self) -> None:
        fds = self._fds if self._opened_in == _generation else self._open()
        if fds is None:
            return
        lock, fifo = fds
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a worker watches: it sees the entry
        except OSError:
            return
        fcntl.flock(lock, fcntl.LOCK_UN)
        _ring(fifo)

    def __del__(self) -> None:  # an index let go of (an Orchestrator dropped) keeps no descriptor open
        fds, self._fds = self._fds, None
        if fds is not None and self._opened_in == _generation:
            close_lock_descriptor(fds[0], guarded=False)  # the bell holds its lock only for the moment of a ring
            os.close(fds[1])

    def _open(self) -> tuple[int, int] | None:
        with self._opening:
            if self._opened_in == _generation:
                return self._fds
            if time.monotonic() < self._retry_at:
                return None
            lock = fifo = -1
            try:
                lock = open_lock_descriptor(lambda: os.open(os.path.join(self.folder, TURN_LOCK),
                                                            os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC))
                fifo = _open_fifo(os.path.join(self.folder, TURN_FIFO))
            except OSError:  # no worker took turns here yet, or a file planted in the way
                if lock >= 0:
                    close_lock_descriptor(lock)
                if fifo >= 0:
                    os.close(fifo)
                self._retry_at = time.monotonic() + self.RETRY_SECONDS
                return None
            self._fds, self._opened_in = (lock, fifo), _generation
            return self._fds


def watch_turn(folder: Path) -> WatchTurn | None:
    """The thread's ``WatchTurn`` on ``folder``, or None where turns cannot be taken (no FIFO on this file
    system, a kernel before 4.5, a file planted in the way): every idle worker then watches, as before."""
    try:
        return WatchTurn(os.fspath(folder))
    except (OSError, AttributeError) as exc:  # AttributeError: no ``select.epoll`` / ``EPOLLEXCLUSIVE``
        log.info("idle workers watch for new jobs together (%s)", exc)
        return None


def make_watcher(path: Path, mode: str = "auto") -> Watcher:
    """``auto``: inotify on Linux, else polling; ``poll`` forces polling."""
    if mode != "poll" and sys.platform.startswith("linux"):
        try:
            return InotifyWatcher(path)
        except (OSError, AttributeError) as exc:
            log.warning("inotify unavailable (%s); polling the ready index every %.1fs", exc, POLL_INTERVAL)
    return PollingWatcher(path)
