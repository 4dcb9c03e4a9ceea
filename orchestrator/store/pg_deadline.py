"""Every call to PostgreSQL has a deadline: a watchdog thread cuts the socket of a call that is late.

A server or pooler that stalls while its kernel still acknowledges the traffic is not seen by TCP
keepalives, and psycopg waits for its answer for ever. ``Deadline`` bounds each call instead
(``ORCH_PG_DEADLINE_SECONDS``, ``docs/postgres.md``); ``Deadline.until`` bounds, on top of that, every
call a caller makes while it waits for the database for a limited time (``worker --once``).

The watchdog thread belongs to one store: ``close`` stops it (a closed store leaves no thread), a store dropped
unclosed ends it as its ``Deadline`` goes (``_watch``), a forked child starts its own (it inherits a copy of the
parent's state, but no thread: its store calls ``reset``).
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import socket
import threading
import time
import weakref
from typing import Any, Iterator

from orchestrator.errors import StorageUnavailableError

log = logging.getLogger(__name__)

# libpq's (and psycopg's) shortest connect_timeout: a shorter one counts as 2 s. Opening a connection
# inside ``Deadline.until`` may therefore end up to this late.
MIN_CONNECT_TIMEOUT = 2

_CUT: weakref.WeakSet[Any] = weakref.WeakSet()  # connections cut by a deadline, until their caller learns it


def outcome(write: bool) -> str:
    """What the caller of a call that broke off can know: a write may have committed, a read wrote nothing."""
    if write:
        return "a write in flight may or may not have been committed (read it back)"
    return "the read was cut off; nothing was written"


class Deadline:
    """Cuts the connection of a call to PostgreSQL that has not returned within ``seconds``.

    One thread per store, started by the first call and gone after a quiet period (or at ``close``, or as the
    ``Deadline`` is dropped), sleeps until the earliest deadline and shuts the late call's socket down
    (``shutdown(SHUT_RDWR)``: the blocked wait wakes at once and psycopg reports the connection lost; a cancel request
    would need a second connection to the stalled server). The caller then raises ``StorageUnavailableError``. A
    call pays two dict operations, a thread-local read and a clock read (``arm``/``disarm``);
    ``seconds=None`` turns the per-call bound off (``until`` still applies).
    """

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds or None
        self._quiet = self.seconds or 1.0  # the watcher stops after this long with nothing armed
        self._due: dict[Any, float] = {}  # connection -> monotonic deadline; one call at a time per connection
        self._local = threading.local()  # ``until``: the end of this thread's bounded wait, if any
        self.reset()

    def reset(self) -> None:
        """The watcher's state as new: at creation, and in a forked child, whose copy says "watching"
        (and may hold a lock another thread held at the fork) while no thread watches."""
        self._due.clear()  # the parent's calls in flight are not this process's
        self._lock = threading.Lock()  # held while a socket is shut down, and to start or stop the thread
        # a put wakes the watcher: by a call due sooner than it sleeps, by ``close``, and by the weak reference's
        # callback of a dropped ``Deadline`` (``_start``), which may run anywhere, the watcher's own wait included:
        # ``SimpleQueue.put`` takes no lock (an ``Event``'s ``set`` does, possibly one its thread holds: a deadlock)
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._wake_at = math.inf
        self._watching = False
        self._closing = False
        self._thread: threading.Thread | None = None

    def _until(self) -> float | None:
        """The end of this thread's bounded wait (``until``), if it is in one."""
        return getattr(self._local, "until", None)

    # -- the calls' side ------------------------------------------------------------------------
    def arm(self, conn: Any) -> None:
        """Start a call on ``conn``: due ``seconds`` from now, or at this thread's ``until`` if sooner."""
        until = self._until()
        if self.seconds is not None:
            due = time.monotonic() + self.seconds
            if until is not None and until < due:
                due = until
        elif until is None:
            return
        else:
            due = until
        self._due[conn] = due
        if due < self._wake_at:  # sooner than the watcher sleeps (a call inside ``until``): it looks again
            self._wake.put(None)
        if not self._watching:
            self._start()

    def disarm(self, conn: Any) -> bool:
        """False if the deadline passed and the connection was cut (the caller must close it)."""
        if self._due.pop(conn, None) is not None:
            if self._closing:  # ``close`` waits for the calls in flight: the watcher looks again
                self._wake.put(None)
            return True
        with self._lock:  # the watcher has it: wait until it is done (the fd must not be reused meanwhile)
            self._due.pop(conn, None)  # put back: it was not due
            if conn in _CUT:
                _CUT.discard(conn)
                return False
            return True

    @staticmethod
    def was_cut(conn: Any) -> bool:
        """Whether the watcher cut ``conn`` during the call still running on it: the session is gone, and with it every
        lock it held, though psycopg has not noticed yet. A caller that had more to send (an audit entry) knows then
        that it never reached the server."""
        return conn in _CUT

    @contextlib.contextmanager
    def bounded(self, conn: Any, write: bool = False) -> Iterator[None]:
        """The block as one call: a cut closes ``conn`` and raises ``StorageUnavailableError``."""
        self.arm(conn)
        try:
            yield
        except BaseException:
            if not self.disarm(conn):
                conn.close()
                raise self.error(write) from None
            raise
        if not self.disarm(conn):
            conn.close()
            raise self.error(write)

    def error(self, write: bool = False) -> StorageUnavailableError:
        until = self._until()
        if until is not None and until <= time.monotonic():
            why = "before the time its caller waits for it ran out"
        else:
            why = f"within {self.seconds:g}s (ORCH_PG_DEADLINE_SECONDS)"
        return StorageUnavailableError(f"PostgreSQL did not answer {why}, so the connection was cut; {outcome(write)}")

    # -- a caller that waits for a limited time ----------------------------------------------------
    @contextlib.contextmanager
    def until(self, at: float | None) -> Iterator[None]:
        """Every call this thread makes in the block ends by ``at`` (``time.monotonic()``) or is cut then,
        on top of its own deadline, so a caller waiting for the database for a bounded time is not held up
        by one more call's whole deadline. ``None``: no change (nested blocks keep the earliest end)."""
        before = self._until()
        if at is not None and before is not None:
            at = min(at, before)
        self._local.until = before if at is None else at
        try:
            yield
        finally:
            self._local.until = before

    def check_time_left(self) -> None:
        """Raise ``StorageUnavailableError`` before a call is started once this thread's ``until`` passed."""
        until = self._until()
        if until is not None and until <= time.monotonic():
            raise StorageUnavailableError("PostgreSQL was not reached before the time its caller waits for it "
                                          "ran out; nothing was written")

    def connect_timeout(self, configured: str) -> str:
        """The ``connect_timeout`` of a new connection: the configured one, or inside ``until`` the time
        left if shorter (rounded up, and at least ``MIN_CONNECT_TIMEOUT``: opening may end that much late)."""
        until = self._until()
        if until is None:
            return configured
        left = max(MIN_CONNECT_TIMEOUT, math.ceil(until - time.monotonic()))
        seconds = int(float(configured or 0))
        return str(left if seconds <= 0 else min(seconds, left))  # 0: none configured

    # -- the watcher ----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the watcher and wait for it: a closed store leaves no thread behind. The calls in flight are
        still watched until they return or are cut (a call on another thread must not lose its deadline
        because the store was closed meanwhile), so this waits at most their deadlines. A call made after
        this (there should be none) starts it again."""
        with self._lock:
            thread, self._closing = self._thread, True
        self._wake.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            self._closing = False

    def _start(self) -> None:
        with self._lock:
            if not self._watching:
                self._watching = True
                wake = self._wake
                owner = weakref.ref(self, lambda _gone: wake.put(None))  # the watcher wakes as the owner goes
                self._thread = threading.Thread(target=_watch, args=(owner, wake), name="orch-pg-deadline",
                                                daemon=True)
                self._thread.start()

    def _look(self, idle_since: float | None) -> tuple[float, float | None] | None:
        """One look of the watcher (``_watch``): cut the late calls; None if it stops now, else how long it sleeps and
        since when it has found nothing armed (``idle_since``, None: a call is armed)."""
        self._wake_at = math.inf  # from here on, every ``arm`` wakes the watcher's wait: none is missed
        _drain(self._wake)
        if self._closing and self._stop():
            return None
        now = time.monotonic()
        next_due = self._cut_late_calls(now)
        if next_due is not None:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= self._quiet and self._stop():
            return None
        self._wake_at = next_due if next_due is not None else idle_since + self._quiet  # type: ignore[operator]
        return max(0.0, self._wake_at - now), idle_since

    def _cut_late_calls(self, now: float) -> float | None:
        """Cut every call due by ``now``; the earliest deadline still ahead, None if none. A function of its own so
        that the connections it looked at go with its frame: the watcher's sleep must not keep them alive (a dropped
        store's sessions stayed open for its quiet period, until 2026-12-07)."""
        due = self._due.copy()  # one C call: atomic under the GIL
        for conn, at in due.items():
            if at <= now:
                self._cut(conn, now)
        return min((at for at in due.values() if at > now), default=None)

    def _stop(self) -> bool:
        """True (the thread ends) if nothing is armed (``close`` too waits for that). ``arm`` writes, then
        reads ``_watching``: a call armed meanwhile is either seen here or starts a new thread."""
        with self._lock:
            self._watching = False
            if self._due:
                self._watching = True
                return False
            self._thread = None
            return True

    def _cut(self, conn: Any, now: float) -> None:
        with self._lock:
            at = self._due.pop(conn, None)
            if at is None:
                return  # it returned meanwhile
            if at > now:  # it returned, and the connection's next call was armed since
                self._due[conn] = at
                return
            _CUT.add(conn)
            log.warning("PostgreSQL did not answer within %gs (or its caller's shorter wait); cutting the connection",
                        self.seconds or 0, extra={"deadline_seconds": self.seconds})
            try:
                with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001 - already closed: nothing left to unblock
                pass


