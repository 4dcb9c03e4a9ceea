"""Crash-point sweep: a forked process runs a workload and is SIGKILLed at one named point.

Every named point of ``orchestrator.faults`` that the workload passes (calibrated by a clean
run that counts passes) is armed at a pass chosen by the seed (``sampled``), or, in ``every-pass``
mode, at each of its passes in turn (a fault that only one pass of a point exposes is then never left
to chance: a ready entry dropped before its event showed at 2 of a point's 27 passes). The passes are
the workload's, not the host's timing: its one run longer than a heartbeat ends once its lease was
renewed ``LEASE_BEATS`` times, and only those renewals are passes of ``lease.after_write``. After the
crash a fresh orchestrator recovers (stale recovery with a clock one day ahead, control actions for jobs
waiting on people, audit healing, index rebuild) and the campaign checks (``checked``):

* every acknowledged append (one that returned) is still there, byte for byte;
* at most one stream holds complete lines nobody acknowledged, and at most one torn tail;
* every history verifies and every audited event has its entry (nothing left to heal);
* every job reaches a final state ("no job lost"), none reaches one twice, no run records
  two outcomes.

``crash_cli.py`` sweeps the command line the same way, ``double_crash.py`` crashes the recovery too.
"""
from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from orchestrator import audit as audit_log
from orchestrator import faults
from orchestrator.api import HEADS_AREA, Orchestrator
from orchestrator.integrity import verify_project
from orchestrator.reliability import handlers  # noqa: F401 - registers rel.* handlers
from orchestrator.reliability.common import (FINAL_STATES, ChildResult, Project, acked_lost, finished_twice,
                                             new_project, progress, read_acks, record_acks, run_forked, streams)
from orchestrator.reliability.counting import count_into, counts_in
from orchestrator.worker import Worker, WorkerSettings

SAMPLED, EVERY_PASS = "sampled", "every-pass"
MODES = (SAMPLED, EVERY_PASS)  # where a sweep kills, as ``--crash`` spells it and the figures name it
DAY = 86_400.0
LEASE_BEATS = 2  # the lease renewals the workload's long run waits for: the sweep's passes of lease.after_write
RELEASED = "released"  # beside the base folder: the campaigns' ``rel.wait`` runs end once it is there


def released_file(orch: Orchestrator) -> Path:
    """The file whose making ends the project's waiting runs (``rel.wait`` given it as ``release``)."""
    return orch.settings.base_path.parent / RELEASED


def drain(worker: Worker) -> None:
    """Run jobs until none is runnable (50 runs at most)."""
    for _ in range(50):
        if worker.run_once() is None:
            return


def _decide(orch: Orchestrator, job_ids: list[str]) -> None:
    for job_id in job_ids:
        st = orch.status(job_id).state
        if st == "awaiting_audit":
            orch.approve(job_id, "looks right")
        elif st == "waiting_human":
            orch.resume(job_id, "yes")


@contextmanager
def _released_after_beats(release: Path) -> Iterator[None]:
    """Make ``release`` once the lease was renewed ``LEASE_BEATS`` times, and pass no later renewal to the crash
    point: a loaded host may fit one more before the run's end is seen, and a calibration that counted it would
    promise a kill that the next run never reaches (or the other way round, with a run of a fixed length)."""
    real, beats = faults.point, 0

    def point(name: str, prepare: Any = None) -> None:
        nonlocal beats
        if name != "lease.after_write":
            return real(name, prepare)
        beats += 1
        if beats <= LEASE_BEATS:
            real(name, prepare)
        if beats == LEASE_BEATS:
            release.touch()

    faults.point = point  # type: ignore[assignment]
    try:
        yield
    finally:
        faults.point = real  # type: ignore[assignment]


