"""Work over many jobs split across forked processes: each signature check costs ~40-90 us of one core.

``verify`` and a cold jobs cache (``metrics``, ``status --all --state/--kind``) read and verify every job; on a large
project that is minutes of one core while the others idle. ``in_chunks`` hands chunks of the work to a pool of
forked processes, whatever the default start method (each a copy of the caller, with its keyring and store: a
PostgreSQL store opens connections of its own in a child, ``PgSessions._after_fork_in_child``; and its thread's
rule for a held lock, ``LOCK_HELD``) and yields their results in order, so the caller
builds the same result as from one process. Below ``PARALLEL_FROM`` jobs the pool's start (~10 ms) is not worth
it. Children only read; whatever is written (healed audit entries, the cache) is written by the caller.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as ResultNotYet
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterator, Sequence, TypeVar

from orchestrator.errors import OrchestratorError

PARALLEL_FROM = 2000  # jobs: fewer are done in the calling process
CHUNK = 500  # jobs a process takes at a time (a unit of progress, and of what a child holds in memory)
RESULT_WAIT_SLICE = 0.25  # seconds: a stop that missed the wait for a chunk's result is raised this late at most

T = TypeVar("T")
R = TypeVar("R")
_forked: list[tuple[Any, Callable[[Any, Any], Any]]] = []  # what a forked process runs (``_run_in_child``)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def report_thousands(progress: Callable[[int], None] | None, before: int, after: int) -> None:
    """``progress(after)`` when counting from ``before`` to ``after`` jobs passed a multiple of 1,000: what the long
    commands print, whether the jobs came one by one or a chunk at a time."""
    if progress and after // 1000 > before // 1000:
        progress(after)


def _leave_interrupts_to_the_caller() -> None:
    """In a child: Ctrl-C reaches the whole process group, and the caller ends the children (``in_chunks``); a child
    raising ``KeyboardInterrupt`` too printed its own traceback over the command's message. So does SIGTERM when
    the caller handles it (the command line: ``command_stop``; a service manager signals every process
    of its unit); a caller that SIGTERM ends leaves the children its default, so they end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if callable(signal.getsignal(signal.SIGTERM)):  # the caller's handler, copied by the fork
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _run_in_child(chunk: Any) -> Any:
    """In a child: ``work(orch, chunk)``, the two as the fork copied them (``in_chunks``)."""
    orch, work = _forked[0]
    return work(orch, chunk)


def _result_in_slices(future: Future) -> Any:
    """``future.result()``, waited for in slices: a stop signal handled just before a wait without end began (or
    taken by another thread of the process) is raised only when the wait returns (``command_stop``), and a chunk may
    take long (a job whose record a paused process holds is waited for without bound)."""
    while True:
        try:
            return future.result(RESULT_WAIT_SLICE)
        except ResultNotYet:
            continue


def may_fork() -> bool:
    """Whether forking is safe here: only in a process of one thread (the commands). A fork copies only its calling
    thread, so in a program with others (the Python API inside a service) a lock another thread held at the fork
    (logging's, a driver's) would stay locked in the child for ever: such a caller does the work itself."""
    return threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()


def in_chunks(orch: Any, work: Callable[[Any, Any], R], chunks: Sequence[Any], jobs: int,
              processes: int | None = None) -> Iterator[R]:
    """``work(orch, chunk)`` for each chunk, results in the chunks' order: here when ``jobs`` (how many the chunks
    hold) is under ``PARALLEL_FROM``, when ``processes`` is 1, there is one chunk or forking is not safe
    (``may_fork``); else in a pool of ``processes`` forked processes (default ``usable_cpus()``). An error raised by
    ``work`` in a child is raised here.

    Forked, whatever the program's default start method (``multiprocessing.set_start_method``: ``spawn``, or
    ``forkserver``, Python 3.14's default on Linux): a child takes what it needs as the fork's copy of the caller,
    never pickled, and a spawned process would have none of it. That is ``orch`` and ``work`` (``_forked``: an
    ``Orchestrator`` holds a store's connections, locks and a keyring, which no pickle carries), and the calling
    thread's rule for a lock another process holds (``locks.said_waits``, which ``verify`` enters: a child that meets
    a record a paused writer holds says ``LOCK_HELD`` and waits, as the caller would; ``bounded_waits``, a worker's),
    copied because the pool's processes are forked by the calling thread, as ``ProcessPoolExecutor`` does for its
    ``fork`` context (at the first ``submit``). Tested with ``spawn`` and ``forkserver`` set as the default
    (``test_verify_in_processes``): a pool started the default way failed each chunk (``IndexError`` in
    ``_run_in_child``) and said nothing."""
    processes = usable_cpus() if processes is None else processes
    if jobs < PARALLEL_FROM or processes <= 1 or len(chunks) <= 1 or not may_fork():
        for chunk in chunks:
            yield work(orch, chunk)
        return
    _forked[:] = [(orch, work)]
    pool = ProcessPoolExecutor(min(processes, len(chunks)), mp_context=multiprocessing.get_context("fork"),
                               initializer=_leave_interrupts_to_the_caller)
    try:
        futures = [pool.submit(_run_in_child, chunk) for chunk in chunks]  # as ``pool.map`` does
        for future in futures:
            yield _result_in_slices(future)
    except BrokenProcessPool:  # a child killed (the OOM killer, a signal): ``multiprocessing.Pool`` waited for ever
        raise OrchestratorError("a process reading the jobs ended abruptly (killed, or out of memory): run the "
                                "command again, or read with one process (verify --processes 1, metrics --processes "
                                "1: it also builds the jobs cache a first status --all --state or --kind reads)") from None
    except BaseException:  # Ctrl-C, an error of the caller's: the children's work is of no use any more
        for child in list(getattr(pool, "_processes", None) or {}):
            with contextlib.suppress(OSError):
                os.kill(child, signal.SIGKILL)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _forked.clear()
