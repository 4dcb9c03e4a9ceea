"""The app's logging handlers, made safe to use in a handler process (a fork of a process that may have threads).

A fork copies every lock as it was at that moment, and the threads that held some are not in the child to let them
go. Python's ``logging`` makes its own locks anew in the child (``os.register_at_fork``), but not the lock of the
file object a handler writes through (``io.BufferedWriter``'s, which CPython never makes anew): a thread of the app
that was logging to a file at the moment of the fork left it held, and the handler's first log line to that file
waited for it for ever (2026-12-06: 38 of 50 runs of an app whose other thread logged to a file, each until its
timeout). ``fresh_streams`` gives each stream handler an object of its own on the same descriptor: a
``logging.FileHandler`` (or any handler writing to a file) goes on appending to the same open file, as the copy
it had did; one writing to the app's standard streams writes to the handler process's (the run's output, as
``print`` there does). What the parent had buffered and not written yet stays in the parent's objects, which are
kept, neither flushed (the parent writes it: here it would be written twice) nor closed, so no finalizer ever
touches them. Other locks another thread held (a ``queue.Queue`` of a ``QueueHandler``, the app's own) are not
reached: docs/worker.md, "Workers in threads of one process".
"""
from __future__ import annotations

import io
import sys
from typing import Any

_INHERITED: list[Any] = []  # the parent's stream objects replaced here: never finalized (a flush would block)


def standard_streams() -> dict[int, int]:
    """The objects that are this process's standard output and error (by ``id``), with their descriptor; taken
    before the handler process gets its own (``give_standard_streams``), and kept: a replaced ``sys.stdout`` the app
    opened itself would be finalized there, flushed (as above) and its descriptor closed."""
    found = {}
    for stream, fd in ((sys.stdout, 1), (sys.__stdout__, 1), (sys.stderr, 2), (sys.__stderr__, 2)):
        if stream is not None:
            found[id(stream)] = fd
            _INHERITED.append(stream)
    return found


def _fresh(stream: Any, standard: dict[int, int]) -> Any:
    """An object of its own for a handler's ``stream``: on its standard descriptor for one of the parent's standard
    streams, on the same descriptor for a text file; None to leave it (no lock of a file object, or not one we can
    make anew: a ``StringIO``, an object of the app's)."""
    fd = standard.get(id(stream))
    if fd is not None:
        return open(fd, "w", encoding="utf-8", errors="replace", buffering=1, closefd=False)  # as give_standard_streams
    if not (isinstance(stream, io.TextIOWrapper) and isinstance(stream.buffer, (io.BufferedWriter, io.BufferedRandom))
            and isinstance(stream.buffer.raw, io.FileIO)) or stream.closed:
        return None
    return open(stream.fileno(), "w", encoding=stream.encoding, errors=stream.errors,
                buffering=1 if stream.line_buffering else -1, closefd=False)


def _handlers(logging: Any) -> list[Any]:
    """Every logging handler alive: ``logging._handlerList`` (weak references to each one made, a handful where a
    process has hundreds of loggers), or, should a Python not have it, those of every logger."""
    refs = getattr(logging, "_handlerList", None)
    if isinstance(refs, list):
        return [handler for handler in (ref() for ref in list(refs)) if handler is not None]
    loggers = [logging.root, *(logger for logger in list(logging.root.manager.loggerDict.values())
                               if isinstance(logger, logging.Logger))]
    return list({id(handler): handler for logger in loggers for handler in logger.handlers}.values())


def fresh_streams(standard: dict[int, int]) -> None:
    """Give every logging handler that writes to a stream an object of its own (see the module's doc). Only where
    the app imported ``logging``; ~5 us with no such handler, ~20 us more each (a file object made), on a loaded
    2-CPU machine: a fork costs ~2 ms."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    for log_handler in _handlers(logging):
        stream = getattr(log_handler, "stream", None)
        if (stream is None or not isinstance(log_handler, logging.StreamHandler)
                or stream is sys.stdout or stream is sys.stderr):  # its own, made at its start (``lastResort``'s)
            continue
        try:
            fresh = _fresh(stream, standard)
            if fresh is not None:
                log_handler.stream = fresh  # not ``setStream``: it flushes the old one
                _INHERITED.append(stream)
        except (OSError, ValueError, AttributeError):  # a descriptor closed since, a stream that cannot be set: left
            continue
