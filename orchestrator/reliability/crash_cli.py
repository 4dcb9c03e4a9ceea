"""Crash-point sweep of the command line: an operator's action, and a worker stopping on SIGTERM, killed at each point.

The crash sweep (``crash.py``) drives the Python API in one forked process. Here each command is a real
``python -m orchestrator`` process armed with ``ORCH_CRASH_AT=point:n`` (``orchestrator.faults``): ``control approve``,
``revise``, ``resume`` and ``cancel`` on jobs waiting for them, and a looping ``worker`` sent SIGTERM once its run
started (its graceful stop: the run killed after the grace period and handed back). A clean run of each, counted
(``counting.py``), gives the points it passes and how often; each is killed at every pass (``every-pass``) or at one
the seed picks (``sampled``), on the project the set-up left, put back before each kill. Then an action's command is
run again, as the runbook says to after any failure (exit 0: applied now, or already applied, with what the kill left
out written), and must leave one event of its kind; the crash sweep's recovery and checks follow (``crash.checked``),
with up to two streams holding lines nobody acknowledged (a command is acknowledged only by its exit, and it writes a
job's event and an audit entry).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.api import Orchestrator
from orchestrator.reliability import crash
from orchestrator.reliability.common import (Project, keep_aside, new_project, progress, put_back, record_acks,
                                             run_forked)
from orchestrator.reliability.counting import counts_in
from orchestrator.worker import Worker, WorkerSettings

# each action's command line (``{job}``: the job the set-up made for it) and the event it must leave, once
ACTIONS = {
    "approve": (("control", "approve", "{job}", "looks right"), "job_approved"),
    "revise": (("control", "revise", "{job}", "once more"), "job_revised"),
    "resume": (("control", "resume", "{job}", "yes"), "job_resumed"),
    "cancel": (("control", "cancel", "{job}", "not needed"), "job_cancelled"),
}
STOPPED_WORKER = "worker-sigterm"  # a looping worker sent SIGTERM once its run started
STOPPED_WORKER_ARGS = ("worker", "--worker-id", "stopped", "--stop-grace-seconds", "0.2")
COMMANDS = (*ACTIONS, STOPPED_WORKER)
# the points of the quick run (and the test suite): a torn write, between an event and its audit entry, after the
# entry, the stopped worker's hand-back; 16 kills where every pass of every point is 88 (54 points), 1 to 2 s
# each on 2 shared cores
QUICK_POINTS = ("store.append.mid_write", "append.after_event", "append.after_audit_entry", "worker.before_outcome")
WAIT_SECONDS = 60.0  # a command still running then is killed by the sweep: its run failed (``crashed`` False)


def _started(project: Project) -> Path:
    return project.base.parent / "started"


def _set_up(project: Project) -> dict[str, str]:
    """Two jobs awaiting audit, one waiting for an answer, one queued, and the stopped worker's (claimed first, it
    waits for its release), made by a forked child whose appends are acknowledged; the job of each command."""
    jobs_file = project.base.parent / "jobs.json"

    def body() -> int:
        orch = project.orch()
        record_acks(orch, project.acks_file)
        jobs = {"approve": orch.submit("rel.echo", {"for": "approve"}, audit=True),
                "revise": orch.submit("rel.echo", {"for": "revise"}, audit=True), "resume": orch.submit("rel.ask", {})}
        with Worker(orch, WorkerSettings(worker_id="set-up", retry_base_seconds=0)) as worker:
            crash.drain(worker)
        jobs["cancel"] = orch.submit("rel.echo", {"for": "cancel"})
        jobs[STOPPED_WORKER] = orch.submit("rel.wait", {"started": str(_started(project)),
                                                        "release": str(crash.released_file(orch))}, priority=1)
        jobs_file.write_text(json.dumps(jobs))
        return 0

    result = run_forked(body)
    if result.exit_code != 0:
        raise RuntimeError(f"the command-line sweep's set-up failed: {result.stderr}")
    return json.loads(jobs_file.read_text())


def _argv(command: str, jobs: dict[str, str]) -> list[str]:
    if command == STOPPED_WORKER:
        return list(STOPPED_WORKER_ARGS)
    return [arg.format(job=jobs[command]) for arg in ACTIONS[command][0]]


def _stop_once_started(proc: subprocess.Popen[bytes], started: Path) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while proc.poll() is None and not started.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # nothing if it has ended


def _run(project: Project, argv: list[str], *, crash_at: str = "",
         entry: tuple[str, ...] = ("-m", "orchestrator")) -> tuple[int | None, str]:
    """Run the command to its end (a worker sent SIGTERM once its run started): its exit status (``-9``: SIGKILLed;
    None: still running after ``WAIT_SECONDS``, killed by the sweep) and the end of its stderr."""
    env = project.command_env(**({"ORCH_CRASH_AT": crash_at} if crash_at else {}))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, *entry, *argv], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            if argv[0] == "worker":
                _stop_once_started(proc, _started(project))
            code: int | None = proc.wait(WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        err.seek(0)
        return code, err.read().decode("utf-8", "replace")[-2000:]


def _count(project: Project, kept: Path, command: str, jobs: dict[str, str]) -> dict[str, int]:
    """The points a clean run of ``command`` on the set-up passes, and how often."""
    put_back(kept, project.base.parent)
    counts_file = project.base.parent.parent / f"cli-{command}.counts"
    counts_file.unlink(missing_ok=True)
    code, err = _run(project, _argv(command, jobs), entry=("-m", "orchestrator.reliability.counting", str(counts_file)))
    if code != 0:
        raise RuntimeError(f"the clean run of {command} exited {code}: {err}")
    return dict(counts_in(counts_file))


def _run_again(project: Project, orch: Orchestrator, command: str, jobs: dict[str, str]) -> dict[str, Any]:
    """The operator's next step after an action's command died: the same command, which must exit 0 and leave one
    event of its kind."""
    code, err = _run(project, _argv(command, jobs))
    events = sum(r["type"] == ACTIONS[command][1] for r in orch.load(jobs[command]).stream.records)
    out = {"again_exit": code, "again_events": events, "again_ok": code == 0 and events == 1}
    return out if out["again_ok"] else {**out, "again_error": err}


def _one_kill(project: Project, kept: Path, command: str, jobs: dict[str, str], point: str, nth: int) -> dict[str, Any]:
    put_back(kept, project.base.parent)
    code, err = _run(project, _argv(command, jobs), crash_at=f"{point}:{nth}")
    killed = code == -signal.SIGKILL
    again = (lambda orch: _run_again(project, orch, command, jobs)) if command in ACTIONS else None
    run = crash.checked(project, killed=killed, error="" if killed or code == 0 else f"exit {code}: {err}",
                        streams_per_crash=2, before_recovery=again)
    run.update(command=command, point=point, nth=nth, ok=run["ok"] and run.get("again_ok", True))
    return run


def sweep(root: Path, mode: str = crash.SAMPLED, points: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Kill each of ``COMMANDS`` at each point it passes (or each of ``points`` it passes): at every pass, or once at
    a pass seed 0 picks (one seed: each kill runs a command of ~1 s)."""
    project = new_project(root, "cli")
    kept = root / "cli.set-up"
    jobs = _set_up(project)
    keep_aside(project.base.parent, kept)
    chosen, seed_list = list(COMMANDS), [0]
    passes: dict[str, dict[str, int]] = {}
    runs: list[dict[str, Any]] = []
    for command in chosen:
        passes[command] = {p: n for p, n in _count(project, kept, command, jobs).items() if not points or p in points}
        command_runs = [_one_kill(project, kept, command, jobs, point, nth)
                        for point, count in sorted(passes[command].items())
                        for nth in crash.kill_passes(f"{command}/{point}", count, mode, seed_list).values()]
        progress(f"crash {command} (CLI): {len(command_runs)} kills ({mode}), "
                 f"{sum(not r['ok'] for r in command_runs)} failed")
        runs += command_runs
    again = [r for r in runs if "again_ok" in r]
    return crash.summary(runs, {**crash.sweep_figures(mode, seed_list, passes), "commands": chosen,
                                "again_runs": len(again), "again_ok": sum(r["again_ok"] for r in again)})
