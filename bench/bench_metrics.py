#!/usr/bin/env python3
"""Generate a project of N jobs through the real API, then time ``metrics`` on it.

    python3 -m bench.bench_metrics --jobs 100000 --base-path /tmp/bench [--no-fsync] [--procs 2]

Jobs are spread over every state (succeeded, waiting_human, resumed then succeeded,
awaiting_audit, running with an expired lease, queued, cancelled), with the events a worker
would write and real control actions (so audit entries exist too). ``--no-fsync`` turns off
fdatasync/fsync while *generating* only (the bytes written are the same; it just makes 100k
jobs take minutes, not an hour). The timings are of the real ``scripts/metrics.py`` process:
cold (no projection cache), warm (nothing changed), and after 100 jobs changed. The project is on files,
whatever ``ORCH_STORE_URL`` says (as every benchmark of ``bench/`` but the PostgreSQL ones).
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cli_args import positive_int  # noqa: E402

LEASE_PAST = "2020-01-01T00:00:00.000000Z"
LEASE_FUTURE = "2099-01-01T00:00:00.000000Z"


def _claim(attempt: int, lease: str = LEASE_FUTURE) -> tuple[str, dict]:
    return ("job_claimed", {"worker_id": "bench-w", "epoch": attempt, "attempt": attempt, "lease_expires_at": lease})


def make_job(orch, i: int) -> None:
    kind = i % 10
    job_id = orch.submit("echo", {"i": i}, audit=(kind == 6))
    if kind == 8:
        return
    if kind == 9:
        orch.cancel(job_id, "bench")
        return
    view = orch.load(job_id)
    run = f"run-{i}-1"
    if kind in (0, 1, 2, 3):
        orch.append(view, job_id, [_claim(1), ("job_succeeded", {"summary": "ok"})], run_id=run, actor="bench-w")
    elif kind in (4, 5):
        orch.append(view, job_id, [_claim(1), ("human_input_requested", {"question": "go?"})], run_id=run, actor="bench-w")
        if kind == 5:
            orch.resume(job_id, "yes")
            view = orch.load(job_id)
            orch.append(view, job_id, [_claim(2), ("job_succeeded", {"summary": "ok"})], run_id=f"run-{i}-2",
                        actor="bench-w")
    elif kind == 6:
        orch.append(view, job_id, [_claim(1), ("audit_requested", {"summary": "review me"})], run_id=run, actor="bench-w")
    elif kind == 7:
        orch.append(view, job_id, [_claim(1, LEASE_PAST if i % 20 == 7 else LEASE_FUTURE)], run_id=run, actor="bench-w")


def _worker(args: tuple[str, int, int, bool]) -> int:
    base, start, stop, no_fsync = args
    if no_fsync:
        import orchestrator.store.jsonl as jsonl

        os.fdatasync = lambda fd: None  # type: ignore[assignment]
        jsonl.fsync_dir = lambda path: None  # type: ignore[assignment]
    from orchestrator import Orchestrator

    orch = Orchestrator(base_path=base, project_id="bench", store_url="file")
    for i in range(start, stop):
        make_job(orch, i)
    return stop - start


def generate(base: str, jobs: int, procs: int, no_fsync: bool) -> float:
    t0 = time.perf_counter()
    step = -(-jobs // procs)
    chunks = [(base, s, min(s + step, jobs), no_fsync) for s in range(0, jobs, step)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        assert sum(pool.map(_worker, chunks)) == jobs
    return time.perf_counter() - t0


def metrics_process(base: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``scripts/metrics.py`` on the file project under ``base`` (``--store file``: the jobs were made on files, whatever
    ``ORCH_STORE_URL`` or a ``.env`` says)."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / "metrics.py"), "--base-path", base,
                           "--project-id", "bench", "--store", "file", *extra], capture_output=True, text=True)


def timed_metrics(base: str, *extra: str) -> float:
    t0 = time.perf_counter()
    proc = metrics_process(base, "--json", *extra)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"metrics failed: {proc.stdout}{proc.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=positive_int, default=20000)
    parser.add_argument("--base-path", required=True)
    parser.add_argument("--procs", type=positive_int, default=2)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args(argv)
    Path(args.base_path).mkdir(parents=True, exist_ok=True)
    seed_file = Path(args.base_path) / "bench-signing-key"  # beside the project, never inside its store
    if "ORCH_SIGNING_KEY" not in os.environ:
        if not seed_file.exists():
            from orchestrator.signing import new_seed

            seed_file.write_text(new_seed())
            seed_file.chmod(0o600)
        os.environ["ORCH_SIGNING_KEY"] = seed_file.read_text().strip()  # scripts inherit the same key
    if not args.skip_generate:
        took = generate(args.base_path, args.jobs, args.procs, args.no_fsync)
        print(f"generated {args.jobs} jobs in {took:.1f}s", flush=True)
    cold = timed_metrics(args.base_path, "--rebuild")
    warm = timed_metrics(args.base_path)
    from orchestrator import Orchestrator

    orch = Orchestrator(base_path=args.base_path, project_id="bench", store_url="file")
    for i in range(100):
        orch.submit("echo", {"extra": i})
    incremental = timed_metrics(args.base_path)
    print(f"metrics on {args.jobs} jobs: cold (rebuild) {cold:.2f}s, warm {warm:.2f}s, after 100 new jobs {incremental:.2f}s")
    print(metrics_process(args.base_path).stdout)


if __name__ == "__main__":
    main()
