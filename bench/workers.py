"""Throughput with several worker processes on one queue: W1's jobs drained by 1, 2, ... workers at once.

    python -m bench.workers                              # 2,000 no-op jobs; 1, 2 and 4 workers; 3 runs each
    python -m bench.workers --workers 1,2 --jobs 500 --repeat 5 --json workers.json

W1 measures one worker; a user who needs more runs more workers on the same project, and they share the file queue:
each claim takes the job's file lock and appends with the sequence it read, so two workers that pick the same job
settle it by the append (one claim is written, the other worker moves on). For each count of workers, ``--jobs``
no-op jobs are submitted to a new project, then that many real worker processes (``orchestrator.latency.WorkerProcess``,
each with its handler process, ``--idle-exit``) are started and, once every one is ready, let go together. Jobs/s is
the jobs over the time from that moment to the last worker's end (CLOCK_MONOTONIC, one clock for every process).
Each run checks what concurrency could break: every job succeeded, and each was run exactly once (the outcomes the
workers reported, by job, and each job's claims in its history); ``share`` is how the jobs split between the workers.
Medians of ``--repeat`` runs; the ratio is to one worker's median. On a host with fewer CPUs than two per worker
(each worker has a handler process) more workers mostly share the CPUs: the ratio says how much of them the queue's
locks leave usable (docs/performance.md, "Several workers").
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import code_revision  # noqa: E402
from bench.cli_args import add_scratch_and_json, positive_int, results_file, scratch_folder, sizes  # noqa: E402


def one_run(workers: int, jobs: int, base: Path) -> dict[str, Any]:
    """``jobs`` no-op jobs in a new project under ``base``, drained by ``workers`` worker processes let go together."""
    from bench.ours import project_env, project_orchestrator
    from orchestrator import latency as lat

    env = project_env(base)
    orch = project_orchestrator(base, env)
    for i in range(jobs):
        orch.submit(lat.NOOP_KIND, {"i": i})
    gate = base / "go"
    procs = [lat.WorkerProcess(str(base), "bench", env, idle_exit=True, worker_id=f"bench-worker-{n + 1}",
                               gate=str(gate)) for n in range(workers)]
    try:
        for proc in procs:
            proc.start()  # returns once the worker is ready; it waits for the gate
        before = cpu_times()
        gate.touch()
        summaries = [proc.stop(timeout=600) for proc in procs]
        after = cpu_times()
    except BaseException:
        for proc in procs:  # a worker left waiting at the gate, or running, by the error: ended (killed after 5 s)
            proc.stop(timeout=5)
        raise
    if not all(s.get("summary") for s in summaries):
        raise RuntimeError("a worker ended without its summary")
    elapsed_s = (max(s["ended_ns"] for s in summaries) - min(s["started_ns"] for s in summaries)) / 1e9
    done = [s["done"] for s in summaries]
    wrong = problems(jobs, sum(done), [job_id for proc in procs for job_id, times in proc.durable.items() for _ in times],
                     [(s.job_id, s.state, s.attempt) for s in map(orch.status, orch.job_ids())])
    if wrong:
        raise RuntimeError(f"{workers} workers: " + "; ".join(wrong))
    races: collections.Counter[str] = collections.Counter()  # ``Claimer.races`` of every worker, summed
    for summary in summaries:
        races.update(summary["races"])
    busy = None
    if before is not None and after is not None and after[1] > before[1]:
        busy = (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)
    return {"workers": workers, "jobs_per_s": jobs / elapsed_s, "elapsed_s": elapsed_s, "share": sorted(done),
            "races": dict(races), "cpus_busy": busy}


def cpu_times() -> tuple[int, int] | None:
    """The machine's busy and total CPU time so far (``/proc/stat``, in ticks), or None where there is none: how
    many of its CPUs the workers kept busy (the submits are over by then; anything else running counts too)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def problems(jobs: int, done: int, outcomes: list[str], statuses: list[tuple[str, str, int]]) -> list[str]:
    """What went wrong in a run of ``jobs`` jobs, if anything: ``done``, the jobs the workers said they ran;
    ``outcomes``, the job of each outcome they reported; ``statuses``, each job's (id, state, attempt) read after."""
    wrong = []
    runs = collections.Counter(outcomes)
    twice = sorted(job_id for job_id, n in runs.items() if n > 1)
    if twice:
        wrong.append(f"{len(twice)} job(s) run more than once: {', '.join(twice[:5])}")
    if done != jobs or len(runs) != jobs:
        wrong.append(f"{done} runs reported, of {len(runs)} distinct jobs, for {jobs} jobs")
    states = collections.Counter(state for _, state, _ in statuses)
    if states != {"succeeded": jobs}:
        wrong.append(f"job states {dict(states)}, not {jobs} succeeded")
    again = [job_id for job_id, _, attempt in statuses if attempt != 1]  # each claim written is an attempt
    if again:
        wrong.append(f"{len(again)} job(s) claimed more than once: {', '.join(again[:5])}")
    return wrong


