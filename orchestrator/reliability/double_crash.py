"""Crash, then crash the recovery: pairs of a point the workload passes and a point its recovery then passes.

For each point of the workload (with ``pairs``: each point the seed deals a share of the sample to), at a pass the
seed picks as a sampled sweep does, a forked process runs the workload and is SIGKILLed there, and the folder it left
is kept aside. A forked recovery of that folder counts the points the recovery passes from there (the same files and a
clock a day ahead: the same passes each time). Then for each of those points, or for the point's share of ``pairs``
(fewer when the recovery passes fewer points), the folder is put back where it was (the jobs name files by
their path), a recovery is killed at a pass the seed picks, and a third process recovers with its clock past every
lease: each pair is checked as one crash is (``crash.checked``), each crash allowed its own unacknowledged append.
The same seed on the same code kills the same pairs (``pairs_killed``). Until 2026-12-07 the recovery was armed at a
random point and pass (1 to 4) that most recoveries never reached: 9 of 30 were killed, the others counted as pairs.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from orchestrator import faults
from orchestrator.reliability import crash
from orchestrator.reliability.common import (ChildResult, Project, keep_aside, new_project, progress, put_back,
                                             record_acks, run_forked)


def _plan(points: list[str], pairs: int | None, seed: int) -> dict[str, int | None]:
    """How many recovery points to kill at after a crash at each first point: all of them (None), or the share of a
    sample of ``pairs`` that the seed deals over the points, in an order it shuffles."""
    if pairs is None:
        return {p: None for p in points}
    order = random.Random(seed).sample(points, len(points))
    return dict(Counter(order[i % len(order)] for i in range(pairs)))


def _crashed_recovery(project: Project, point: str, nth: int) -> ChildResult:
    """The first recovery, in a forked child armed to die at ``point``'s ``nth`` pass, its acknowledgements noted."""

    def body() -> int:
        faults.arm(point, nth=nth)
        orch = project.orch(clock=lambda: time.time() + crash.DAY)
        record_acks(orch, project.acks_file)
        crash.recover(orch)
        return 0

    return run_forked(body)


def _pairs_after(root: Path, point: str, nth: int, share: int | None, seed: int) -> list[dict[str, Any]]:
    """Crash the workload at ``point``'s ``nth`` pass, then each pair of it and a point its recovery passes."""
    project = new_project(root, f"double-{point}")
    folder, kept = project.base.parent, root / f"double-{point}.crashed"
    first = crash.crashed_workload(project, point, nth)
    keep_aside(folder, kept)
    counts = crash.counted(lambda: crash.recover(project.orch(clock=lambda: time.time() + crash.DAY)),
                           root / f"double-{point}.counts.json")
    then = sorted(counts)
    if share is not None:
        then = random.Random(f"{point}/{seed}").sample(then, min(share, len(then)))
    runs = []
    for second in then:
        second_nth = crash.pick_pass(f"{point}/{second}", counts[second], seed)
        put_back(kept, folder)
        recovery = _crashed_recovery(project, second, second_nth)
        run = crash.checked(project, killed=first.killed, error=crash.child_error(first) or crash.child_error(recovery),
                            later=2 * crash.DAY, crashes=2)  # past the leases of the crashed recovery too
        run.update(point=point, nth=nth, then=second, then_nth=second_nth, recovery_crashed=recovery.killed,
                   ok=run["ok"] and recovery.killed)
        runs.append(run)
    return runs


def sweep(root: Path, pairs: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Every pair of a workload point and a point its recovery passes (``pairs`` None: the report's long run), or a
    sample of ``pairs`` the seed draws (CI: 8); the passes of both picked by the seed."""
    counts = crash.calibrate(root)
    runs = []
    for point, share in sorted(_plan(sorted(counts), pairs, seed).items()):
        runs += _pairs_after(root, point, crash.pick_pass(point, counts[point], seed), share, seed)
    progress(f"double crashes: {len(runs)} pairs, {sum(not r['ok'] for r in runs)} failed")
    return crash.summary(runs, {
        "pairs": "all" if pairs is None else pairs, "seed": seed, "first_points": len({r["point"] for r in runs}),
        "recoveries_killed": sum(r["recovery_crashed"] for r in runs),
        "pairs_killed": [[r["point"], r["nth"], r["then"], r["then_nth"]] for r in runs]})
