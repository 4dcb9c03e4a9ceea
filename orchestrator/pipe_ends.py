"""The pipe ends of this process's handler processes, and every fork of it: one lock, so no fork copies an end unseen.

A fork copies every descriptor, and a pipe end a forked child keeps hides the end of file its reader waits for: a
reused handler process whose request pipe another process held open never saw its worker close it (it lived on as long
as that process did), and a worker never saw the death of a handler whose reply pipe another process held. So every
end of a handler process's pipes (``HandlerHost``'s request and reply pipes, a per-run child's ``fork_call`` pipe, and
a host's pidfd) is listed as it is made (``make``, ``listed``) and unlisted as it is closed (``close``), each under
``_lock``; every ``os.fork`` of the process takes that lock (``os.register_at_fork``: the worker's handler forks, a
``multiprocessing`` fork, a program's own ``os.fork`` in another thread), so a fork falls neither between an end's
creation and its listing nor between its close and its unlisting; and a forked child closes every listed end at once
but those of the pipes its own fork made (``keeping``: a handler process's own, which ``handler_main`` sorts out).

Until 2026-12-07 the ends were listed only once the handler process was forked, under a lock only the worker's own
handler forks took: a fork by another thread of the program in that window kept the request pipe open in its child,
and one inside ``HandlerHost.close`` (between the close of an end and the host forgetting it) had the child close the
end's number again, which another thread may have given to a descriptor of its own meanwhile. ``subprocess`` needs
none of this: its child closes every descriptor but 0-2 before its ``exec`` (``close_fds``), and these are
close-on-exec. The lock is held only around making and closing ends, never across a fork of its holder: a fork's other
``before`` hooks take locks of their own (``store.locks``, ``logging``), in an order no one thread can choose.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager, suppress
from typing import Callable, ContextManager, Iterable, Iterator

# Reentrant: the garbage collector may run a dropped worker's finalizer (``HandlerHost.close``, which closes ends) in
# the very thread that holds it, and, in a forked child, among the fork's hooks with the parent's lock still held.
_lock = threading.RLock()
_listed: set[int] = set()
_keeping = threading.local()  # the ends the child of this thread's fork keeps (``keeping``)


def make(pipes: int) -> list[int]:
    """``pipes`` new pipes, their ends listed: read end, write end, for each in turn. None is kept if one fails."""
    fds: list[int] = []
    with _lock:
        try:
            for _ in range(pipes):
                fds += os.pipe()
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        _listed.update(fds)
    return fds


def listed(open_fd: Callable[[], int]) -> int:
    """The descriptor ``open_fd()`` opens, listed as it is opened (a handler process's pidfd)."""
    with _lock:
        fd = open_fd()
        _listed.add(fd)
    return fd


def close(fd: int) -> None:
    """Close a listed end and unlist it, at once for every fork; nothing if it is not listed: in a forked child, the
    fork closed it already (its number may be another descriptor's since)."""
    with _lock:
        if fd in _listed:
            _listed.discard(fd)
            os.close(fd)


def guarded() -> ContextManager[bool]:
    """The lock itself, for a descriptor a forked child closes by another rule (``HandlerHost``'s folder lock): its
    opening or its close and the forgetting of its number, as one step for every fork."""
    return _lock


@contextmanager
def keeping(fds: Iterable[int]) -> Iterator[None]:
    """Around this thread's fork of a handler process: its child keeps ``fds`` (the ends of its own pipes)."""
    _keeping.fds = frozenset(fds)
    try:
        yield
    finally:
        _keeping.fds = frozenset()


def _before_fork() -> None:
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock
    for fd in _listed - getattr(_keeping, "fds", frozenset()):
        with suppress(OSError):
            os.close(fd)
    _keeping.fds = frozenset()
    _listed.clear()  # the ends kept are the child's own, not listed: its forks are its handler's business
    _lock = threading.RLock()  # the parent's is held by the forking thread (``_before_fork``)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
