"""What a worker promises to say, whatever a handler module does to logging: a looping `worker --json` reports the
stale jobs its recovery ended in a line of their own, and the lines it promises on stderr (a recovery, a kind it has
no handler for, a key it does not trust) are printed by the command itself, not by logging's last resort."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import jobstates as js
from helpers import run_script
import worker_process_fixtures
from orchestrator import Orchestrator
from orchestrator.signing import Keyring

env, orch = worker_process_fixtures.env, worker_process_fixtures.orch  # fixtures, shared with the other worker tests

EXPIRED = "2020-01-01T00:00:00.000000Z"  # a lease long past: its worker is gone


def stale(orch, *, max_attempts: int = 1) -> str:
    """A job claimed by a worker that died: running, its lease expired."""
    job_id = orch.submit("t.echo", {"x": 1}, max_attempts=max_attempts)
    js.claim(orch, job_id, "run-dead", worker="dead-worker", lease=EXPIRED)
    return job_id


def test_a_looping_worker_json_reports_what_its_recovery_ended_in_a_line_of_its_own(env, orch) -> None:
    """Until 2026-12-03 only ``--once`` did (under ``recovered``); a looping worker's JSON lines said nothing of it."""
    dead, later = stale(orch), stale(orch, max_attempts=3)
    job = orch.submit("t.echo", {"x": 2})
    proc = run_script("worker", "--idle-exit", "--json", env={**env, "ORCH_RETRY_BASE_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    recovered = [line for line in lines if line.get("event") == "recovered"]
    assert len(recovered) == 1 and lines[0] is recovered[0]  # before the pass's claim, one line for the pass
    assert recovered[0]["worker_id"] == lines[-1]["worker_id"]
    assert sorted((r["job_id"], r["to"]) for r in recovered[0]["recovered"]) == sorted([(dead, "failed"),
                                                                                       (later, "queued")])
    assert {r["run_id"] for r in recovered[0]["recovered"]} == {"run-dead"}
    assert {line["job_id"] for line in lines if "outcome" in line} == {job, later}  # the recovered one ran again
    assert lines[-1]["event"] == "worker_stopped" and lines[-1]["jobs_run"] == 2


def test_a_looping_worker_that_recovered_nothing_prints_no_recovered_line(env, orch) -> None:
    orch.submit("t.echo", {"x": 2})
    proc = run_script("worker", "--idle-exit", "--json", env=env)
    assert proc.returncode == 0 and [json.loads(line).get("event") for line in proc.stdout.splitlines()] == [
        None, "worker_stopped"], proc.stdout


LOGGING_SETUPS = {  # what a handler module may do to logging when it is imported
    "basicConfig": "logging.basicConfig(level=logging.WARNING, format='LOGGED %(levelname)s %(name)s %(message)s')",
    "null handler": "logging.getLogger().addHandler(logging.NullHandler())",
    "root at error": "logging.getLogger().setLevel(logging.ERROR)",
    "disabled": "logging.disable(logging.CRITICAL)",
}


@pytest.mark.parametrize("setup", LOGGING_SETUPS)
@pytest.mark.parametrize("once", [True, False])
def test_the_lines_a_worker_promises_on_stderr_are_there_whatever_a_handler_module_does_to_logging(
        env, orch, base: Path, tmp_path: Path, setup: str, once: bool) -> None:
    """They were log records printed by logging's last resort: hidden by a ``NullHandler`` on the root logger, a
    higher level or ``logging.disable``, and reformatted by ``basicConfig``."""
    (tmp_path / "t_logging_setup.py").write_text(f"import logging\n{LOGGING_SETUPS[setup]}\n")
    env = {**env, "PYTHONPATH": f"{env['PYTHONPATH']}{os.pathsep}{tmp_path}",
           "ORCH_HANDLERS": "worker_handlers,t_logging_setup"}
    dead = stale(orch)
    orch.submit("nosuchkind", {})
    other = Orchestrator(base_path=base, project_id="proj", keyring=Keyring.generate()).submit("t.echo", {"x": 3})
    proc = run_script("worker", "--once" if once else "--idle-exit", env=env)
    assert proc.returncode == (11 if once else 0), proc.stderr
    lines = proc.stderr.splitlines()
    promised = [f"recovered stale job {dead} -> failed",
                "no handler for kind 'nosuchkind' (no handler is registered with this name); leaving job ",
                f"job {other} is signed by key "]
    for start in promised:
        assert len([line for line in lines if line.startswith(start)]) == 1, (start, proc.stderr)
    assert "LOGGED" not in proc.stderr  # printed by the command, not reformatted by the module's logging