def measure(counts: tuple[int, ...], jobs: int, repeat: int, base_path: str | None = None) -> dict[str, Any]:
    """For each count of workers, ``repeat`` runs, alternated (1, 2, 4, 1, 2, 4, ...), and their medians."""
    from orchestrator.latency import machine

    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for i in range(repeat):
        for n in counts:
            base = Path(tempfile.mkdtemp(prefix="workers-", dir=base_path))
            try:
                runs[n].append(one_run(n, jobs, base))
            finally:
                shutil.rmtree(base, ignore_errors=True)
            r = runs[n][-1]
            print(f"run {i + 1}/{repeat}, {n} worker(s): {r['jobs_per_s']:,.0f} jobs/s, jobs per worker {r['share']}, "
                  f"jobs found taken {r['races']['taken']}, claims lost {r['races']['lost']}, CPUs busy "
                  f"{_cpus(r['cpus_busy'])}", file=sys.stderr, flush=True)
    medians = {n: statistics.median(r["jobs_per_s"] for r in rs) for n, rs in runs.items()}
    one = medians.get(1)
    return {"jobs": jobs, "repeat": repeat, "cpus": os.cpu_count(), "machine": machine(),
            "runs": {str(n): rs for n, rs in runs.items()},
            "median_jobs_per_s": {str(n): m for n, m in medians.items()},
            "ratio_to_one": {str(n): m / one for n, m in medians.items()} if one else None}


def _cpus(busy: float | None) -> str:
    return "?" if busy is None else f"{busy:.2f}"


def table(result: dict[str, Any]) -> str:
    """One row per count of workers: medians of its runs, and how the last run's jobs split between the workers."""
    lines = ["| workers | jobs/s | x one worker | CPUs busy | jobs found taken / claims lost, a job | jobs per worker "
             "(last run) |", "|---:|---:|---:|---:|---|---|"]
    ratios = result["ratio_to_one"] or {}
    jobs = result["jobs"]
    for n, median in result["median_jobs_per_s"].items():
        runs = result["runs"][n]
        ratio = f"{ratios[n]:.2f}x" if n in ratios else "-"
        busy = [r["cpus_busy"] for r in runs if r["cpus_busy"] is not None]
        taken, lost = (statistics.median(r["races"][key] for r in runs) / jobs for key in ("taken", "lost"))
        lines.append(f"| {n} | {median:,.0f} | {ratio} | {_cpus(statistics.median(busy) if busy else None)} | "
                     f"{taken:.2f} / {lost:.2f} | {runs[-1]['share']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=lambda text: sizes(text, "1,2,4"), default=(1, 2, 4),
                    help="the counts of workers to measure, a comma list (default 1,2,4)")
    ap.add_argument("--jobs", type=positive_int, default=2000, help="no-op jobs per run (default 2000)")
    ap.add_argument("--repeat", type=positive_int, default=3, help="runs of each count, alternated (default 3)")
    add_scratch_and_json(ap)
    args = ap.parse_args(argv)
    scratch_folder(ap, args)
    with results_file(ap, args.json, "the figures") as json_file:
        started = time.time()
        result = measure(tuple(dict.fromkeys(args.workers)), args.jobs, args.repeat, args.base_path)
        result["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        result["code"] = code_revision()
        print(f"{args.jobs} no-op jobs drained by several worker processes at once, {result['cpus']} CPUs, medians "
              f"of {args.repeat} run(s); every job ran exactly once:")
        print(table(result))
        if json_file is not None:
            json_file.write((json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
