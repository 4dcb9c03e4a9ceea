"""A command's stdout, written whole: every write to it ends written, or in the outcome the command line ends with.

A reader that went away (``| head``) is ``OutputClosed`` (exit 141), a disk that refused the output (``> file`` on a
full disk) ``OutputLost`` (``STORAGE_ERROR``, exit 10). ``install`` puts such a stdout in place of the interpreter's
for a command's process, so that this holds for whoever writes there: ``cli.echo``, click's own ``--help`` and
``--version``, ``export -o -``'s bundle.
"""
from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any

from orchestrator.errors import DISK_ERRORS, OutputClosed, StorageError


class OutputLost(Exception):
    """Stdout refused the command's output (``> file`` on a full disk): ``cli._run`` reports ``error`` on stderr. Not
    an ``OrchestratorError``, so a command's own error handling does not try to print it on stdout again."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc)
        self.error = StorageError(f"cannot write the command's output to stdout: {exc.strerror or exc}; what it "
                                  "printed is cut short (what the command did is done: check with status)")


def outcome(exc: OSError, err: bool = False) -> BaseException:
    """What ``exc``, met writing to stdout (``err``: stderr), is: a reader that went away ``OutputClosed``, a disk
    that refused the output ``OutputLost`` (click would end a closed pipe with exit 1, and a full disk with a
    traceback); any other error of stdout, and every error of stderr but a closed pipe, ``exc`` itself."""
    if isinstance(exc, BrokenPipeError):
        return OutputClosed()
    if err or exc.errno not in DISK_ERRORS:
        return exc
    return OutputLost(exc)


class _WholeWrites(io.FileIO):
    """Descriptor 1, where a write the system takes in part (a pipe whose reader left in the middle of it, a disk
    that filled up) is followed by another for the rest, until all is written or the system says why not
    (``outcome``). The interpreter's unbuffered stdout (``PYTHONUNBUFFERED``) writes to its descriptor without
    looking at what a write took, and dropped the rest without a word (exit 0); its buffered one loops, but raises
    a bare ``OSError``."""

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            done = super().write(view)  # all of it, but for a short write
            while done is not None and done < len(view):
                taken = super().write(view[done:])
                done = None if taken is None else done + taken
        except OSError as exc:
            raise outcome(exc) from None
        if done is None:  # a descriptor set non-blocking, full: what a BufferedWriter raises then
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        return done


def install() -> None:
    """Put stdout written whole (``_WholeWrites``) in place of the interpreter's ``sys.stdout``, buffered as that was:
    not at all with ``PYTHONUNBUFFERED`` (or ``-u``), else by a ``BufferedWriter``, whose flush, after each
    ``click.echo``, writes all it holds. A stdout already replaced (a test's, an earlier call's) or closed is left."""
    stream = sys.stdout
    if stream is None or stream is not sys.__stdout__:
        return
    try:
        fd = stream.fileno()
        stream.flush()
    except (OSError, ValueError):  # not a descriptor's, or one that fails already: the first write says how
        return
    raw = _WholeWrites(fd, "w", closefd=False)
    unbuffered = isinstance(getattr(stream, "buffer", None), io.RawIOBase)
    sys.stdout = io.TextIOWrapper(raw if unbuffered else io.BufferedWriter(raw), encoding=stream.encoding,
                                  errors=stream.errors, line_buffering=stream.line_buffering, write_through=unbuffered)
