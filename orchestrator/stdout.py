"""A command's stdout, written whole: every write to it ends written, or in the outcome the command line ends with.

A reader that went away (``| head``) is ``OutputClosed`` (exit 141), a disk that refused the output (``> file`` on a
full disk) ``OutputLost`` (``STORAGE_ERROR``, exit 10). ``install`` puts such a stdout in place of the interpreter's
for a command's process, so that this holds for whoever writes there: ``cli_common.echo``, click's own ``--help`` and
``--version``, ``export -o -``'s bundle, a plain ``print``. ``written_whole`` runs a command so and ends it in that
outcome: the command line (``cli._run``), and through ``run`` the entry points that print with ``print`` (the demo,
the reliability report, ``bench.suites``).
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import traceback
from typing import Any, Callable, Iterator

from orchestrator.errors import DISK_ERRORS, EXIT_OUTPUT_CLOSED, OutputClosed, StorageError

ACTED = "what it printed is cut short (what the command did is done: check with status)"
NOTHING_DONE = ("the command did not run, nothing was done: only its help, its version or why it could not run was "
                "to be printed")


class OutputLost(Exception):
    """Stdout refused the command's output (``> file`` on a full disk): ``written_whole`` reports ``error`` on stderr.
    Not an ``OrchestratorError``, so a command's own error handling does not try to print it on stdout again."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(exc)
        self.exc = exc

    def error(self, note: str = ACTED) -> StorageError:
        """The error reported, ``note`` saying what the command did, and so what to do about it."""
        return StorageError(f"cannot write the command's output to stdout: {self.exc.strerror or self.exc}; {note}")


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


def drop() -> None:
    """Point stdout at ``/dev/null`` (what is still buffered is dropped there), so that the interpreter's last flush
    has nothing left to fail on."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


def on_stderr(error: StorageError) -> None:
    """``error`` as the commands print one without ``--json``: ``error[CODE]: message`` on stderr."""
    from orchestrator.security import sanitize_text

    print(sanitize_text(f"error[{error.code}]: {error.message}"), file=sys.stderr, flush=True)


@contextlib.contextmanager
def written_whole(note: str = ACTED, report: Callable[[StorageError], None] = on_stderr) -> Iterator[None]:
    """Run a command with stdout ``install``ed, and what it printed flushed at its end (also an end by ``sys.exit``:
    argparse's ``--help``, a command's exit code), then end it as stdout failed, if it did: a reader that went away
    (``| head``) quietly, exit 141 as SIGPIPE would; a disk that refused the output (``> file`` on a full disk)
    with ``report`` of ``STORAGE_ERROR`` (exit 10), whose ``note`` says what the command did, or ``NOTHING_DONE``
    when the output was lost while the command line was read (``_before_running``: help, version, a usage error).
    Either way stdout is pointed at ``/dev/null`` first (``drop``)."""
    install()
    try:
        try:
            yield
        except SystemExit:
            _flush()
            raise
        _flush()
    except OutputClosed:
        drop()
        sys.exit(EXIT_OUTPUT_CLOSED)
    except OutputLost as lost:
        drop()
        error = lost.error(NOTHING_DONE if _before_running(lost) else note)
        with contextlib.suppress(OutputClosed, OutputLost, OSError):  # stderr may be gone too
            report(error)
        sys.exit(error.exit_code)


def run(main: Callable[[], int | None], note: str) -> int | None:
    """``main()``, an entry point that prints with ``print``, ``written_whole``: ``raise SystemExit(run(main, note))``,
    ``note`` saying what it did when its output is lost."""
    with written_whole(note):
        return main()


def _flush() -> None:
    """Flush stdout: what a write there can meet is an outcome, also for a stdout ``install`` left (a test's); none
    (descriptor 1 closed when the process started) or one closed already has nothing to flush."""
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except ValueError:  # closed
        pass
    except OSError as exc:
        raise outcome(exc) from None


def _before_running(lost: OutputLost) -> bool:
    """Whether ``lost`` was met while the command line was read, before the command ran: in click's
    ``Command.parse_args`` (whose eager ``--help`` and ``--version`` print and end there) or argparse's
    ``parse_known_args``, or flushing after an end there (a ``SystemExit`` it was met handling). Looked up in the
    tracebacks of ``lost`` and of the exceptions it was met handling."""
    import argparse

    readers = {argparse.ArgumentParser.parse_known_args.__code__}
    click = sys.modules.get("click")
    if click is not None:
        readers.add(click.Command.parse_args.__code__)
    exc: BaseException | None = lost
    for _ in range(10):  # a chain of exceptions each met handling the next: short, and never a loop
        if exc is None:
            return False
        if any(frame.f_code in readers for frame, _line in traceback.walk_tb(exc.__traceback__)):
            return True
        exc = exc.__context__
    return False
