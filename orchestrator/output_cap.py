"""A bound on the disk a run's output file takes (``--output-max-bytes``, ``ORCH_OUTPUT_MAX_BYTES``).

A run's stdout and stderr go straight to its ``output.log`` (a command's and a per-run fork's in ``runs/run-*``,
the reused handler process's in ``runs/host-*``), of which only the sanitized tail is kept, in a failure's event.
A handler printing in a loop filled the disk until its timeout, and then the store's own writes failed. The worker
looks at the file whenever it wakes up while a run goes on (one ``lstat``); past the bound it drops the start of
the file with ``fallocate(PUNCH_HOLE | KEEP_SIZE)``: the blocks are freed, the size stays, so the handler goes on
writing at its offset (the file is opened ``O_APPEND``), the tail stays where it is, and the start reads as zero
bytes. Where the file system (or the platform) cannot punch holes, the run is stopped instead: ``OUTPUT_TOO_LARGE``,
not retried, since a retry would print as much again. The handler's other files are not bounded: this is about
runaway printing, not about a handler that means to fill the disk.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any

from orchestrator.config import MIN_OUTPUT_MAX_BYTES
from orchestrator.libc import load_libc
from orchestrator.store.files import NotRegularFileError, open_regular

log = logging.getLogger(__name__)

OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"  # the run's error code where the start cannot be dropped
OUTPUT_START_DROPPED = "OUTPUT_START_DROPPED"  # the run's warning once its start was dropped (``OutputCap.warning``)
CHECK_FIRST_SECONDS = 0.05  # a run is first looked at this long after it started (a shorter one never is)
CHECK_MAX_SECONDS = 0.25  # a file that does not grow is looked at this often (the wake-up a stop check takes anyway)
CHECK_MIN_SECONDS = 0.01  # one that grows fast at most this often: it may pass the bound by what it writes meanwhile
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
BLOCK = 4096  # holes are punched in whole blocks


def is_output_bound(value: Any) -> bool:
    """Whether ``value`` is a bound the setting takes: 0 (none) or a whole number of bytes from 1 MiB."""
    return type(value) is int and (value == 0 or value >= MIN_OUTPUT_MAX_BYTES)


def punch_start(fd: int, end: int) -> None:
    """Free the blocks of bytes ``[0, end)`` of the file open for writing as ``fd``, keeping its size; ``OSError``
    (``EOPNOTSUPP``) where the file system or the platform cannot."""
    libc = load_libc()
    fallocate = getattr(libc, "fallocate", None) if libc else None
    if fallocate is None:
        raise OSError(errno.EOPNOTSUPP, "this platform cannot punch holes in a file")
    if fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_longlong(0), ctypes.c_longlong(end)):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class OutputCap:
    """The bound of one run's output file: ``check(now)`` at the times ``next_check`` says (monotonic seconds;
    None: no bound). ``refused`` says why the run must stop, once ``check`` returned False."""

    def __init__(self, path: Path, max_bytes: int, now: float, *, extra: dict[str, Any] | None = None) -> None:
        self.path, self.max_bytes, self.extra = path, max_bytes, extra or {}
        self.keep = max_bytes // 2  # what a punch leaves of the end: the tail an event reads is 80 KB at most
        self.next_check: float | None = now + CHECK_FIRST_SECONDS if max_bytes else None
        self.dropped = 0  # bytes of the file's start dropped so far
        self.refused: str | None = None
        self._used, self._at, self._every = 0, now, CHECK_FIRST_SECONDS

    def check(self, now: float) -> bool:
        """Look at the disk the file takes; past the bound, drop its start. False when that cannot be done."""
        if self.next_check is None:
            return True
        try:
            seen = os.lstat(self.path)
        except OSError:
            seen = None
        used = seen.st_blocks * 512 if seen is not None and stat.S_ISREG(seen.st_mode) else 0
        after = used
        if seen is not None and used > self.max_bytes:
            try:
                after = self._drop_start(seen)
            except OSError as exc:
                self.refused = (f"its output took more than {self.max_bytes} bytes on disk (--output-max-bytes, "
                                f"ORCH_OUTPUT_MAX_BYTES) and its start could not be dropped there: "
                                f"{exc.strerror or exc}")
                self.next_check = None
                return False
        grown = used - self._used
        # the next look comes before the file can have grown by a quarter of the bound, at its last rate
        if grown > 0:
            every = (now - self._at) * (self.max_bytes / 4) / grown
        else:
            every = self._every * 2
        self._every = min(CHECK_MAX_SECONDS, max(CHECK_MIN_SECONDS, every))
        self._used, self._at, self.next_check = after, now, now + self._every
        return True

    def warning(self) -> dict[str, str] | None:
        """The ``{code, message}`` reported with the run's result once the start of its output was dropped; None when
        nothing was."""
        if not self.dropped:
            return None
        return {"code": OUTPUT_START_DROPPED,
                "message": f"{self.extra.get('what', self.path)}: its output passed {self.max_bytes} bytes on disk "
                           f"(--output-max-bytes, ORCH_OUTPUT_MAX_BYTES); its first {self.dropped} bytes were "
                           f"dropped, the last {self.keep} bytes or more kept"}

    def _drop_start(self, seen: os.stat_result) -> int:
        """Punch out all but the last ``keep`` bytes (whole blocks); returns the disk the file takes after."""
        try:
            fd, st = open_regular(self.path, os.O_WRONLY)
        except NotRegularFileError:
            return seen.st_blocks * 512  # replaced meanwhile: looked at again next time
        try:
            if (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
                return seen.st_blocks * 512  # replaced meanwhile
            end = (st.st_size - self.keep) // BLOCK * BLOCK
            if end <= 0:
                return st.st_blocks * 512
            punch_start(fd, end)
            first = not self.dropped
            self.dropped = end
            after = os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
        if first:
            log.warning("%s: its output passed %d bytes on disk; its start is dropped, the last %d bytes or more are "
                        "kept (--output-max-bytes)", self.extra.get("what", self.path), self.max_bytes, self.keep,
                        extra={k: v for k, v in self.extra.items() if k != "what"})
        return after
