"""A worker's stop: asked by ``Worker.stop`` (any thread) or by SIGTERM/SIGINT, and the waits a stop signal ends.

One ``StopRequest`` per ``Worker``, shared with what runs its claims (``orchestrator/supervisor.py``): the loop and a
run's supervision both read when the stop came (the grace period counts from it), whether a second signal hurried it,
and mark the waits a signal may break (``in_wait``). A signal raises ``WorkerStop`` only inside such a wait, never in
the middle of reading a payload (``runner.stop_deferred``); anywhere else it only sets the flag, which the waits, in
steps of ``STOP_CHECK_SECONDS``, see.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any, Callable

from orchestrator.runner import stop_is_deferred

log = logging.getLogger(__name__)

# a stop asked from another thread (``Worker.stop``) is seen this soon, idle or running a job: a signal interrupts a
# wait of the main thread, a call from another thread cannot (the waits are an inotify poll, a PostgreSQL LISTEN)
STOP_CHECK_SECONDS = 0.25


class WorkerStop(BaseException):
    """Raised inside the worker's waits by SIGTERM/SIGINT; a BaseException so no ``except Exception`` eats it."""


class StopRequest:
    """Whether, and when, a worker was asked to stop; safe to ask from any thread and from a signal handler."""

    def __init__(self) -> None:
        self.at: float | None = None  # time.monotonic() of the request
        self.hurried = False  # a stop signal came while the worker was stopping already: no more grace
        self.in_wait = False  # in a wait that a stop signal may end (``WorkerStop``)

    def ask(self) -> None:
        """No new claims; a running job gets the grace period, counted from the first request."""
        if self.at is None:
            self.at = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self.at is not None

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping:  # a second stop: the running job's grace period ends at once (``RunSupervisor.supervise``)
            self.hurried = True
        self.ask()
        log.warning("signal %d: stopping (no new claims)", signum, extra={"signal": signum})
        if self.in_wait and not stop_is_deferred():  # not in the middle of reading a payload (``stop_deferred``)
            raise WorkerStop(signum)

    def pause(self, seconds: float) -> None:
        """Sleep, unless a stop was requested; a stop signal ends the sleep."""
        try:
            self.in_wait = True
            if not self.stopping:
                threading.Event().wait(seconds)
        except WorkerStop:
            pass
        finally:
            self.in_wait = False


class SignalScope:
    """SIGTERM/SIGINT go to ``handler`` while inside, in the main thread (elsewhere nothing changes); the handlers
    they had are put back on the way out."""

    def __init__(self, handler: Callable[[int, Any], None]) -> None:
        self.handler = handler
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> "SignalScope":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.saved[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)
