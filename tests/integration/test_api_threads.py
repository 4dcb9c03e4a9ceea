"""One ``Orchestrator`` shared by the threads of an application: submits, reads, control actions and workers.

The README says an ``Orchestrator`` may be shared between threads; these tests hold it to that.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.errors import StoreClosedError
from orchestrator.worker import Worker, WorkerSettings


def test_a_handler_process_forked_by_one_thread_never_keeps_a_store_lock_another_thread_held(orch) -> None:
    """An flock belongs to the open file, which a fork shares: the reused handler process a worker forked while
    another thread held a store lock kept that lock after the thread let it go, and every later writer of that
    file waited until the handler process exited (a worker thread and a submitting thread hung for good)."""
    orch.submit("t.echo", {"n": 1})
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with orch.store.exclusive("probe"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    held.wait(10)
    worker = Worker(orch, WorkerSettings(worker_id="w1"))
    try:
        assert worker.run_once().state == "succeeded"  # forked its handler process while the lock was held
        release.set()
        holder.join(10)
        fd = os.open(orch.store.root / "locks" / "probe.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before the fix: BlockingIOError, the handler kept it
        finally:
            os.close(fd)
    finally:
        release.set()
        worker.close()


def test_threads_sharing_one_orchestrator_submit_run_and_read_every_job_once(orch) -> None:
    """16 threads submit (half with idempotency keys), 3 worker threads run them, 2 threads list meanwhile."""
    def submit(i: int) -> tuple[str, str, bool]:
        plain = orch.submit("t.echo", {"i": i})
        keyed = orch.submit_job("t.echo", {"k": i % 10}, key=f"k{i % 10}")
        assert orch.status(plain).state is not None
        return plain, keyed.job_id, keyed.created

    with ThreadPoolExecutor(16) as pool:
        submitted = list(pool.map(submit, range(60)))
    assert sum(created for _, _, created in submitted) == 10  # each key made its job exactly once
    assert len({keyed for _, keyed, _ in submitted}) == 10
    runs: list[int] = []
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with Worker(orch, WorkerSettings(worker_id=f"w{n}")) as w:
                runs.append(w.run(idle_exit=True))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(5):
                orch.jobs(states=["succeeded"])
                orch.jobs()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)] + [threading.Thread(target=read)
                                                                              for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert not any(t.is_alive() for t in threads)
    assert sum(runs) == 70  # every job ran once: no job run twice, none left
    assert {s.state for s in orch.jobs()} == {"succeeded"}


def test_stop_from_another_thread_ends_an_idle_worker_loop_at_once(orch) -> None:
    """``Worker.stop()`` set a flag the idle loop looked at only when its wait ended: up to 30 s later."""
    worker = Worker(orch, WorkerSettings(worker_id="w1"))
    loop = threading.Thread(target=worker.run)
    loop.start()
    time.sleep(0.3)  # the loop is idle, waiting for a job
    asked = time.monotonic()
    worker.stop()
    loop.join(10)
    assert not loop.is_alive()
    assert time.monotonic() - asked < 2.0  # before the fix: 30 s (IDLE_MAX_WAIT), joined after 10 s, still alive


def test_stop_from_another_thread_gives_a_running_job_its_grace_period_and_hands_it_back(orch) -> None:
    """While a job ran, ``stop()`` from another thread was seen at the next heartbeat (a third of the lease, 10 s
    by default), so the grace period started that late."""
    job = orch.submit("t.sleep", 60)
    worker = Worker(orch, WorkerSettings(worker_id="w1", stop_grace_seconds=0.5))
    results: list = []
    loop = threading.Thread(target=lambda: worker.run(on_result=results.append))
    loop.start()
    deadline = time.monotonic() + 10
    while orch.status(job).state != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    asked = time.monotonic()
    worker.stop()
    loop.join(20)
    assert not loop.is_alive()
    assert time.monotonic() - asked < 3.0  # the grace period (0.5 s), not the next heartbeat (10 s) plus it
    assert [r.outcome for r in results] == ["released"]
    assert orch.status(job).state == "queued"


@pytest.mark.parametrize("how", ["run", "run_once"])
def test_close_under_a_running_job_hands_it_back_before_it_returns(orch, tmp_path, how: str) -> None:
    """``Orchestrator.close()`` while a worker on another thread runs a job: the job is handed back (``job_released``,
    ``WORKER_STOPPED``, its handler killed at once, no grace period) before ``close`` returns, and the worker's next
    pass is refused (``STORE_CLOSED``). Until 2026-12-07 the job stayed ``running`` until its lease expired."""
    from orchestrator import Orchestrator
    from orchestrator.handlers import register

    started = tmp_path / "started"

    def slow(ctx) -> None:
        started.touch()
        time.sleep(60)

    register("t.started_then_sleeps", slow)
    job = orch.submit("t.started_then_sleeps")
    worker = Worker(orch, WorkerSettings(worker_id="w1", stop_grace_seconds=30.0))
    ended: list = []

    def loop() -> None:
        try:
            ended.append(worker.run() if how == "run" else worker.run_once())
        except BaseException as exc:  # noqa: BLE001 - what the loop ended with is the test's to check
            ended.append(exc)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not started.exists() and time.monotonic() < deadline:  # its handler runs
            time.sleep(0.02)
        assert orch.status(job).state == "running"
        asked = time.monotonic()
        orch.close()
        took = time.monotonic() - asked
        again = Orchestrator(base_path=orch.settings.base_path, project_id=orch.project_id, keyring=orch.keyring)
        last = json.loads(again.store.read(job)[-1].raw)
        assert again.status(job).state == "queued"  # before the fix: running
        assert (last["type"], last["data"]["error_code"]) == ("job_released", "WORKER_STOPPED")
        assert "its Orchestrator was closed" in last["data"]["error"]
        again.close()
        assert took < 8.0  # the handler killed at once, not after its 30 s grace (nor its lease)
        thread.join(20)
        assert not thread.is_alive()
        if how == "run":  # its next pass is refused
            assert [getattr(e, "code", e) for e in ended] == ["STORE_CLOSED"]
        else:
            assert [(r.job_id, r.outcome) for r in ended] == [(job, "released")]
    finally:
        worker.stop()
        thread.join(20)
        worker.close()


def test_close_in_a_forked_child_never_waits_for_a_pass_of_its_parents_threads(orch) -> None:
    """A pass another thread of the parent was in at the fork is not in the child (that thread is not): the child's
    ``close()`` returns at once, not ``CLOSE_WAIT_SECONDS`` later."""
    inside, leave = threading.Event(), threading.Event()

    def in_a_pass() -> None:
        with orch.worker_pass():
            inside.set()
            leave.wait(20)

    other = threading.Thread(target=in_a_pass)
    other.start()
    try:
        assert inside.wait(10)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            started = time.monotonic()
            try:
                orch.close()
            finally:
                os._exit(0 if time.monotonic() - started < 5.0 else 1)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0  # before the fix: 1 (10 s)
    finally:
        leave.set()
        other.join(10)


def test_close_from_a_signal_handler_while_this_threads_close_waits_closes_and_returns(orch) -> None:
    """A signal handler that calls ``close()`` (a program's SIGTERM handler) while ``close()`` in the same thread waits
    for another thread's pass: until fix-reva it waited for good on the close's own lock (not reentrant), held by the
    ``close`` it interrupted. It closes the store, and the ``close`` it interrupted returns, closing nothing twice."""
    inside, leave, closed_in_handler = threading.Event(), threading.Event(), []

    def in_a_pass() -> None:
        with orch.worker_pass():
            inside.set()
            leave.wait(20)

    def close_in_handler(*_: object) -> None:
        orch.close()
        closed_in_handler.append(True)

    def too_long(*_: object) -> None:
        raise TimeoutError("close() in a signal handler hung")

    store_closes: list[None] = []
    real_close = orch._store.close
    orch._store.close = lambda: (store_closes.append(None), real_close())[1]
    other = threading.Thread(target=in_a_pass)
    other.start()
    old_usr1 = signal.signal(signal.SIGUSR1, close_in_handler)
    old_alrm = signal.signal(signal.SIGALRM, too_long)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    ends = threading.Timer(0.6, leave.set)  # the pass ends while the handler's close waits for it
    try:
        assert inside.wait(10)
        timer.start()
        ends.start()
        signal.alarm(5)
        orch.close()  # waits for the other thread's pass; the handler's close comes meanwhile
        signal.alarm(0)
        assert closed_in_handler == [True]
        assert len(store_closes) == 1
        with pytest.raises(StoreClosedError):
            orch.store
    finally:
        signal.alarm(0)
        timer.cancel()
        ends.cancel()
        leave.set()
        other.join(10)
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGALRM, old_alrm)


def test_a_worker_loop_that_ends_closes_only_its_own_wait_never_another_threads(orch) -> None:
    """Workers of one Orchestrator share its queue index. One whose loop ended (``run`` closes the index's watch)
    closed the watch another thread was waiting on: that one's next wait failed on the closed descriptor (a worker
    thread died with EBADF) or, watching anew, missed a job announced before it did."""
    index = orch.queue
    watching, closed, woke = threading.Event(), threading.Event(), []

    def other_worker() -> None:
        index.wait(0)  # watching from here on
        watching.set()
        closed.wait(10)
        orch.submit("t.echo", {})  # announced while it scans, say
        woke.append(index.wait(2.0))

    other = threading.Thread(target=other_worker)
    other.start()
    watching.wait(10)
    index.wait(0)
    index.close()  # this thread's worker stopped
    closed.set()
    other.join(10)
    assert woke == [True]  # before the fix: False, the announcement was made before its new watch
