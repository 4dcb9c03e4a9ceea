"""The command line a handler process shows (``/proc/PID/cmdline``: what ``ps`` prints, ``pgrep -f`` and ``pkill -f``
match), Linux only.

A Python handler's process is forked from its worker (``runner.fork_handler``), so it had the worker's command line:
``pkill -f 'orchestrator worker'`` stopped the run along with its worker, at once, instead of letting the worker give
it its grace period. It names itself ``HANDLER_TITLE`` instead, written over its own copy of the worker's arguments
(what ``setproctitle`` does, without the dependency): the kernel reads the command line from that memory. Where the
arguments cannot be found as the kernel shows them (no ``/proc``, an area already rewritten, an unexpected layout),
nothing is written and the process keeps the worker's command line.
"""
from __future__ import annotations

import ctypes
import functools
import sys

HANDLER_TITLE = b"orch-handler-process"
ARG_START_FIELD = 48  # /proc/PID/stat, proc(5): the field numbers of the arguments' area (Linux 3.5 and later)


@functools.cache
def arguments_area() -> tuple[int, int] | None:
    """Where this process's arguments are in its memory (address, size), as ``/proc/self/cmdline`` shows them; None
    where they cannot be found so. Checked once, in the worker, before it forks (a fork has them at the same
    address): the area must be read and written where the kernel says it is, inside one writable mapping, and hold
    what ``cmdline`` shows."""
    return _find_area() if sys.platform.startswith("linux") else None


def _find_area() -> tuple[int, int] | None:
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[ARG_START_FIELD - 3]), int(fields[ARG_START_FIELD - 2])  # after ")": field 3 on
        with open("/proc/self/cmdline", "rb") as fh:
            shown = fh.read()
        with open("/proc/self/maps", "rb") as fh:
            maps = fh.read().splitlines()
    except (OSError, IndexError, ValueError):
        return None
    if not (0 < start < end and end - start == len(shown) and shown.endswith(b"\0")):
        return None
    for line in maps:
        where, perms = line.split()[:2]
        low, high = (int(part, 16) for part in where.split(b"-"))
        if low <= start and end <= high:
            if not perms.startswith(b"rw") or ctypes.string_at(start, end - start) != shown:
                return None
            return start, end - start
    return None


def name_handler_process() -> None:
    """In a freshly forked handler process: show ``HANDLER_TITLE`` as its command line (cut to the area), the rest of
    the area zeroed (``arguments_area``, found by the worker before the fork)."""
    area = arguments_area()
    if area is None:
        return
    start, size = area
    title = HANDLER_TITLE[:size - 1]
    ctypes.memmove(start, title + b"\0" * (size - len(title)), size)