def workload(orch: Orchestrator) -> None:
    """Submit, run, ask, audit, approve, resume, renew a lease, cancel, repair a torn tail, heal, rebuild the index."""
    worker = Worker(orch, WorkerSettings(worker_id="crashy", lease_seconds=30, retry_base_seconds=0))
    jobs = [orch.submit("rel.echo", {"i": 1}), orch.submit("rel.echo", {"i": 2}, audit=True),
            orch.submit("rel.ask", {}), orch.submit("rel.echo", {"i": 3}, key="same-key")]
    orch.submit("rel.echo", {"i": 3}, key="same-key")  # the idempotent repeat writes nothing
    with open(orch.store.path(jobs[0]), "ab") as fh:  # an earlier crash left a torn tail: the next append repairs it
        fh.write(b'{"seq":2,"torn')
    drain(worker)
    _decide(orch, jobs)
    # a run longer than a heartbeat: its worker renews the lease (a lease record, dropped with the outcome), and the
    # run lasts until it did LEASE_BEATS times, however late a loaded host makes the heartbeats
    release = released_file(orch)
    orch.submit("rel.wait", {"release": str(release)})
    with _released_after_beats(release):
        drain(Worker(orch, WorkerSettings(worker_id="crashy-beat", lease_seconds=0.3, retry_base_seconds=0)))
    late = orch.submit("rel.echo", {"late": True})
    orch.cancel(late, "not needed")
    gone = orch.submit("rel.echo", {"gone": True})  # a cancel whose audit entry was never written: heal writes it
    orch.append(orch.load(gone), gone, [("job_cancelled", {"reason": "entry lost"})])
    shutil.rmtree(orch.settings.state_dir / audit_log.MARKERS_AREA, ignore_errors=True)  # lost markers: heal reads the log
    audit_log.heal(orch, [orch.load(j) for j in jobs + [late, gone]])
    shutil.rmtree(orch.settings.state_dir / "index", ignore_errors=True)  # a deleted cache is rebuilt
    orch.queue = None  # type: ignore[assignment]
    worker = Worker(orch, WorkerSettings(worker_id="crashy-2", lease_seconds=30, retry_base_seconds=0))
    drain(worker)
    _decide(orch, jobs)
    drain(worker)


def counted(run: Callable[[], None], counts_file: Path) -> Counter[str]:
    """Run ``run`` in a forked child and count how often it passes each crash point (it must not fail)."""
    counts_file.unlink(missing_ok=True)  # count_into appends

    def body() -> int:
        count_into(str(counts_file))
        run()
        return 0

    result = run_forked(body)
    if result.exit_code != 0:
        raise RuntimeError(f"the clean run failed: {result.stderr}")
    return counts_in(counts_file)


def calibrate(root: Path) -> Counter[str]:
    """Run the workload once without crashing and count how often each crash point is passed."""
    project = new_project(root, "calibrate")
    return counted(lambda: workload(project.orch()), root / "calibrate" / "counts.json")


def pick_pass(key: str, count: int, seed: int) -> int:
    """The pass (1 to ``count``) at which ``seed`` kills the point ``key`` names: the same for the same three."""
    return 1 + random.Random(f"{key}/{seed}").randrange(count)


def kill_passes(key: str, count: int, mode: str, seeds: list[int]) -> dict[str, int]:
    """The passes a sweep kills at, by run name: each of them (``every-pass``), or one per seed (``sampled``)."""
    if mode == EVERY_PASS:
        return {f"pass-{nth}": nth for nth in range(1, count + 1)}
    if mode == SAMPLED:
        return {f"seed-{s}": pick_pass(key, count, s) for s in seeds}
    raise ValueError(f"a sweep's mode is one of {', '.join(MODES)}, not {mode!r}")


def _unacked(orch: Orchestrator, acks: dict[str, tuple[int, str]]) -> tuple[int, int]:
    """(streams holding complete lines beyond their last acknowledged one, files with a torn tail)."""
    extra = torn = 0
    for stream in streams(orch):
        if len(orch.store.read(stream)) > acks.get(stream, (0, ""))[0]:
            extra += 1
        path = orch.store.path(stream)
        if path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            torn += 1
    return extra, torn


def recover(orch: Orchestrator) -> None:
    """What the next commands do after a crash: workers (leases long expired), people, healing. The runs waiting for
    their release (the lease renewals the crash cut short) are let go: they are no more than any other run."""
    released_file(orch).touch()
    worker = Worker(orch, WorkerSettings(worker_id="rescuer", lease_seconds=30, retry_base_seconds=0))
    for _ in range(6):
        drain(worker)
        job_ids = sorted(orch.store.job_ids())
        _decide(orch, job_ids)
        if all(orch.status(j).state in FINAL_STATES for j in job_ids):
            break
    audit_log.heal(orch, [orch.load(j) for j in orch.store.job_ids()])


def child_error(child: ChildResult) -> str:
    """What a crashed child said when it failed by itself (neither killed nor done)."""
    return "" if child.killed or child.exit_code == 0 else child.stderr[-2000:]


