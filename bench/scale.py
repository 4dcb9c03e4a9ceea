"""Scale: claim and ``status`` latency with 1k / 10k / 100k finished jobs, ``metrics``, ``verify``, cold start.

Generation shortcut (documented, like ``bench/bench_metrics.py``): finished jobs are written
through the real ``Orchestrator.append`` (same validation, same signed and chained bytes, same
head records), one append of ``job_submitted, job_claimed, job_succeeded`` per job, by two
processes with ``fdatasync`` turned off *while generating only*. Every measurement afterwards
runs with fsync on, in fresh processes where it says so. On files, whatever ``ORCH_STORE_URL`` says (``ours``).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import Params, default_signals, env_without_orch, progress, scratch_dir, summarize

REPO = Path(__file__).resolve().parents[1]
PROJECT = "bench"


def _gen(args: tuple[str, dict[str, str], int, int]) -> int:
    base, env, start, stop = args
    import orchestrator.store.jsonl as jsonl
    from orchestrator.api import Orchestrator
    from orchestrator.submitted import context_digest
    from orchestrator.event_models import JobOptions
    from orchestrator.key_files import load_keyring

    os.fdatasync = lambda fd: None  # type: ignore[assignment]  # generation only: see the module docstring
    jsonl.fsync_dir = lambda path: None  # type: ignore[assignment]
    orch = Orchestrator(base_path=base, project_id=PROJECT, store_url="file", keyring=load_keyring(env, announce=False))
    options = JobOptions().model_dump(mode="json", exclude_none=True)
    for i in range(start, stop):
        job_input = {"i": i}
        job_id = f"gen-{i:08d}"
        data = {"kind": "orchestrator.latency:noop_handler", "input": job_input, "options": options,
                "context_digest": context_digest("orchestrator.latency:noop_handler", job_input, options)}
        orch.append(None, job_id, [
            ("job_submitted", data),
            ("job_claimed", {"worker_id": "gen", "epoch": 1, "attempt": 1, "lease_expires_at": "2030-01-01T00:00:00Z"}),
            ("job_succeeded", {"summary": "generated", "output": None, "artifacts": []}),
        ], run_id=f"run-gen-{i}", actor="worker:gen")
    return stop - start


def generate(base: Path, env: dict[str, str], start: int, stop: int, procs: int = 2) -> float:
    t0 = time.perf_counter()
    step = max(1, -(-(stop - start) // procs))
    chunks = [(str(base), env, s, min(s + step, stop)) for s in range(start, stop, step)]
    with multiprocessing.get_context("fork").Pool(procs, initializer=default_signals) as pool:
        assert sum(pool.map(_gen, chunks)) == stop - start
    return time.perf_counter() - t0


def _claim_and_status(orch: Any, worker: Any, finished: int, samples: int, rng: random.Random) -> dict[str, Any]:
    claim_ms, status_ms = [], []
    for _ in range(samples):
        job_id = orch.submit("orchestrator.latency:noop_handler", {"probe": rng.random()})
        t0 = time.perf_counter()
        claim = worker.claim()
        claim_ms.append((time.perf_counter() - t0) * 1000)
        assert claim is not None and claim.job_id == job_id, "the probe job was not the one claimed"
        orch.append(claim.view, job_id, [("job_succeeded", {"summary": "probe"})], run_id=claim.run_id)
        target = f"gen-{rng.randrange(finished):08d}"
        t0 = time.perf_counter()
        st = orch.status(target)
        status_ms.append((time.perf_counter() - t0) * 1000)
        assert st.state == "succeeded"
    return {"claim_ms": summarize(claim_ms), "status_ms": summarize(status_ms)}


def _script(name: str, base: Path, env: dict[str, str], *args: str) -> float:
    return _run_script(name, base, env, *args)[0]


def _run_script(name: str, base: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    """The wall time of ``scripts/<name>.py`` in a fresh process, and its stdout. It runs in ``base``: a ``.env`` of
    the caller's folder (``ORCH_STORE_URL``, say) is not read, as ``env`` holds no ``ORCH_*`` setting."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), "--base-path", str(base),
                           "--project-id", PROJECT, *args], env=env, cwd=base, capture_output=True, text=True,
                          timeout=1800)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/{name}.py exited {proc.returncode}: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return took, proc.stdout


def run(params: Params) -> dict[str, Any]:
    from orchestrator.api import Orchestrator
    from orchestrator.key_files import load_keyring
    from orchestrator.signing import new_seed

    base = scratch_dir(params, "scale")
    env = env_without_orch()
    env.update(ORCH_SIGNING_KEY=new_seed(), ORCH_KEYRING_DIR=str(base / "keys"))
    out: dict[str, Any] = {"sizes": {}, "generation": "Orchestrator.append with fdatasync off while generating"}
    rng = random.Random(5)
    try:
        orch = Orchestrator(base_path=base, project_id=PROJECT, store_url="file",
                            keyring=load_keyring(env, announce=False))
        worker = orch.worker(worker_id="bench-scale")
        have = 0
        sizes = sorted(params.scale_sizes)
        verify_at = sizes[min(1, len(sizes) - 1)]
        for size in sizes:
            took = generate(base, env, have, size)
            progress(f"scale: {size} finished jobs ({size - have} generated in {took:.1f}s)")
            have = size
            worker.claim()  # builds the index once (a first worker on an old project)
            out["sizes"][str(size)] = _claim_and_status(orch, worker, size, params.scale_samples, rng)
            if size == verify_at:
                t, report = _run_script("verify", base, env, "--json")
                checked = json.loads(report)  # what verify counted, the probe jobs included
                out["verify"] = {"jobs": checked["streams"], "events": checked["events"], "seconds": t,
                                 "events_per_s": checked["events"] / t}
        largest = sizes[-1]
        progress(f"scale: metrics and status cold start on {largest} jobs")
        cold = _script("metrics", base, env, "--json", "--rebuild") if params.metrics_cold else None
        warm = [_script("metrics", base, env, "--json") for _ in range(4)][1:]  # the first one builds the cache
        out["metrics"] = {"jobs": largest, "cold_s": cold, "warm_s": statistics.median(warm)}
        job = f"gen-{rng.randrange(largest):08d}"
        # with the package's bytecode compiled, as an install leaves it (pip compiles; a source checkout writes
        # it on its first run unless PYTHONDONTWRITEBYTECODE is set, which then costs every run ~40 ms)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "orchestrator"), str(REPO / "scripts")],
                       check=True, capture_output=True)
        runs = [_script("status", base, env, job, "--json") * 1000 for _ in range(params.coldstart_runs)]
        floor = []
        for _ in range(params.coldstart_runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "pass"], check=True)
            floor.append((time.perf_counter() - t0) * 1000)
        out["coldstart"] = {"jobs": largest, "status_ms": statistics.median(runs), "runs": len(runs),
                            "python_startup_ms": statistics.median(floor)}
        small, big = out["sizes"][str(sizes[0])], out["sizes"][str(largest)]
        if largest > sizes[0]:  # a single size has no growth (it was compared with itself: 1.0, "met")
            out["growth"] = {"claim_p50": big["claim_ms"]["p50"] / small["claim_ms"]["p50"],
                             "status_p50": big["status_ms"]["p50"] / small["status_ms"]["p50"],
                             "from": sizes[0], "to": largest}
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)
