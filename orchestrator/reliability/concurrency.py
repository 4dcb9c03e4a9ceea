"""Concurrency and zombies: killed workers, a stopped-then-continued worker, and clock jumps.

* ``storm``: N real worker processes on M jobs (each forked by a process that imported the command line once,
  ``command_forks.py``); every ``kill_every`` seconds one of them is SIGKILLed (mid-job or not) and restarted.
  Lost = jobs not final at the end; duplicated = a job reaching a final state twice or a run recording two
  outcomes. Re-runs (a job claimed again after its worker died) are expected: execution is at least once.
* ``zombie``: a worker is SIGSTOPped past its lease, another takes the job over and finishes
  it, then the first is continued: any event it writes after that is a late write accepted, and ``verify``
  must still pass on the project.
* ``clock_jumps``: in one process, several workers with one injected clock that jumps
  forwards and backwards by up to two hours between random claims, runs and recoveries.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.api import Orchestrator
from orchestrator.integrity import verify_project
from orchestrator.outcome import Claim
from orchestrator.reliability import handlers  # noqa: F401 - registers rel.* handlers
from orchestrator.reliability.command_forks import CommandForks
from orchestrator.reliability.common import (FINAL_STATES, OUTCOME_TYPES, Project, finished_twice, new_project,
                                             progress)
from orchestrator.worker import Worker, WorkerSettings


def late_writes(orch: Orchestrator, job_id: str) -> int:
    """Outcome events written by a run that was no longer the job's current run (a zombie's)."""
    current, late = None, 0
    for rec in orch.load(job_id).stream.records:
        if rec["type"] == "job_claimed":
            current = rec.get("run_id")
        elif rec["type"] in OUTCOME_TYPES and rec.get("run_id") != current:
            late += 1
    return late


DEVNULL = Path(os.devnull)  # where a storm's workers print


def _worker_env(project: Project, lease: float) -> dict[str, str]:
    return project.command_env(ORCH_LEASE_SECONDS=str(lease), ORCH_RETRY_BASE_SECONDS="0.05",
                               ORCH_RETRY_MAX_SECONDS="0.2")


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "worker", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _outcome(orch: Orchestrator, job_ids: list[str]) -> dict[str, Any]:
    states = [orch.status(j).state for j in job_ids]
    claims = sum(sum(1 for s in orch.store.read(j) if b'"type":"job_claimed"' in s.raw) for j in job_ids)
    return {"jobs": len(job_ids), "lost": sum(s not in FINAL_STATES for s in states),
            "failed": states.count("failed"),
            "finished_twice": sum(finished_twice(orch, j) for j in job_ids),
            "late_writes_accepted": sum(late_writes(orch, j) for j in job_ids),
            "reruns": claims - len(job_ids), "verify_ok": verify_project(orch).ok}


def storm(root: Path, workers: int = 4, jobs: int = 150, kill_every: float = 1.0, lease: float = 1.0,
          timeout: float = 120.0, seed: int = 1, job_seconds: float = 0.01) -> dict[str, Any]:
    """``workers`` looping ``orchestrator worker`` processes on ``jobs`` jobs; every ``kill_every`` seconds one of them,
    picked by ``seed``, is SIGKILLed and another started in its place. Each is forked by a server of its own that
    imported the command line once (``command_forks.py``, as the command-line sweep's commands): a worker started
    by ``python -m orchestrator`` spent its first ~0.2 s of CPU importing, and at a load of 12 on 2 cores a kill every
    0.5 s then came before most workers had claimed anything (the quick run of 2026-12-07, 14:15: 1,200 kills in
    600 s, 80 of 150 jobs never run)."""
    project = new_project(root, f"storm-{workers}x{jobs}")
    orch = project.orch()
    job_ids = [orch.submit("rel.echo", {"i": i, "sleep": job_seconds}, max_attempts=1000) for i in range(jobs)]
    env = _worker_env(project, lease)
    rng = random.Random(seed)
    kills = 0
    with contextlib.ExitStack() as servers_open:
        servers = [servers_open.enter_context(CommandForks(env, wait=False)) for _ in range(workers)]
        for server in servers:
            server.ready()
        pids = [server.start(["worker", "--worker-id", f"w{i}"], env, DEVNULL) for i, server in enumerate(servers)]
        start = time.monotonic()
        next_kill = start + kill_every
        try:
            while time.monotonic() - start < timeout:
                time.sleep(0.1)
                if time.monotonic() >= next_kill:
                    i = rng.randrange(workers)
                    _kill(servers[i], pids[i])
                    kills += 1
                    pids[i] = servers[i].start(["worker", "--worker-id", f"w{i}-{kills}"], env, DEVNULL)
                    next_kill += kill_every
                if int((time.monotonic() - start) * 10) % 10 == 0:
                    done = sum(orch.status(j).state in FINAL_STATES for j in job_ids)
                    if done == jobs:
                        break
        finally:
            for server, pid in zip(servers, pids):
                _kill(server, pid)
    out = {"workers": workers, "kills": kills, "seconds": round(time.monotonic() - start, 1), **_outcome(orch, job_ids)}
    progress(f"storm {workers} workers x {jobs} jobs: {kills} kills, lost {out['lost']}, "
             f"twice {out['finished_twice']}, re-runs {out['reruns']}")
    return out


def _kill(server: CommandForks, pid: int) -> None:
    """SIGKILL the worker ``server`` forked (nothing if it ended by itself) and wait for its end."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    server.wait(pid, 60.0)


def _wait(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def zombie(root: Path, rounds: int = 1) -> dict[str, Any]:
    """SIGSTOP a worker past its lease, let another take over and finish, SIGCONT it."""
    project = new_project(root, "zombie")
    orch = project.orch()
    env = _worker_env(project, 1.0)
    accepted = completed = 0
    for r in range(rounds):
        started, release = project.base.parent / f"started-{r}", project.base.parent / f"release-{r}"
        job = orch.submit("rel.wait", {"started": str(started), "release": str(release)})
        z = _start(env, "--once", "--worker-id", f"zombie-{r}", "--lease-seconds", "1")
        rescuer = None
        try:
            if not _wait(started.exists):
                continue
            z.send_signal(signal.SIGSTOP)
            started.unlink()
            rescuer = _start(env, "--max-jobs", "1", "--worker-id", f"rescuer-{r}", "--lease-seconds", "5")
            if not _wait(lambda: started.exists() and orch.status(job).worker_id == f"rescuer-{r}"):
                continue
            release.write_text("go")
            rescuer.wait(30)
            before = len(orch.store.read(job))
            z.send_signal(signal.SIGCONT)
            z.wait(30)
            completed += 1
            accepted += len(orch.store.read(job)) - before + late_writes(orch, job)
        finally:
            for p in (z, rescuer):
                if p is not None:
                    if p.poll() is None:
                        os.kill(p.pid, signal.SIGCONT)
                        p.kill()
                    p.wait()
    progress(f"zombie: {completed}/{rounds} rounds, late writes accepted {accepted}")
    return {"rounds": rounds, "completed": completed, "late_writes_accepted": accepted,
            "finished_twice": sum(finished_twice(orch, j) for j in orch.store.job_ids()),
            "verify_ok": verify_project(orch).ok}


def run_late(worker: Worker, claim: Claim) -> None:
    """Run ``claim`` as a worker that was paused with its handler started would finish it: without ``execute``'s read
    of the job first, so that the fence of its outcome's append, not that read, must refuse a run taken over since.
    The worker's own path for a claim it has just made: a public call that skips the read would run the handler of a
    job cancelled or taken over since (``execute``'s read is what stops that), and the tests' way without it (the
    takeover at ``worker.after_start``, ``tests/helpers.taken_over_while_it_runs``) cannot put this campaign's random
    steps between a claim and its run."""
    worker._run_claim(claim, look_ahead=True)  # noqa: SLF001


def clock_jumps(root: Path, steps: int = 200, jobs: int = 12, seed: int = 3) -> dict[str, Any]:
    """Random claims, runs and recoveries by 3 workers while one injected clock jumps around."""
    project = new_project(root, f"clock-{seed}")
    now = [time.time()]
    latest = [now[0]]
    rng = random.Random(seed)
    orchs = [project.orch(clock=lambda: now[0]) for _ in range(3)]
    workers = [Worker(o, WorkerSettings(worker_id=f"c{i}", lease_seconds=5, retry_base_seconds=0.01),
                      rng=random.Random(i)) for i, o in enumerate(orchs)]
    job_ids = [orchs[0].submit("rel.echo", {"i": i}, max_attempts=1000) for i in range(jobs)]
    pending: dict[int, Claim] = {}
    jumps = 0
    for _ in range(steps):
        i = rng.randrange(3)
        op = rng.random()
        if op < 0.2:
            now[0] += rng.choice([-7200, -60, -5, 3, 6, 60, 7200]) * rng.random()
            latest[0] = max(latest[0], now[0])
            jumps += 1
        elif op < 0.5 and i not in pending:
            claim = workers[i].claim(now[0])
            if claim is not None:
                pending[i] = claim
        elif op < 0.8 and i in pending:
            run_late(workers[i], pending.pop(i))
        else:
            workers[i].recover_stale(now[0])
    for i, claim in list(pending.items()):  # zombies finishing late
        run_late(workers[i], claim)
    # liveness once time moves on: a day past the latest time any worker saw, then until idle
    now[0] = latest[0] + 86_400
    for _ in range(jobs * 6):
        if workers[0].run_once(now[0]) is None:
            if all(orchs[0].status(j).state in FINAL_STATES for j in job_ids):
                break
            now[0] += 3600  # a retry backoff or a lease still ahead of the clock
    out = {"steps": steps, "jumps": jumps, **_outcome(orchs[0], job_ids)}
    return out
