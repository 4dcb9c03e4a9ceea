"""Waiting until descriptors can be read, with ``poll``: every wait of the worker on a descriptor goes through here.

``select`` refuses a descriptor numbered 1024 or more (``FD_SETSIZE``: ``ValueError``), and a long-lived worker
reaches such numbers: a PostgreSQL connection per thread, a pidfd and pipes per run, a raised ``RLIMIT_NOFILE``.
``poll`` takes any number, so this is the one place that waits, and no caller goes back to ``select``; but for
``limits.read_at_most`` (a command's stdin, which may be a terminal: macOS's ``poll`` supports no device), whose
``select`` hands a descriptor it refuses to this module.
"""
from __future__ import annotations

import errno
import os
import select
from typing import Iterable


def readable(fds: Iterable[int], timeout: float | None) -> set[int]:
    """The descriptors of ``fds`` that can be read within ``timeout`` seconds (None: no limit; 0 or less: look
    once), as ``select`` counted them: a hung-up or failed one (``POLLHUP``, ``POLLERR``: a pipe whose writer
    closed, a socket the server ended) counts, since its read returns the end or the error at once. A closed
    descriptor raises ``OSError`` (``EBADF``), as ``select`` did. An exception raised by a signal handler
    (``WorkerStop``) ends the wait; a signal without one does not (PEP 475: the wait goes on to its deadline)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    ready = set()
    # milliseconds, rounded up by ``poll`` (a wait ends no sooner than asked); a negative one would not end at all
    for fd, events in poller.poll(None if timeout is None else max(0.0, timeout) * 1000):
        if events & select.POLLNVAL:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        ready.add(fd)
    return ready