def _watch(owner: weakref.ref[Deadline], wake: queue.SimpleQueue[None]) -> None:
    """The watchdog thread: it holds its ``Deadline`` only while it looks (``Deadline._look``), never while it sleeps,
    so a store dropped unclosed takes it along, and the weak reference's callback wakes the thread to end. Until
    2026-12-07 the thread held it, and slept out its quiet period: 30 ``Orchestrator``s dropped in a loop left 30."""
    idle_since: float | None = None
    while True:
        deadline = owner()
        look = None if deadline is None else deadline._look(idle_since)  # noqa: SLF001
        del deadline
        if look is None:
            return
        sleep, idle_since = look
        with contextlib.suppress(queue.Empty):
            wake.get(timeout=sleep)


def _drain(wake: queue.SimpleQueue[None]) -> None:
    """Take every wake-up already put: the watcher is about to look, which is what they asked for."""
    while not wake.empty():  # the watcher alone takes from it
        wake.get_nowait()


class _QuietCutPipelines(logging.Filter):
    """Drops psycopg's "error ignored terminating <Pipeline>" for a connection that was cut or lost: the
    block's own error (``StorageUnavailableError``) already says so, and the line is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("error ignored terminating") or not record.args:
            return True
        conn = getattr(record.args[0], "_conn", None)  # type: ignore[index]
        return conn is None or not (conn in _CUT or getattr(conn, "broken", False))


if not any(isinstance(f, _QuietCutPipelines) for f in logging.getLogger("psycopg").filters):
    logging.getLogger("psycopg").addFilter(_QuietCutPipelines())
