"""The locks of a store's files: ``flock`` on descriptors that no forked process keeps, taken by a short spin
before a sleep (``lock_soon``: a stream's, ``exclusive``'s, a head or lease record's), the sleep bounded inside a
worker's recovery, claim and heartbeat and a ``status`` read (``bounded_waits``), and the count of this process's
appends under way (``APPENDING``), which decides whether to spin."""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from typing import Callable

from orchestrator.errors import LockHeldError

# The descriptors of this process that hold an ``flock`` of the store (or are about to). An ``flock`` belongs to the
# open file, which a fork shares: a handler process forked by one thread (a worker's) while another thread held a
# lock kept it held after that thread was done, until the handler process exited (a reused one serves 1,000 runs),
# and every writer of that file, this process's other threads included, waited for it. A forked child closes its
# copies at once; the guard keeps a fork out of the moments a descriptor is open but not (yet, or any more) listed.
_LOCK_FDS: set[int] = set()
_lock_fds_guard = threading.Lock()


class lock_descriptor:  # noqa: N801 - used as a function: ``with lock_descriptor(opener) as fd``
    """The descriptor ``opener`` opens, for an ``flock`` the caller takes on it: closed when the block ends, which
    releases the lock, and never kept by a process forked meanwhile (see ``_LOCK_FDS``). A class, not a
    ``contextmanager`` generator: it runs several times per job (~1 us less each)."""

    __slots__ = ("fd",)

    def __init__(self, opener: Callable[[], int]) -> None:
        self.fd = open_lock_descriptor(opener)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        close_lock_descriptor(self.fd)


def open_lock_descriptor(opener: Callable[[], int]) -> int:
    """The descriptor ``opener`` opens, for an ``flock`` the caller takes on it (for a block: ``lock_descriptor``;
    longer: a worker's watch turn): never kept by a process forked meanwhile (``_LOCK_FDS``). Closed by
    ``close_lock_descriptor``."""
    with _lock_fds_guard:
        fd = opener()
        _LOCK_FDS.add(fd)
    return fd


# How long a writer that finds a stream's file locked keeps trying before it sleeps in ``flock`` (``lock_soon``).
LOCK_SPIN_SECONDS = 0.0005


def lock_soon(fd: int, seconds: float = LOCK_SPIN_SECONDS, what: str = "", op: int = fcntl.LOCK_EX) -> None:
    """``flock(fd, op)`` (``LOCK_EX``; ``LOCK_SH`` for a record's reader), tried again and again for ``seconds``
    before sleeping in it. The holder of a stream's lock is writing and syncing (a worker's claim waits so for the
    submit or resume that made its job ready, ~0.1-0.5 ms): a process asleep in ``flock`` is woken when the lock is
    released, which on a VM whose idle CPUs halt took 0.8-1.5 ms more than that at P99 in W2's traces
    (docs/performance.md, "A claim that finds its job's file locked"). Trying costs a system call each time, and
    only while another holds the lock; ``sched_yield`` lets a process waiting for this CPU (the holder, on a machine
    of one CPU) run first. Not for a lock another thread of this process may hold: each try gives the GIL back and
    takes it again at once, which can keep that thread from running until the spin is over (``seconds=0``). Inside
    ``bounded_waits`` the sleep is bounded (``what``: the lock's file, for its error)."""
    if _locked_now(fd, op):  # the usual case, and the only call it costs
        return
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        os.sched_yield()
        if _locked_now(fd, op):
            return
    bound = getattr(_waits, "bound", None)
    if bound is None:
        fcntl.flock(fd, op)
    else:
        bound.wait(fd, what, op)


