"""Real worker processes at a run's edges: handler modules that exit on import, processes a run leaves
behind, a worker SIGKILLed while its command's children run.

Decisions are never waited for with a fixed sleep: each test polls with a timeout.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from backends import BACKENDS, drop_project, require_pg, unique_project
from helpers import REPO, alive, finish, run_script, start_worker, stop, wait_until


@pytest.fixture
def env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), str(tmp_path)])
    return {**cli_env, "PYTHONPATH": path, "ORCH_HANDLERS": "worker_handlers"}


@pytest.fixture
def orch(env: dict[str, str], base: Path, monkeypatch: pytest.MonkeyPatch):
    """An in-process Orchestrator on the same store and key as the worker processes."""
    from orchestrator import Orchestrator

    monkeypatch.setenv("ORCH_SIGNING_KEY", env["ORCH_SIGNING_KEY"])
    return Orchestrator(base_path=base, project_id="proj")





def state(orch, job_id: str) -> str | None:
    return orch.status(job_id).state



# -- a handler module that exits while it is imported ---------------------------------------------------
@pytest.mark.parametrize("body, raised", [("import sys; sys.exit(0)", "SystemExit: 0"),
                                          ("raise KeyboardInterrupt", "KeyboardInterrupt")])
def test_worker_once_reports_a_kind_whose_module_exits_on_import_instead_of_stopping_silently(
        env, orch, tmp_path: Path, body: str, raised: str) -> None:
    (tmp_path / "t_exiting_handlers.py").write_text(f"{body}\ndef fn(ctx): return {{}}\n")
    job = orch.submit("t_exiting_handlers:fn", {})
    proc = run_script("worker", "--once", env=env)
    assert proc.returncode == 11 and "Traceback" not in proc.stderr, proc.stderr
    assert f"importing module 't_exiting_handlers' raised {raised}" in proc.stderr
    assert state(orch, job) == "queued"


def test_a_looping_worker_that_meets_a_module_exiting_on_import_runs_on_and_still_stops_on_sigterm(
        env, orch, tmp_path: Path) -> None:
    (tmp_path / "t_exiting_handlers.py").write_text(
        "import signal, sys\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nsys.exit(0)\n")
    broken = orch.submit("t_exiting_handlers:fn", {}, priority=5)
    proc = start_worker(env)
    try:
        job = orch.submit("t.echo", "after")
        wait_until(lambda: state(orch, job) == "succeeded", what="the next job to run")
        assert proc.poll() is None  # still looping
        proc.send_signal(signal.SIGTERM)
        code, _out, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    assert state(orch, broken) == "queued" and "raised SystemExit: 0" in err


# -- a worker SIGKILLed while what its run started runs on ----------------------------------------------------
LEAVE_AND_BLOCK = """
import os, subprocess, sys, time
p = subprocess.Popen(["sleep", "313"])
open(sys.argv[1] + ".tmp", "w").write(str(p.pid)); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(313)
"""


@pytest.mark.parametrize("kind", ["command", "python"])
def test_stale_recovery_kills_what_the_run_of_a_sigkilled_worker_left_before_the_job_runs_again(
        env, orch, tmp_path: Path, kind: str) -> None:
    pidfile = tmp_path / "left.pid"
    if kind == "command":
        job = orch.submit("command", {"argv": [sys.executable, "-c", LEAVE_AND_BLOCK, str(pidfile)]}, max_attempts=1)
    else:
        (tmp_path / "t_leaves.py").write_text(
            "import subprocess, sys\n"
            f"def fn(ctx):\n    sys.argv[1:] = [ctx.input]\n    exec({LEAVE_AND_BLOCK!r})\n")
        job = orch.submit("t_leaves:fn", str(pidfile), max_attempts=1)
    victim = start_worker(env, "--worker-id", "victim", "--lease-seconds", "1")
    try:
        wait_until(pidfile.exists, what="the run to start its process")
        left = int(pidfile.read_text())
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        assert alive(left)  # the handler died with its worker (PDEATHSIG); what it started did not
        recovered: list[dict] = []

        def rescue() -> bool:
            done = run_script("worker", "--once", "--json", "--worker-id", "rescuer", env=env)
            assert done.returncode in (0, 75), done.stderr
            recovered.extend(json.loads(done.stdout.splitlines()[-1])["recovered"])
            return state(orch, job) == "failed"

        wait_until(rescue, what="the stale run to be recovered")
        wait_until(lambda: not alive(left), timeout=5, what="the left process to be killed")
    finally:
        stop(victim)
        if pidfile.exists() and alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert [e["type"] for e in records(orch, job)][-1] == "stale_recovered"
    # the kill is said with the recovery (worker --json's "recovered"), naming the process, not only logged
    assert [r["job_id"] for r in recovered] == [job]
    assert [w["code"] for w in recovered[0]["warnings"]] == ["RUN_PROCESSES_KILLED"]
    assert f"(pid {left})" in recovered[0]["warnings"][0]["message"]


@pytest.fixture(params=BACKENDS)
def store_env(request: pytest.FixtureRequest, env: dict[str, str]):
    """``env`` on files, then on PostgreSQL (a project of its own, its rows deleted afterwards)."""
    if request.param == "file":
        yield env
        return
    url, project = require_pg(), unique_project("ck")
    yield {**env, "ORCH_STORE_URL": url, "PROJECT_ID": project}
    drop_project(url, project)


LEAVE_TWO = 'sleep 301 & a=$!; sleep 302 & echo "$a $!" > "$0.tmp"; mv "$0.tmp" "$0"; wait'


def test_a_job_cancelled_after_its_worker_was_sigkilled_has_what_its_command_left_killed_by_the_next_worker(
        store_env, tmp_path: Path) -> None:
    """The race hunt's ``cancelkill``: until 2026-12-07 (twenty-eighth session) both sleeps ran on for good."""
    pidfile = tmp_path / "left.pids"
    submitted = run_script("submit", "--kind", "command", "--input",
                           json.dumps({"argv": ["sh", "-c", LEAVE_TWO, str(pidfile)]}), env=store_env, check=True)
    job = submitted.stdout.strip()
    victim = start_worker(store_env, "--worker-id", "victim", "--lease-seconds", "1")
    left: list[int] = []
    try:
        wait_until(pidfile.exists, what="the run to start its processes")
        left = [int(pid) for pid in pidfile.read_text().split()]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        run_script("control", "cancel", job, "--reason", "not needed", env=store_env, check=True)
        said: list[str] = []

        def rescue() -> bool:
            done = run_script("worker", "--once", "--worker-id", "rescuer", "--lease-seconds", "1", env=store_env)
            assert done.returncode == 75, done.stderr  # nothing to run, nothing recovered
            said.append(done.stderr)
            return not any(alive(pid) for pid in left)

        wait_until(rescue, what="the cancelled run's processes to be killed")
    finally:
        stop(victim)
        for pid in left:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert "RUN_PROCESSES_KILLED: killed 2 process(es) left running by run" in said[-1], said
    status = json.loads(run_script("status", job, "--json", env=store_env, check=True).stdout)
    assert status["state"] == "cancelled"


