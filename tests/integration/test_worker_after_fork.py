"""A Worker used on both sides of an ``os.fork()``: each process runs its jobs in a handler process of its own.

The handler process (``HandlerHost``) talks to its worker over pipes; a forked child inherits them. Until
2026-12-07 the child wrote its requests on its parent's pipe and read its parent's replies: one job's result was
recorded as another's (signed, verifying), or a reply cut in two read as a payload of 2,065,855,348 bytes, on both
stores. Both stores, as ``docs/worker.md`` ("A worker and `os.fork()`") says.
"""
from __future__ import annotations

import importlib
import os
import signal
import time
import traceback
from typing import Callable

from helpers import make_worker

importlib.import_module("worker_handlers")  # registers the t.* handlers


def in_a_forked_child(body: Callable[[], None]) -> tuple[int, int]:
    """Run ``body`` in a forked child that leaves at once (``os._exit``: none of the test runner's code runs there);
    returns the child's pid and exit status (0: ``body`` returned; 1: it raised, its traceback on stderr)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            body()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def ran_by(orch, job_id: str) -> dict:
    return orch.status(job_id).result["output"]


def test_a_forked_child_runs_its_job_in_a_handler_process_of_its_own_and_leaves_its_parents_alone(any_orch) -> None:
    first, in_child, after = (any_orch.submit("t.whoami", {"i": i}) for i in range(3))
    with make_worker(any_orch) as worker:
        assert worker.run_once().job_id == first
        parents_host = worker.handler_pid

        def child() -> None:
            result = worker.run_once()
            assert (result.job_id, result.outcome) == (in_child, "succeeded"), result
            worker.close()  # the child's own handler process ends; its parent's is not the child's to end

        child_pid, status = in_a_forked_child(child)
        assert status == 0
        assert worker.run_once().job_id == after
        assert worker.handler_pid == parents_host  # the same process, its folder where it was
    assert ran_by(any_orch, first)["pid"] == ran_by(any_orch, after)["pid"] == parents_host
    assert ran_by(any_orch, in_child)["worker"] == child_pid != os.getpid()
    assert ran_by(any_orch, in_child)["pid"] != parents_host


def test_a_worker_used_on_both_sides_of_a_fork_records_each_jobs_own_result(any_orch) -> None:
    jobs = [any_orch.submit("t.whoami", {"i": i, "sleep": 0.01}) for i in range(13)]
    with make_worker(any_orch) as worker:
        worker.run_once()

        def six_runs() -> None:
            for _ in range(6):
                worker.run_once()

        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                six_runs()
            finally:
                os._exit(0)
        six_runs()
        os.waitpid(pid, 0)
    for job in jobs:
        status = any_orch.status(job)
        assert (status.state, status.last_error, ran_by(any_orch, job)["job"]) == ("succeeded", None, job)
    assert any_orch.verify().ok


def exited_within(pid: int, seconds: float) -> bool:
    """Whether this process's child ``pid`` has exited (reaped here, or already by the worker) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # the worker reaped it (``reap_exited``)
            return True
        time.sleep(0.02)
    return False


def test_a_forked_child_that_never_uses_the_worker_keeps_none_of_its_handler_processes_pipes(orch) -> None:
    orch.submit("t.whoami", {})
    with make_worker(orch) as worker:
        worker.run_once()
        host = worker.handler_pid
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child: a forked server's child, or a multiprocessing one, that lives on
            time.sleep(60)
            os._exit(0)
    try:  # the worker closed: its handler process reads the end of its requests, which the child must not hold open
        assert exited_within(host, 5.0), "the handler process lived on while the forked child did"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
