"""What a run can hand the worker at its edges: text that is not Unicode, oversized payloads, handler
modules that exit, processes a run leaves behind, secrets cut in half, and the tail of a timeout."""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator.handlers import register
from orchestrator.worker import Worker, WorkerSettings

PY = sys.executable


def make_worker(orch, **kw) -> Worker:
    kw.setdefault("worker_id", "w1")
    kw.setdefault("retry_base_seconds", 0.0)
    return Worker(orch, WorkerSettings(**kw), rng=random.Random(7))


def events(orch, job_id: str) -> list[dict]:
    return [json.loads(line.raw) for line in orch.store.read(job_id)]


def run_one(orch, kind: str, value: object = None, **kw) -> tuple[object, dict]:
    """Submit one job (one attempt), run it with a fresh worker; the result and the job's last event."""
    job = orch.submit(kind, value, max_attempts=1)
    result = make_worker(orch, **kw).run_once()
    assert result is not None and result.job_id == job
    return result, events(orch, job)[-1]


# -- text that is not Unicode --------------------------------------------------------------------------
LISTER = ("import os, json; open(b'bad-\\xff.txt', 'wb').close(); "
          "json.dump({'status': 'done', 'summary': 'listed', 'output': {'files': os.listdir('.')}}, "
          "open(os.environ['ORCH_TERMINAL_FILE'], 'w'))")


@pytest.mark.parametrize("argv", [
    [PY, "-c", LISTER],  # a file name that is not UTF-8, listed into the output
    [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
               "'{\"status\":\"done\",\"summary\":\"s\",\"output\":{\"x\":\"\\\\ud800\"}}')"],
    [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
               "'{\"status\":\"done\",\"summary\":\"s\",\"output\":{\"\\\\udcff\":1}}')"],
    [PY, "-c", "import os; open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
               "'{\"status\":\"done\",\"summary\":\"s\",\"artifacts\":[\"a\\\\udcff\"]}')"],
], ids=["non-utf8-file-name", "escaped-lone-surrogate", "surrogate-in-a-key", "surrogate-in-an-artifact"])
def test_a_payload_holding_a_lone_surrogate_is_recorded_as_malformed_payload_and_the_worker_goes_on(
        orch, argv: list[str]) -> None:
    result, last = run_one(orch, "command", {"argv": argv})
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["type"] == "job_failed" and "not valid Unicode" in last["data"]["error"]
    job = orch.submit("t.echo", "next")
    assert make_worker(orch).run_once().job_id == job and orch.status(job).state == "succeeded"


@pytest.mark.parametrize("returned, why", [
    ({"status": "done", "summary": "s", "output": {"x": "\ud800"}}, "not valid Unicode"),
    ({"status": "done", "summary": "s", "output": {1, 2}}, "not JSON: Object of type set is not JSON serializable"),
    ({"status": "done", "summary": "s", "output": float("nan")}, "not JSON: Out of range float values"),
], ids=["surrogate", "set", "nan"])
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_returning_what_is_no_json_is_malformed_payload_saying_why(
        orch, returned: object, why: str, mode: str) -> None:
    register("t.returns", lambda ctx: returned)
    result, last = run_one(orch, "t.returns", handler_process=mode)
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert why in last["data"]["error"]


def test_an_outcome_that_cannot_be_encoded_fails_the_run_instead_of_stopping_the_worker(orch, monkeypatch) -> None:
    import orchestrator.worker as worker_mod

    # a check that lets a lone surrogate through (as parse_payload once did) must not kill the worker
    real = worker_mod.parse_payload
    monkeypatch.setattr(worker_mod, "parse_payload", lambda raw, folder: worker_mod.Payload(
        **{**real(raw, folder).__dict__, "output": {"x": "\udcff"}}))
    result, last = run_one(orch, "t.echo", "x")
    assert (result.outcome, result.error_code) == ("failed", "MALFORMED_PAYLOAD")
    assert last["type"] == "job_failed" and "cannot be written as UTF-8" in last["data"]["error"]