def checked(project: Project, *, killed: bool, error: str, later: float = DAY, crashes: int = 1,
            streams_per_crash: int = 1, before_recovery: Callable[[Orchestrator], dict[str, Any]] | None = None
            ) -> dict[str, Any]:
    """Recover the project the crashes left as the next commands would, with the clock ``later`` ahead (past every
    lease), and measure every invariant (``ok`` when all hold, ``killed`` and no ``error`` included). Each crash may
    leave one torn tail and ``streams_per_crash`` streams with lines nobody acknowledged (a command, acknowledged
    only by its exit, killed after its event: the job's and the audit log's). ``before_recovery`` measures what an
    operator does first (a command run again), its figures added."""
    orch = project.orch(clock=lambda: time.time() + later)
    acks = read_acks(project.acks_file)
    extra, torn = _unacked(orch, acks)
    lost_before = acked_lost(orch, acks)
    out = {"crashed": killed, "child_error": error, **(before_recovery(orch) if before_recovery else {})}
    try:
        recover(orch)
        recovery_error = ""
    except Exception as exc:  # noqa: BLE001 - a recovery that fails is a failed run, reported
        recovery_error = f"{type(exc).__name__}: {exc}"
    report = verify_project(orch)
    job_ids = sorted(orch.store.job_ids())
    out.update({
        "acked_lost": max(lost_before, acked_lost(orch, acks)),
        "recovery_error": recovery_error, "unacked_streams": extra, "torn_tails": torn,
        "verify_problems": len(report.problems), "audit_missing": len(report.warnings),
        "jobs": len(job_ids),
        "jobs_lost": sum(orch.status(j).state not in FINAL_STATES for j in job_ids),
        "finished_twice": sum(finished_twice(orch, j) for j in job_ids),
        "heads_missing": sum(orch.store.get_aux(HEADS_AREA, j) is None for j in job_ids),
    })
    out["ok"] = (killed and not error and not recovery_error and out["acked_lost"] == 0
                 and extra <= crashes * streams_per_crash and torn <= crashes
                 and not out["verify_problems"] and not out["audit_missing"] and not out["jobs_lost"]
                 and not out["finished_twice"])
    return out


def crashed_workload(project: Project, point: str, nth: int) -> ChildResult:
    """The workload run in a forked child armed to die at ``point``'s ``nth`` pass, its acknowledgements noted."""

    def body() -> int:
        faults.arm(point, nth=nth)
        orch = project.orch()
        record_acks(orch, project.acks_file)
        workload(orch)
        return 0

    return run_forked(body)


def one_crash(root: Path, point: str, nth: int, name: str) -> dict[str, Any]:
    """Crash the workload at ``point``'s ``nth`` pass, recover, check."""
    project = new_project(root, name)
    child = crashed_workload(project, point, nth)
    return {"point": point, "nth": nth, **checked(project, killed=child.killed, error=child_error(child))}


def sweep(root: Path, mode: str = SAMPLED, seeds: int = 1, first_seed: int = 0,
          points: list[str] | None = None) -> dict[str, Any]:
    """Crash at every reachable point (or those of ``points``), at each of its passes (``every-pass``: the report's
    long run, 263 kills in 2 to 4 min on 2026-12-07) or once per seed of ``first_seed``... at a pass the seed picks
    (``sampled``: the test suite's 1 seed is 21 kills)."""
    counts = calibrate(root)
    names = sorted(p for p in counts if points is None or p in points)
    seed_list = list(range(first_seed, first_seed + seeds))
    runs = []
    for point in names:
        passes = kill_passes(point, counts[point], mode, seed_list)
        point_runs = [one_crash(root, point, nth, f"{point}-{name}") for name, nth in passes.items()]
        progress(f"crash {point}: {len(passes)} kills ({mode}), {sum(not r['ok'] for r in point_runs)} failed")
        runs += point_runs
    return summary(runs, sweep_figures(mode, seed_list, {p: counts[p] for p in names}))


def sweep_figures(mode: str, seeds: list[int], passes: dict[str, Any]) -> dict[str, Any]:
    """What a sweep says of how it chose its kills: its mode, the seeds that picked them (``sampled`` only), the
    passes counted, by point (``sweep``) or by command and point (``crash_cli.sweep``), and how many points that is."""
    points = sum(len(v) if isinstance(v, dict) else 1 for v in passes.values())
    return {"mode": mode, **({"seeds": seeds} if mode == SAMPLED else {}), "points": points, "passes": passes}


def summary(runs: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        **extra, "runs": len(runs),
        "crashed": sum(r["crashed"] for r in runs),
        "acked_lost": sum(r["acked_lost"] for r in runs),
        "jobs_lost": sum(r["jobs_lost"] for r in runs),
        "finished_twice": sum(r["finished_twice"] for r in runs),
        "verify_problems": sum(r["verify_problems"] for r in runs),
        "failed_runs": [r for r in runs if not r["ok"]],
    }
