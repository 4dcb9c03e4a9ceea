"""W1-W4 and terminal latency for jsonl-orchestrator, through the real worker and the real API.

Every job runs in a real worker process (``orchestrator.latency.WorkerProcess``: ``Worker.run``,
Python handler forked per run as in production), every event is signed and fdatasynced, and
"visible" means a fresh read by this (other) process, verified as ``status`` does (the chain, the signed
head record, and each line's signature where the head record does not vouch for it: ``docs/format.md``).
"""
from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import (DUPLICATE_COUNTS, WARMUP, Params, default_signals, env_without_orch, progress, scratch_dir,
                          settle, summarize)
from orchestrator import latency as lat
from orchestrator import terminal_bench as tb
from orchestrator.command_stop import COMMAND_STOP


def project_orchestrator(base: Path, env: dict[str, str]) -> Any:
    """The benchmark's project ``bench`` under ``base``, signing with the key ``project_env`` gave its processes; on
    files whatever ``ORCH_STORE_URL`` says, as its worker processes, which get no ``ORCH_*`` setting: the benchmark
    measures the file backend (a database's project ``bench`` got the jobs, signed with a key deleted after)."""
    from orchestrator.api import Orchestrator
    from orchestrator.key_files import load_keyring

    return Orchestrator(base_path=base, project_id="bench", store_url="file", keyring=load_keyring(env, announce=False))


def project_env(base: Path) -> dict[str, str]:
    """The environment of a benchmark's processes on a project under ``base``: a new signing key, its keyring there,
    no other ``ORCH_*`` setting of the caller's."""
    from orchestrator.signing import new_seed

    env = env_without_orch()
    env.update(ORCH_SIGNING_KEY=new_seed(), ORCH_KEYRING_DIR=str(base / "keys"))
    return env


def w1_w4(params: Params) -> dict[str, Any]:
    """W1: ``w1_jobs`` no-op jobs submitted, then one worker process runs them all; W4: its peak RSS."""
    base = scratch_dir(params, "ours-w1")
    worker = None
    try:
        env = project_env(base)
        orch = project_orchestrator(base, env)
        t0 = time.perf_counter()
        for i in range(params.w1_jobs):
            orch.submit(lat.NOOP_KIND, {"i": i})
        enqueue_s = time.perf_counter() - t0
        settle(params, "ours W1's run")
        progress(f"ours W1: {params.w1_jobs} jobs enqueued in {enqueue_s:.1f}s; one worker process runs them")
        with COMMAND_STOP.deferred():  # a stop (``python -m bench``) waits for it to have started, then stops it below
            worker = lat.WorkerProcess(str(base), "bench", env, max_jobs=params.w1_jobs, idle_exit=True).start()
        summary = worker.stop(timeout=600)
        worker = None
        done = summary.get("done", 0)
        if done != params.w1_jobs:
            raise RuntimeError(f"the worker ran {done} of {params.w1_jobs} jobs")
        states = {orch.status(j).state for j in list(orch.job_ids())[:50]}
        if states != {"succeeded"}:
            raise RuntimeError(f"unexpected job states after W1: {states}")
        return {"W1": {"jobs": done, "jobs_per_s": done / summary["elapsed_s"], "elapsed_s": summary["elapsed_s"],
                       "enqueue_per_s": params.w1_jobs / enqueue_s},
                "W4": w4_memory(summary)}
    finally:
        if worker is not None:  # stopped or failed while it ran: not left running on a folder removed below
            worker.stop(at_once=True)
        shutil.rmtree(base, ignore_errors=True)


def w4_memory(summary: dict[str, Any]) -> dict[str, Any]:
    """W4 from the worker's summary: the worker process's peak RSS, and with the pages of its own that the handler
    process adds (the peers run the no-op inside their worker process; this one runs it in a second process)."""
    rss = summary["maxrss_kb"] / 1024
    handler = summary.get("handler_kb") or {}
    out: dict[str, Any] = {"rss_mb": rss}
    if "private_kb" in handler:
        out.update(handler_rss_mb=handler.get("hwm_kb", 0) / 1024, handler_private_mb=handler["private_kb"] / 1024,
                   with_handler_mb=rss + handler["private_kb"] / 1024)
    return out


def w2_terminal(params: Params) -> dict[str, Any]:
    """W2 (submit -> terminal state visible) and terminal latency come from one run of the gate's benchmark."""
    base = scratch_dir(params, "ours-w2")
    try:
        samples = max(params.w2_samples, params.terminal_samples)
        progress(f"ours W2/terminal: {samples} jobs, one at a time, to an idle worker process")
        rows = tb.run(tb.Settings(samples=samples, seed=20260222, base_path=base, project_id="bench"),
                      progress=progress)
        return {"W2": summarize([r["submit_to_visible_ms"] for r in rows[:params.w2_samples]]),
                "terminal": summarize([r["latency_ms"] for r in rows[:params.terminal_samples]])}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _resume_at(args: tuple[str, dict[str, str], str, Any]) -> None:
    """One delivery of the answer, in its own process; a refused or failed one exits non-zero."""
    default_signals()
    base, env, job_id, barrier = args
    orch = project_orchestrator(Path(base), env)
    barrier.wait()
    orch.resume(job_id, "yes")


