"""Waking an idle worker when a job becomes ready, without busy polling.

On Linux, ``InotifyWatcher`` (libc through ctypes, no dependency) blocks in ``poll`` on
an inotify descriptor watching the ready index folder: a new entry (``IN_CREATE``) or an
announced one (``IN_ATTRIB``, touched after the event is durable) wakes it at once.
Elsewhere, or if inotify is unavailable, ``PollingWatcher`` compares the folder's mtime
every ``POLL_INTERVAL`` seconds (``ORCH_WAKEUP=poll`` forces it).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
import sys
import threading
import time
from pathlib import Path

from orchestrator.descriptors import readable
from orchestrator.errors import ConfigError
from orchestrator.security import shown

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
IN_ATTRIB, IN_MOVED_TO, IN_CREATE, IN_CLOSE_WRITE = 0x4, 0x80, 0x100, 0x8
# the watched folder itself went away: moved (IN_MOVE_SELF), or removed, which ends the watch (IN_IGNORED)
IN_MOVE_SELF, IN_IGNORED = 0x800, 0x8000
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
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = IN_CREATE | IN_ATTRIB | IN_MOVED_TO | IN_CLOSE_WRITE | IN_MOVE_SELF
        if libc.inotify_add_watch(fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch({path}) failed")
        self.fd = fd

    def wait(self, timeout: float) -> bool:
        if not readable([self.fd], timeout):
            return False
        try:
            while data := os.read(self.fd, 65536):
                self.lost = self.lost or _folder_gone(data)
        except BlockingIOError:
            pass
        return True

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


def make_watcher(path: Path, mode: str = "auto") -> Watcher:
    """``auto``: inotify on Linux, else polling; ``poll`` forces polling."""
    if mode != "poll" and sys.platform.startswith("linux"):
        try:
            return InotifyWatcher(path)
        except (OSError, AttributeError) as exc:
            log.warning("inotify unavailable (%s); polling the ready index every %.1fs", exc, POLL_INTERVAL)
    return PollingWatcher(path)
