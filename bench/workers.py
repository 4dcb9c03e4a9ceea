"""Throughput with several worker processes on one queue: W1's jobs drained by 1, 2, ... workers at once.

    python -m bench.workers                              # 2,000 no-op jobs; 1, 2 and 4 workers; 3 runs each
    python -m bench.workers --workers 1,2 --jobs 500 --repeat 5 --json workers.json
    python -m bench.workers --workers 1,4 --one-at-a-time 300   # also: latency with that many idle workers

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

``--one-at-a-time N`` also measures what idle workers cost a job's latency: for each count, that many idle worker
processes, and N jobs (after 10 unmeasured) submitted one at a time, a 2 ms pause between them, each timed from its
submit to its terminal state seen by a separate reader, as W2 is; with the CPU the worker processes spent and the
context switches they made (``/proc/<pid>/stat`` and ``status``, their handler processes not counted), a job.
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
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import code_revision  # noqa: E402
from bench.cli_args import (add_scratch_and_json, count, positive_int, results_file,  # noqa: E402
                            scratch_folder, sizes)
from bench.common import summarize  # noqa: E402


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


IDLE_WARMUP = 10  # jobs run before the measured ones of ``one_at_a_time``
IDLE_PAUSE_S = 0.002  # between one job's end and the next submit: the workers are idle again


def one_at_a_time(workers: int, samples: int, base: Path) -> dict[str, Any]:
    """``samples`` echo jobs submitted one at a time to ``workers`` idle worker processes on a new project under
    ``base``: submit -> terminal state visible to a separate reader, and the worker processes' CPU and context
    switches a job."""
    from bench.ours import project_env, project_orchestrator
    from orchestrator import latency as lat

    env = project_env(base)
    orch = project_orchestrator(base, env)
    procs = [lat.WorkerProcess(str(base), "bench", env, kinds=(lat.ECHO_KIND,), worker_id=f"bench-worker-{n + 1}")
             for n in range(workers)]
    try:
        for proc in procs:
            proc.start()
        reader = lat.Reader(orch)
        pids = [proc.proc.pid for proc in procs if proc.proc is not None]
        latencies, before = [], process_costs(pids)
        for i in range(IDLE_WARMUP + samples):
            if i == IDLE_WARMUP:
                before = process_costs(pids)
            submitted = time.monotonic_ns()
            job_id = orch.submit(lat.ECHO_KIND, {"pad": 0, "sample": i})
            st, visible = reader.wait_for(job_id, lat.TERMINAL_STATES)
            if st.state != "succeeded":
                raise RuntimeError(f"{workers} idle workers: job {job_id} ended {st.state}: {st.last_error}")
            if i >= IDLE_WARMUP:
                latencies.append((visible - submitted) / 1e6)
            time.sleep(IDLE_PAUSE_S)
        after = process_costs(pids)
    finally:
        for proc in procs:
            proc.stop(timeout=10)
    out: dict[str, Any] = {"workers": workers, "submit_to_visible_ms": summarize(latencies)}
    if before is not None and after is not None:
        out["cpu_ms_a_job"] = (after[0] - before[0]) * 1000 / samples
        out["switches_a_job"] = (after[1] - before[1]) / samples
    return out


def process_costs(pids: list[int]) -> tuple[float, int] | None:
    """The CPU seconds these processes spent so far and the context switches they made (``/proc``), or None where
    there is no ``/proc``."""
    cpu, switches = 0.0, 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                switches += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
    except (OSError, ValueError, IndexError):
        return None
    return cpu, switches


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


def alternated(counts: tuple[int, ...], repeat: int, base_path: str | None, prefix: str,
               run: Callable[[int, Path], dict[str, Any]],
               told: Callable[[int, dict[str, Any]], str]) -> dict[int, list[dict[str, Any]]]:
    """``repeat`` runs of each count of workers, alternated (1, 2, 4, 1, 2, 4, ...), each ``run(count, folder)`` in a
    new scratch folder removed after it, and each told on stderr as it ends."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    for i in range(repeat):
        for n in counts:
            base = Path(tempfile.mkdtemp(prefix=prefix, dir=base_path))
            try:
                runs[n].append(run(n, base))
            finally:
                shutil.rmtree(base, ignore_errors=True)
            print(f"run {i + 1}/{repeat}, {told(n, runs[n][-1])}", file=sys.stderr, flush=True)
    return runs


def measure_idle(counts: tuple[int, ...], samples: int, repeat: int, base_path: str | None = None) -> dict[str, Any]:
    """``one_at_a_time`` for each count of workers, ``repeat`` runs alternated, and the medians of their figures."""
    runs = alternated(counts, repeat, base_path, "idle-workers-", lambda n, base: one_at_a_time(n, samples, base),
                      lambda n, r: f"{n} idle worker(s): P50 {r['submit_to_visible_ms']['p50']:.2f} ms, P99 "
                                   f"{r['submit_to_visible_ms']['p99']:.2f} ms, workers' CPU "
                                   f"{_per_job(r.get('cpu_ms_a_job'))} ms a job")
    medians = {}
    for n, rs in runs.items():
        row = {q: statistics.median(r["submit_to_visible_ms"][q] for r in rs) for q in ("p50", "p95", "p99")}
        for key in ("cpu_ms_a_job", "switches_a_job"):
            values = [r[key] for r in rs if key in r]
            row[key] = statistics.median(values) if values else None
        medians[str(n)] = row
    return {"samples": samples, "runs": {str(n): rs for n, rs in runs.items()}, "medians": medians}


def _per_job(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def idle_table(result: dict[str, Any]) -> str:
    lines = ["| idle workers | submit -> visible P50 / P95 / P99 (ms) | workers' CPU a job (ms) | their context switches "
             "a job |", "|---:|---|---:|---:|"]
    for n, row in result["medians"].items():
        switches = "?" if row["switches_a_job"] is None else f"{row['switches_a_job']:.1f}"
        lines.append(f"| {n} | {row['p50']:.2f} / {row['p95']:.2f} / {row['p99']:.2f} | "
                     f"{_per_job(row['cpu_ms_a_job'])} | {switches} |")
    return "\n".join(lines)


def measure(counts: tuple[int, ...], jobs: int, repeat: int, base_path: str | None = None) -> dict[str, Any]:
    """For each count of workers, ``repeat`` runs, alternated (1, 2, 4, 1, 2, 4, ...), and their medians."""
    from orchestrator.latency import machine

    runs = alternated(counts, repeat, base_path, "workers-", lambda n, base: one_run(n, jobs, base),
                      lambda n, r: f"{n} worker(s): {r['jobs_per_s']:,.0f} jobs/s, jobs per worker {r['share']}, "
                                   f"jobs found taken {r['races']['taken']}, claims lost {r['races']['lost']}, CPUs "
                                   f"busy {_cpus(r['cpus_busy'])}")
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
    ap.add_argument("--one-at-a-time", type=count, default=0, metavar="SAMPLES",
                    help="also submit SAMPLES jobs one at a time to each count of idle workers: submit -> visible "
                         "latency and the workers' CPU a job (default 0: not measured)")
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
        if args.one_at_a_time:
            result["one_at_a_time"] = measure_idle(tuple(dict.fromkeys(args.workers)), args.one_at_a_time,
                                                   args.repeat, args.base_path)
            print(f"\n{args.one_at_a_time} jobs submitted one at a time (after {IDLE_WARMUP}, {IDLE_PAUSE_S * 1000:g} ms "
                  f"apart) to idle worker processes, medians of {args.repeat} run(s):")
            print(idle_table(result["one_at_a_time"]))
        if json_file is not None:
            json_file.write((json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
