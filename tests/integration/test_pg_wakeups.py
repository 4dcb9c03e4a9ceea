"""Waking idle workers on PostgreSQL (LISTEN/NOTIFY), and what the workers sharing one index keep apart: each thread
its own listening connection and its own last reservation, a forked child its own connection and its own name.

Each "machine" is its own ``Orchestrator`` with its own store (connections) and its own base path, so nothing can pass
between them through local files; only the database is shared. The claims themselves: ``test_pg_claiming.py``.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.store.pg_queue import PgQueueIndex

from backends import Cluster, cluster_of
from helpers import WAIT, wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with cluster_of(tmp_path, monkeypatch) as c:
        yield c



# -- LISTEN/NOTIFY ---------------------------------------------------------------------------------
def test_an_idle_worker_is_woken_by_notify_within_200ms_without_polling(cluster: Cluster) -> None:
    here, submitter = cluster.machine("worker-host"), cluster.machine("submit-host")
    w = cluster.worker(here, "idle", lease_seconds=30)
    scans: list[float] = []
    real = here.queue.candidates

    def counting(now: float, **kw: Any) -> list:
        scans.append(time.monotonic())
        return real(now, **kw)

    here.queue.candidates = counting  # type: ignore[method-assign]
    done: list[Any] = []
    loop = threading.Thread(target=lambda: done.append(w.run(max_jobs=1)))
    loop.start()
    try:
        wait_until(lambda: scans, what="the first scan")
        idle_from = time.monotonic()
        time.sleep(1.0)  # measuring what an idle worker does for a second, not waiting for a decision
        assert len([s for s in scans if s >= idle_from]) == 0, f"{len(scans)} scans while idle: polling"
        job = submitter.submit("command", {"argv": ["true"]})
        loop.join(WAIT)
        assert done == [1]
    finally:
        if loop.is_alive():  # an assertion failed: wake the loop so it can stop
            w.stop()
            submitter.submit("command", {"argv": ["true"]})
            loop.join(WAIT)
    lines = [json.loads(line.raw) for line in submitter.store.read(job)]
    from orchestrator.clock import from_iso

    latency = from_iso(lines[1]["ts"]) - from_iso(lines[0]["ts"])
    assert lines[1]["type"] == "job_claimed" and latency < 0.2, f"claimed {latency * 1000:.0f} ms after submit"


def test_wait_returns_false_after_its_timeout_when_nothing_is_announced(cluster: Cluster) -> None:
    index = cluster.machine("a").queue
    assert isinstance(index, PgQueueIndex)
    index.wait(0)
    t0 = time.monotonic()
    assert index.wait(0.3) is False
    assert time.monotonic() - t0 >= 0.25
    index.close()

def test_a_lost_listen_connection_is_reopened_and_reported_as_a_wake_up(cluster: Cluster) -> None:
    here, submitter = cluster.machine("a"), cluster.machine("b")
    index = here.queue
    assert isinstance(index, PgQueueIndex)
    index.wait(0)
    pid = index._listener.info.backend_pid  # noqa: SLF001
    with submitter.store._take() as conn:  # noqa: SLF001 - an operator (or a restart) cuts the connection
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    t0 = time.monotonic()
    assert index.wait(5.0) is True and time.monotonic() - t0 < 2.0  # the caller rescans at once
    index.wait(0)  # listening again, on a new connection
    submitter.submit("t.echo", 1)
    assert index.wait(5.0) is True
    index.close()


class _Thread:
    """One worker thread of a process: what ``call`` runs, runs on that thread, in order."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._pool.submit(fn, *args).result(timeout=WAIT)

    def __enter__(self) -> "_Thread":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown()


def test_one_notification_wakes_every_worker_thread_waiting_on_a_shared_index(cluster: Cluster) -> None:
    """The workers of one ``Orchestrator`` (threads) share its queue index; each listens on its own connection, as
    worker processes do, so a job announced wakes each of them, not whichever read the shared connection first (which
    then drained the burst: the others slept until their fallback wake-up while jobs waited)."""
    here, submitter = cluster.machine("a"), cluster.machine("b")
    index = here.queue
    with _Thread() as a, _Thread() as b:
        a.call(index.wait, 0)
        b.call(index.wait, 0)
        submitter.submit("t.echo", 1)
        assert a.call(index.wait, 3.0) is True
        assert b.call(index.wait, 3.0) is True
        a.call(index.close)
        b.call(index.close)