def duplicates_of(types: list[str], runs_with_answer: int, state: str) -> dict[str, int]:
    """What one double delivery did beyond one resume and one run: ``types`` are the job's event types in order,
    ``runs_with_answer`` the handler's own count of its runs that saw the answer, ``state`` the job's state once
    the worker stopped. ``duplicates`` counts a run twice whether it shows as a second claim, a second run under
    one claim (only the handler's count sees that), or both (counted once); a job queued again (a run that was
    still to come); and every resume recorded beyond the first."""
    first_resume = types.index("job_resumed") if "job_resumed" in types else len(types)
    extra_runs = max(runs_with_answer - 1, 0)
    extra_claims = max(types[first_resume:].count("job_claimed") - 1, 0)
    pending = 0 if state in lat.TERMINAL_STATES else 1
    extra_resumes = max(types.count("job_resumed") - 1, 0)
    return {"duplicates": max(extra_runs, extra_claims) + pending + extra_resumes, "extra_runs": extra_runs,
            "extra_claims": extra_claims, "reruns_pending": pending, "extra_resume_events": extra_resumes}


def w3(params: Params) -> dict[str, Any]:
    """W3: resume a waiting job from this process; time until its final state is visible. Then the same
    answer delivered twice at once by two processes: count the extra executions, by the handler's own count
    of its runs with the answer and by the job's events, once the worker has stopped (nothing left to run)."""
    base = scratch_dir(params, "ours-w3")
    worker = None
    try:
        env = project_env(base)
        orch = project_orchestrator(base, env)
        with COMMAND_STOP.deferred():
            worker = lat.WorkerProcess(str(base), "bench", env).start()
        reader = lat.Reader(orch)
        lat_ms: list[float] = []
        progress(f"ours W3: {params.w3_samples} resumes")
        for i in range(WARMUP + params.w3_samples):
            job_id = orch.submit(lat.ASK_KIND, {"i": i})
            reader.wait_for(job_id, {"waiting_human"})
            t0 = time.monotonic_ns()
            orch.resume(job_id, "yes")
            st, seen = reader.wait_for(job_id, {"succeeded", "failed"})
            if i >= WARMUP:
                lat_ms.append((seen - t0) / 1e6)
        ctx = multiprocessing.get_context("fork")
        progress(f"ours W3: {params.w3_duplicate_trials} double deliveries of the same answer")
        trials = []
        for i in range(params.w3_duplicate_trials):
            job_id = orch.submit(lat.COUNTED_ASK_KIND, {"dup": i})
            reader.wait_for(job_id, {"waiting_human"})
            barrier = ctx.Barrier(2)
            procs = [ctx.Process(target=_resume_at, args=((str(base), env, job_id, barrier),)) for _ in range(2)]
            try:
                with COMMAND_STOP.deferred():  # both started, or none: one alone would wait at the barrier for ever
                    for p in procs:
                        p.start()
                for p in procs:
                    p.join(30)
            finally:
                codes = [p.exitcode for p in procs]
                for p in procs:  # one that hung, or the run was stopped: ended before its project is removed
                    if p.pid is not None and p.exitcode is None:
                        p.kill()
                        p.join()
            if codes != [0, 0]:  # a delivery refused or lost: this trial did not deliver the answer twice
                raise RuntimeError(f"W3: a delivery of the same answer to job {job_id} failed (exit codes {codes}); "
                                   "both must succeed, the second as already applied")
            reader.wait_for(job_id, {"succeeded", "failed"})
            trials.append(job_id)
        reader.close()
        worker.stop()  # a run still to come would come before it stops: count once nothing can run any more
        worker = None
        counts = []
        for job_id in trials:
            view, runs = orch.load(job_id), lat.runs_with_answer(orch, job_id)
            if not runs:
                raise RuntimeError(f"W3: job {job_id} succeeded with no run counted by its handler: the count is "
                                   "broken")
            counts.append(duplicates_of([e.type for e in view.events], runs, view.state.state))
        total = {k: sum(c[k] for c in counts) for k in DUPLICATE_COUNTS}
        return {"W3": {**summarize(lat_ms), **total, "duplicate_trials": params.w3_duplicate_trials}}
    finally:
        if worker is not None:
            worker.stop()
        shutil.rmtree(base, ignore_errors=True)


def run_all(params: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(w1_w4(params))
    out.update(w2_terminal(params))
    out.update(w3(params))
    return out