def _locked_now(fd: int, op: int) -> bool:
    """``flock(fd, op)`` if no other holds it (exclusively, for ``LOCK_SH``) now: whether it was taken."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


# A worker's recovery, claim and heartbeat, and ``status``, wait at most this long for a lock another process holds
# (``bounded_waits``): a live holder keeps one for ~0.1-0.5 ms (a slow disk's fsync: up to some 100 ms; a record's
# write ~5 us); one held longer is a holder paused (SIGSTOP, Ctrl-Z, a frozen VM) in the middle of its write, or of
# its read of a record, which may last for ever.
LOCK_WAIT_SECONDS = 1.0
LOCK_PAUSE_FIRST = 50e-6  # the bounded wait's first sleep between tries, doubled at each one up to LOCK_PAUSE_MAX:
LOCK_PAUSE_MAX = 0.005  # a lock released within ~1 ms after the spin is seen within ~0.4 ms, by sleeps under 1 ms
# ``bound``: this thread's ``bounded_waits`` or ``said_waits`` (None: ``lock_soon`` sleeps in ``flock``); ``said``: the
# ``said_waits`` in force, which a ``bounded_waits(None)`` nested in it keeps
_waits = threading.local()


class bounded_waits:  # noqa: N801 - used as a function: ``with bounded_waits(stop):``
    """In the block, this thread's waits for a lock of the store (``lock_soon``: a stream's, ``exclusive``'s, a head
    or lease record's, to read or write it) end with ``LockHeldError`` after ``seconds``, or once ``stop()`` is true
    (a worker's stop signal: ``flock`` asleep is retried after the signal's handler, PEP 475, so the signal alone
    would not end it). For a worker's stale recovery and claim, which pass over a job whose lock is held and try it
    again at a later pass, its heartbeat, which fails and is tried again soon, and ``status``, which reads around a
    held record: one process paused while it holds a job's lock must not stall every worker, nor ``status``.
    ``stop=None``: waits without bound again (nested), said as the ``said_waits`` around it says them, if one is."""

    __slots__ = ("stop", "seconds", "_saved")

    def __init__(self, stop: Callable[[], bool] | None, seconds: float = LOCK_WAIT_SECONDS) -> None:
        self.stop, self.seconds = stop, seconds

    def __enter__(self) -> None:
        self._saved = getattr(_waits, "bound", None)
        _waits.bound = self if self.stop is not None else getattr(_waits, "said", None)

    def __exit__(self, *exc: object) -> None:
        _waits.bound = self._saved

    def wait(self, fd: int, what: str, op: int) -> None:
        """``flock(fd, op)`` tried between sleeps growing from ``LOCK_PAUSE_FIRST`` to ``LOCK_PAUSE_MAX``."""
        assert self.stop is not None
        give_up, pause = time.monotonic() + self.seconds, LOCK_PAUSE_FIRST
        while not self.stop():
            time.sleep(pause)
            if _locked_now(fd, op):
                return
            if time.monotonic() >= give_up:
                break
            pause = min(pause * 2, LOCK_PAUSE_MAX)
        raise LockHeldError(f"the lock of {what or 'a file of the store'} is held by another process (paused, or "
                            f"writing slowly) after {self.seconds:g}s, or a stop was asked; nothing was written",
                            path=what or None)


class said_waits:  # noqa: N801 - used as a function: ``with said_waits(say):``
    """In the block, this thread's waits for a lock of the store (as ``bounded_waits``'s) that last past
    ``LOCK_WAIT_SECONDS`` call ``say(what)`` (the lock's file) once each, then go on without bound: for ``verify`` and
    control actions, which must not act without the lock (Ctrl-C ends them), so that a process paused while it holds
    one (Ctrl-Z, SIGSTOP, a frozen VM) shows instead of a silent wait. A ``bounded_waits`` nested in it rules its own
    block, but one that lifts a bound (``stop=None``: the audit entry that an audited append writes once its events
    are durable, ``EventStore.append_audited``) leaves this one in force (``_waits.said``), so that no wait without
    bound inside it is a silent one."""

    __slots__ = ("say", "_saved")

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def __enter__(self) -> None:
        self._saved = getattr(_waits, "bound", None), getattr(_waits, "said", None)
        _waits.bound = _waits.said = self

    def __exit__(self, *exc: object) -> None:
        _waits.bound, _waits.said = self._saved

    def wait(self, fd: int, what: str, op: int) -> None:
        try:
            bounded_waits(lambda: False).wait(fd, what, op)
            return
        except LockHeldError:
            self.say(what)
        fcntl.flock(fd, op)


class Appending:
    """How many appends this process has under way, its own included (``with APPENDING as under_way``): a writer
    spins for a stream's lock (``lock_soon``) only when it is alone, so that the holder is another process. A list's
    ``append`` and ``pop`` are atomic under the GIL, so no lock is needed, and none can be found taken by a signal
    handler or a finalizer that appends in the same thread, or in a forked child; a child starts from none (the
    other threads' appends are not its own)."""

    __slots__ = ("_under_way",)

    def __init__(self) -> None:
        self._under_way: list[None] = []

    @property
    def count(self) -> int:
        return len(self._under_way)

    def __enter__(self) -> int:
        self._under_way.append(None)
        return len(self._under_way)

    def __exit__(self, *exc: object) -> None:
        self._under_way.pop()

    def _reset(self) -> None:
        self._under_way.clear()


APPENDING = Appending()
os.register_at_fork(after_in_child=APPENDING._reset)


def close_lock_descriptor(fd: int, guarded: bool = True) -> None:
    """Close a descriptor of ``open_lock_descriptor``, which releases its lock. ``guarded=False`` from a finalizer
    (``__del__``): the garbage collector may run it while this thread holds the guard (a lock of the store being
    opened), and the guard is not reentrant; unguarded, a fork in between may keep the descriptor, so only for one
    that holds no lock at the time."""
    with _lock_fds_guard if guarded else contextlib.nullcontext():
        _LOCK_FDS.discard(fd)
        os.close(fd)


def _close_lock_descriptors_in_child() -> None:
    global _lock_fds_guard
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    _lock_fds_guard = threading.Lock()  # the parent's was held by the forking thread (``before``)


os.register_at_fork(before=lambda: _lock_fds_guard.acquire(), after_in_parent=lambda: _lock_fds_guard.release(),
                    after_in_child=_close_lock_descriptors_in_child)
