"""A worker whose descriptors are numbered above 1023, as a long-lived one's are with a raised ``RLIMIT_NOFILE``
(a PostgreSQL connection per thread, a pidfd and pipes per run). ``select`` refuses such numbers (``ValueError``,
FD_SETSIZE): every wait on a run, and the idle wake-up, failed on them. They wait with ``poll``
(``orchestrator/descriptors.py``). The PostgreSQL connection's check is in ``test_pg_connection_loss.py``."""
from __future__ import annotations

import json
import sys

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.wakeup import InotifyWatcher, make_watcher
from orchestrator.worker import Worker, WorkerSettings

from helpers import HIGH_FD, descriptors_numbered_high


def run_with_high_descriptors(orch, kind: str, value: object, **settings) -> tuple[object, dict]:
    """Submit one job and run it with a worker loop made, and run, while every lower descriptor number is taken: its
    inotify watch, the run's pipes and pidfds, and the handler process's, are numbered above 1023. The result and
    the last event."""
    job = orch.submit(kind, value, max_attempts=1)
    results: list = []
    with descriptors_numbered_high():
        worker = Worker(orch, WorkerSettings(worker_id="w1", **settings))
        assert worker.run(max_jobs=1, idle_exit=True, on_result=results.append) == 1
    assert [result.job_id for result in results] == [job]
    return results[0], json.loads(orch.store.read(job)[-1].raw)


def test_a_command_run_on_descriptors_numbered_above_1023_succeeds(orch) -> None:
    code = "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"done\", \"summary\": \"ok\"}')"
    result, last = run_with_high_descriptors(orch, "command", {"argv": [sys.executable, "-c", code]})
    assert (result.outcome, last["type"]) == ("succeeded", "job_succeeded")


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_run_on_descriptors_numbered_above_1023_succeeds(orch, mode: str) -> None:
    result, last = run_with_high_descriptors(orch, "t.echo", "x", handler_process=mode)
    assert (result.outcome, last["type"]) == ("succeeded", "job_succeeded")


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_process_that_dies_on_descriptors_numbered_above_1023_is_no_terminal_signal_exit(
        orch, mode: str) -> None:
    """The end of the reply pipe (a hung-up pipe, no data) and the exited process's pidfd are seen as such."""
    result, last = run_with_high_descriptors(orch, "t.die", 3, handler_process=mode)
    assert (result.outcome, last["data"]["error_code"]) == ("failed", "NO_TERMINAL_SIGNAL_EXIT")
    assert "status 3" in last["data"]["error"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")
def test_the_wakeup_on_a_descriptor_numbered_above_1023_times_out_then_sees_a_new_entry(tmp_path) -> None:
    with descriptors_numbered_high():
        watcher = make_watcher(tmp_path)
    try:
        assert isinstance(watcher, InotifyWatcher) and watcher.fd >= HIGH_FD
        assert watcher.wait(0.01) is False
        (tmp_path / "job-1").touch()
        assert watcher.wait(5.0) is True
    finally:
        watcher.close()
