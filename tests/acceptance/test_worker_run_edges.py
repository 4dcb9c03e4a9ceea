"""Real worker processes at a run's edges: handler modules that exit on import, processes a run leaves
behind, a worker SIGKILLed while its command's children run.

Decisions are never waited for with a fixed sleep: each test polls with a timeout.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, WAIT, run_script, wait_until


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


def start_worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "worker.py"), *args], env=env, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = WAIT) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker did not exit: {out}\n{err}") from None
    return proc.returncode, out, err


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill (if still running) and reap, closing the pipes (``finish`` may have done it already)."""
    if proc.poll() is None:
        proc.kill()
    if proc.stdout is not None and not proc.stdout.closed:
        proc.communicate()


def state(orch, job_id: str) -> str | None:
    return orch.status(job_id).state


def alive(pid: int) -> bool:
    """True for a live process (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
        wait_until(lambda: run_script("worker", "--once", "--worker-id", "rescuer", env=env).returncode in (0, 75)
                   and state(orch, job) == "failed", what="the stale run to be recovered")
        wait_until(lambda: not alive(left), timeout=5, what="the left process to be killed")
    finally:
        stop(victim)
        if pidfile.exists() and alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert [e["type"] for e in records(orch, job)][-1] == "stale_recovered"


def records(orch, job_id: str) -> list[dict]:
    return [json.loads(line.raw) for line in orch.store.read(job_id)]