def test_a_worker_thread_that_stops_leaves_the_others_listening(cluster: Cluster, caplog) -> None:
    """A worker that stops closes its own ``LISTEN`` connection, never the one another thread waits on: that one is
    not re-opened (no warning), and a job announced after the stop still wakes it."""
    here, submitter = cluster.machine("a"), cluster.machine("b")
    index = here.queue
    with _Thread() as a, _Thread() as b:
        a.call(index.wait, 0)
        b.call(index.wait, 0)
        listening = b.call(lambda: index._listener.info.backend_pid)  # noqa: SLF001
        a.call(index.close)  # the worker on thread a stops
        submitter.submit("t.echo", 1)
        t0 = time.monotonic()
        assert b.call(index.wait, 3.0) is True and time.monotonic() - t0 < 2.0
        assert b.call(lambda: index._listener.info.backend_pid) == listening  # noqa: SLF001
        b.call(index.close)
    assert "LISTEN connection lost" not in caplog.text


def test_a_worker_thread_reads_and_releases_its_own_reservation_after_another_threads_claim_statement(
        cluster: Cluster) -> None:
    """Each thread's last reservation is its own: another thread's claim statement in between does not take it, so
    the job is read from the reserving statement (no read of its own) and a job left is released at once."""
    here = cluster.machine("a")
    jobs = [here.submit("t.echo", i) for i in range(2)]
    index = here.queue
    now = here.clock()
    with _Thread() as a, _Thread() as b:
        mine = a.call(index.candidates, now)[0]
        theirs = b.call(index.candidates, now)[0]
        assert (mine.job_id, theirs.job_id) == (jobs[0], jobs[1])
        read = a.call(index.reserved_read, mine)
        assert read is not None and len(read[1]) == 1  # the job as the reserving statement read it
        a.call(index.release, mine)  # thread a leaves its job: offered to the others at once
        assert [e.job_id for e in b.call(index.candidates, now)][:1] == [jobs[0]]


def _fork(body: Callable[[], int]) -> int:
    """A child process that runs ``body`` and exits with what it returns (1 if it raised); its pid."""
    import warnings

    with warnings.catch_warnings():  # Python 3.12 warns about fork() with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = body()
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_forked_child_listens_on_its_own_connection_and_never_ends_the_parents(cluster: Cluster) -> None:
    """The child inherits the index with the parent's LISTEN connection: waiting on it would take the parent's
    notifications, and closing it would end the parent's session (libpq's Terminate goes to the server)."""
    here, submitter = cluster.machine("a"), cluster.machine("b")
    index = here.queue
    assert isinstance(index, PgQueueIndex)
    index.wait(0)
    parents = index._listener.info.backend_pid  # noqa: SLF001
    report_r, report_w = os.pipe()

    def child() -> int:
        index.wait(0)
        os.write(report_w, str(index._listener.info.backend_pid).encode())  # noqa: SLF001
        index.close()
        return 0

    pid = _fork(child)
    os.close(report_w)
    childs = int(os.read(report_r, 100) or 0)
    os.close(report_r)
    assert _exit_code(pid) == 0
    assert childs not in (0, parents)  # the child listened on a connection of its own
    submitter.submit("t.echo", 1)
    assert index.wait(5.0) is True
    assert index._listener.info.backend_pid == parents  # noqa: SLF001 - woken on its own session, never re-opened
    index.close()


def test_a_candidate_reserved_in_a_forked_child_names_the_child_not_its_parent(cluster: Cluster) -> None:
    """``reserved_by`` is for diagnosis: it must name the process that holds the reservation."""
    import socket

    here = cluster.machine("a")
    index = here.queue
    assert isinstance(index, PgQueueIndex)
    assert index.candidates(here.clock()) == []  # the index is made (and used) in the parent first
    job = here.submit("t.echo", 1)
    pid = _fork(lambda: 0 if [e.job_id for e in index.candidates(here.clock())][:1] == [job] else 2)
    assert _exit_code(pid) == 0
    with here.store._take() as conn:  # noqa: SLF001 - read the reservation the child made
        reserved_by = conn.execute("SELECT reserved_by FROM orch_ready WHERE project = %s AND job_id = %s",
                                   (here.project_id, job)).fetchone()[0]
    assert reserved_by == f"{socket.gethostname()}-{pid}" != f"{socket.gethostname()}-{os.getpid()}"
    index.close()
