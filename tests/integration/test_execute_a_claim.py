"""``Worker.execute(claim)`` from Python: a claim runs once, by the worker that made it, while it is the job's run.

Until 2026-12-07 ``execute`` ran whatever claim it was given: the same one again (the handler ran each time, each
reported ``succeeded`` with nothing recorded), another worker's, one whose job was cancelled meanwhile; and
``execute(None)`` was an ``AttributeError``.
"""
from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import pytest

from helpers import WAIT, events, make_worker
from orchestrator.errors import InvalidInputError

importlib.import_module("worker_handlers")  # registers the t.* handlers


def runs_logged(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def lost_as(result, job: str, run_id: str, state: str) -> bool:
    """Whether ``result`` says the run lost its job (``lease_lost``), which is in ``state``."""
    return (result.job_id, result.run_id, result.outcome, result.state, result.error_code) == (
        job, run_id, "lease_lost", state, "LEASE_LOST")


def test_a_claim_run_already_is_not_run_again_and_its_second_execute_is_lease_lost(any_orch, tmp_path) -> None:
    log = tmp_path / "runs.log"
    job = any_orch.submit("t.whoami", {"log": str(log)})
    with make_worker(any_orch) as worker:
        claim = worker.claim()
        assert worker.execute(claim).outcome == "succeeded"
        written = events(any_orch, job)
        assert lost_as(worker.execute(claim), job, claim.run_id, "succeeded")
        assert lost_as(worker.execute(claim), job, claim.run_id, "succeeded")
    assert runs_logged(log) == [claim.run_id] and events(any_orch, job) == written


def test_another_workers_claim_is_not_run_and_stays_that_workers(any_orch, tmp_path) -> None:
    log = tmp_path / "runs.log"
    job = any_orch.submit("t.whoami", {"log": str(log)})
    with make_worker(any_orch, worker_id="w1") as w1, make_worker(any_orch, worker_id="w2") as w2:
        claim = w1.claim()
        written = events(any_orch, job)
        result = w2.execute(claim)
        assert lost_as(result, job, claim.run_id, "running") and "w1" in result.details["message"]
        assert runs_logged(log) == [] and events(any_orch, job) == written
        assert w1.execute(claim).outcome == "succeeded"
    assert runs_logged(log) == [claim.run_id]


def test_a_claim_whose_job_was_cancelled_before_it_ran_is_lease_lost_and_not_run(any_orch, tmp_path) -> None:
    log = tmp_path / "runs.log"
    job = any_orch.submit("t.whoami", {"log": str(log)})
    with make_worker(any_orch) as worker:
        claim = worker.claim()
        any_orch.cancel(job, "no longer needed")
        written = events(any_orch, job)
        assert lost_as(worker.execute(claim), job, claim.run_id, "cancelled")
    assert runs_logged(log) == [] and events(any_orch, job) == written


@pytest.mark.parametrize("given", [None, "a claim", {"run_id": "run-1"}])
def test_execute_takes_only_a_claim_and_anything_else_is_invalid_input_with_nothing_done(any_orch, given) -> None:
    job = any_orch.submit("t.whoami", {})
    with make_worker(any_orch) as worker:
        with pytest.raises(InvalidInputError) as refused:
            worker.execute(given)
    assert (refused.value.code, refused.value.exit_code) == ("INVALID_INPUT", 3)
    assert "claim()" in refused.value.message
    assert [e["type"] for e in events(any_orch, job)] == ["job_submitted"]


def test_a_claim_executed_from_two_threads_at_once_runs_once_and_the_other_is_lease_lost(any_orch, tmp_path) -> None:
    """Both read the job running under the claim's run, this worker's: the handler ran twice, in one run folder, one
    run recorded and the other ``lease_lost`` after it had run (its processes killed as the first's leftovers)."""
    from orchestrator import faults

    log = tmp_path / "runs.log"
    logs = f"import os; open({str(log)!r}, 'a').write(os.environ['ORCH_RUN_ID'] + '\\n'); "
    done = "open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"done\", \"summary\": \"ok\"}')"
    job = any_orch.submit("command", {"argv": [sys.executable, "-c", logs + done]})
    with make_worker(any_orch) as worker:
        claim = worker.claim()
        second: list = []

        def execute_again_while_it_runs() -> None:
            meanwhile = threading.Thread(target=lambda: second.append(worker.execute(claim)))
            meanwhile.start()
            meanwhile.join(WAIT)

        faults.arm("worker.after_start", execute_again_while_it_runs)
        try:
            first = worker.execute(claim)
        finally:
            faults.disarm_all()
    assert first.outcome == "succeeded"
    assert len(second) == 1 and lost_as(second[0], job, claim.run_id, "running"), second
    assert "nothing was run" in second[0].details["message"]
    assert runs_logged(log) == [claim.run_id]
    assert [e["type"] for e in events(any_orch, job)] == ["job_submitted", "job_claimed", "job_succeeded"]
