"""SIGTERM and SIGINT in a command line process (``cli.main``, the runbook's scripts, ``bench_terminal_latency``,
``python -m bench``), from its start (``entry``) to its exit: one rule, ``COMMAND_STOP``.

The first stop signal raises ``Interrupted`` where the command is, so its ``finally`` and ``with`` blocks run (no
temporary output file left, forked readers ended, a benchmark's worker process stopped and its scratch project
removed) and the command reports it (``INTERRUPTED``, exit 143 or 130) instead of the process dying by the signal
half-way; a command that stops on them in its own way (the worker, whose handlers ``Worker.handle_signals`` installs)
reports a stop that came before its own handling began as its own (``stopped_before_start``). A step that a stop must
not cut in two (a folder made that the cleanup must know of, a process started, which half started would be left
running, the cleanup itself) is ``deferred``: a stop during it is raised as soon as it ends. Every later signal is
ignored, and so is any that comes once the command took the signals over (``taken_over``) and its handlers are gone.
A process that is stopping so (a stop taken, or the signals taken over) ignores them to its exit: ``SIG_IGN``, since
the interpreter's teardown puts ``SIG_DFL`` back in the place of a Python handler, and a worker's teardown (its
handler process ended, its connections closed) takes a while. Until 2026-12-07 the defaults were put back as the
command ended: a second SIGTERM 0-50 ms after the first (systemd signals every process of a unit; a ``kill`` sent
twice) killed a stopping worker by the signal (exit -15), and one while it printed its last line made it
``INTERRUPTED``; and the benchmarks had a second copy of this rule (``terminal_bench.StopSignals``), which put the
command line's handler back as a stopped run ended, so a second signal while it said so was a second error.

The rule starts with the process: the entry points (``entry``) call ``early`` before they import the command line, and
a stop that comes before the command begins is held, then raised as ``handled`` begins (until 2026-12-07 the 88-237 ms
of that import met Python's defaults: SIGTERM killed the process, Ctrl-C printed a traceback). Only the main thread's
steps are ``deferred``: Python raises the stop there. And a stop is raised when the main thread next runs Python code:
one that lands in the microseconds between the interpreter's last look for signals and the start of a blocking system
call (a sleep, a lock's wait) is raised when that call returns, so no step of a command should block long in one call
(the worker waits in slices, ``STOP_CHECK_SECONDS``).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

from orchestrator.errors import Interrupted

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class CommandStop:
    """The stop signals of one command line process (``COMMAND_STOP``)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the stop signal raised as ``Interrupted``
        self.pending: int | None = None  # the stop signal that came during a deferred step, raised as it ends
        self.depth = 0  # inside this many deferred steps of the main thread (the start held by ``early``: one)
        self.quiet = False  # every stop signal is ignored from now on
        self.active = False  # inside ``handled``
        self.found: dict[int, Any] | None = None  # the handlers ``early`` found, put back by ``handled``

    def early(self) -> None:
        """Handle SIGTERM and SIGINT from an entry point's first step (``entry``), before it imports the command line:
        a stop then is held, as during a ``deferred`` step (an import cut in two is no module to go on with), until
        ``handled`` begins and raises it. In the main thread only."""
        if not _in_main_thread() or self.active or self.found is not None:
            return
        self.pending, self.quiet = None, False
        self.found = self._install()
        self.depth += 1

    @contextlib.contextmanager
    def handled(self) -> Iterator[None]:
        """Handle SIGTERM and SIGINT for the block (the command); after it, put back the handlers it found, or, in a
        process that is stopping, ignore them until it exits. In the main thread only; a signal ignored when the
        command starts (``nohup``, ``cmd &`` in a script for SIGINT) stays ignored. Inside a block already handled
        (``bench-terminal-latency``, whose run is handled in the command line's) it changes nothing: one command,
        one first signal. After ``early``, a stop held since then is raised as the block begins."""
        if not _in_main_thread() or self.active:
            yield
            return
        held, saved, self.found = self.found is not None, self.found, None
        self.signum, self.quiet, self.active = None, False, True
        if saved is None:
            self.pending, saved = None, self._install()
        try:
            if held:
                self._step_ended()  # the start ``early`` held
            yield
        finally:
            stopping = self.signum is not None or self.quiet
            self.quiet, self.active = True, False
            for sig, old in saved.items():  # the interpreter's teardown puts SIG_DFL in the place of a Python handler
                signal.signal(sig, signal.SIG_IGN if stopping else old)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A step a stop must not cut in two: a stop signal during it is raised (``Interrupted``) as soon as it ends,
        the outermost of nested steps; a step that failed meanwhile is the stop's context (the stop came first). A
        step of the main thread only: the stop is raised there (Python runs signal handlers in it), so a step of
        another thread neither holds it back nor is cut by it."""
        if not _in_main_thread():
            yield
            return
        self.depth += 1
        try:
            yield
        finally:
            self._step_ended()

    def taken_over(self) -> None:
        """The command handles the stop signals itself from here on (its own handlers installed): once they are
        gone (its work over), one that reaches these handlers is ignored, not raised where it prints its last
        words."""
        self.quiet = True

    def _install(self) -> dict[int, Any]:
        """Put ``_on_signal`` in place for the stop signals not ignored; the handlers it replaced, by signal."""
        return {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}

    def _step_ended(self) -> None:
        self.depth -= 1
        if not self.depth and self.pending is not None and self.signum is None:
            self.signum = self.pending
            raise Interrupted(self.pending)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.quiet or self.signum is not None or self.pending is not None:
            return
        if self.depth:
            self.pending = signum
            return
        self.signum = signum
        raise Interrupted(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


COMMAND_STOP = CommandStop()
