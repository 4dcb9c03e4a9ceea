"""What a run leaves running ends with it.

multiprocessing's own helpers (forkserver, resource tracker) survive the runs of a reused handler process."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.handlers import register
from orchestrator.worker import Worker, WorkerSettings

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl and pidfds")


def make_worker(orch, **kw) -> Worker:
    kw.setdefault("worker_id", "w1")
    kw.setdefault("retry_base_seconds", 0.0)
    return Worker(orch, WorkerSettings(**kw), rng=random.Random(7))


def alive(pid: int) -> bool:
    """True for a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# -- multiprocessing's helpers serve every run of a reused handler process ----------------------------------
def pools(ctx) -> dict:
    """A pool of the job's start method, used and closed, and what the handler process knows: its helpers'
    pids and how long it took to end what the previous run left (``leftovers.last_end_seconds``)."""
    import multiprocessing
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    from orchestrator import leftovers

    with multiprocessing.get_context(ctx.input).Pool(2) as pool:
        squares = pool.map(abs, [-1, -2, -3])
    helpers = [multiprocessing.forkserver._forkserver._forkserver_pid,
               multiprocessing.resource_tracker._resource_tracker._pid]
    return {"status": "done", "summary": "pool", "output": {
        "squares": squares, "helpers": helpers, "pid": os.getpid(),
        "previous_end": getattr(leftovers, "last_end_seconds", None)}}


@linux_only
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_handler_using_a_multiprocessing_pool_runs_again_in_the_same_handler_process_without_waiting(
        orch, method: str) -> None:
    register("t.pools", pools)
    worker = make_worker(orch)
    outputs = []
    for _ in range(3):
        job = orch.submit("t.pools", method, max_attempts=1)
        result = worker.run_once()
        assert (result.job_id, result.outcome, result.error_code) == (job, "succeeded", None)
        outputs.append(orch.status(job).result["output"])
    assert all(out["squares"] == [1, 2, 3] for out in outputs)
    assert len({out["pid"] for out in outputs}) == 1  # one handler process served the three runs
    assert outputs[1]["helpers"] == outputs[2]["helpers"] == outputs[0]["helpers"]  # never killed nor restarted
    assert all(alive(pid) for pid in outputs[0]["helpers"] if pid)
    # measured in the handler process: ending what runs 1 and 2 left did not wait for the resource tracker,
    # which ignores SIGTERM (SIGKILL would come only after the 1 s grace)
    assert outputs[1]["previous_end"] < 0.25 and outputs[2]["previous_end"] < 0.25
    worker.close()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in outputs[0]["helpers"] if pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(pid) for pid in outputs[0]["helpers"] if pid)  # they end with their handler process


@linux_only
def test_a_per_run_handler_process_ends_multiprocessings_helpers_without_waiting_out_the_grace(orch) -> None:
    register("t.pools", pools)
    job = orch.submit("t.pools", "spawn", max_attempts=1)
    started = time.monotonic()
    result = make_worker(orch, handler_process="per-run").run_once()
    took = time.monotonic() - started
    assert (result.job_id, result.outcome) == (job, "succeeded")
    helpers = [pid for pid in orch.status(job).result["output"]["helpers"] if pid]
    assert helpers and not any(alive(pid) for pid in helpers)  # ended with the run's process
    assert took < 1.0  # the resource tracker ignores SIGTERM: SIGKILL comes only after the 1 s grace