def records(orch, job_id: str) -> list[dict]:
    return [json.loads(line.raw) for line in orch.store.read(job_id)]


@pytest.mark.parametrize("wakeup", ["polling", "inotify", "pol"])
def test_an_orch_wakeup_that_is_neither_auto_nor_poll_is_a_config_error_and_runs_nothing(
        env: dict[str, str], orch, wakeup: str) -> None:
    """A typo must not leave the worker on inotify when the operator asked it to poll: exit 3, as any bad setting."""
    job = orch.submit("t.echo", 1)
    proc = run_script("worker", "--once", "--json", env={**env, "ORCH_WAKEUP": wakeup})
    assert proc.returncode == 3, proc.stderr
    error = json.loads(proc.stdout)
    assert error["error"] == "CONFIG_ERROR" and "ORCH_WAKEUP" in error["message"] and wakeup in error["message"]
    assert state(orch, job) == "queued" and orch.status(job).attempt == 0


@pytest.mark.parametrize("wakeup", ["", "auto", "poll", "POLL"])
def test_orch_wakeup_auto_poll_or_unset_runs_the_job(env: dict[str, str], orch, wakeup: str) -> None:
    job = orch.submit("t.echo", 1)
    proc = run_script("worker", "--once", "--json", env={**env, "ORCH_WAKEUP": wakeup})
    assert proc.returncode == 0, proc.stderr
    assert state(orch, job) == "succeeded"
