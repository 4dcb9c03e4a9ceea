"""W2 (or W3) step by step: where the time between a submit (a resume) and the visible final state goes.

    python -m bench.trace --samples 300 [--workload w3] [--slowest 0.1]

Submits one job at a time (the echo handler of the latency benchmark) to an idle worker in
another process, as W2 does, while that worker stamps the named points it passes
(``faults.point``, ``CLOCK_MONOTONIC``) and writes them to a file. For every sample the stamps
are taken relative to the moment the submit started; the table gives P50/P90/P99 of each step,
in the order the steps happen. The handler stamps its own return; the separate reader stamps
the moment it saw the final state, after the same verified read ``status`` does.

With ``--workload w3`` each job first asks a question (its first run ends in ``waiting_human``);
the clock starts when this process calls ``resume``, whose own event and audit entry are stamped
too, and the worker's stamps are those of the second run.

With ``--slowest 0.1`` a second table splits the slowest 10% of the samples step by step (each step's own time, from
the latest step it waits for, ``WAITS_FOR``: the claim's lock waits for both the worker's sealing and the submit's
fsyncs) beside every sample's: which steps make the slow samples slow, which P99s per step cannot tell.

The stamping itself costs a few microseconds per point, so the figures are a little above W2's.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cli_args import positive_int, results_file, seconds  # noqa: E402 - after the path it is found by

if TYPE_CHECKING:
    from orchestrator.output_file import OutputFile

SECOND_TRY = "worker tries a second time (its first try found nothing to claim)"
LINE_SEEN = "worker: the line it waited for is there"
# (label, named point, which pass: 0 = first, -1 = last) in the order they happen on the path
# (a worker woken by the new entry tries the job before its submit returned, and waits on the
# file's lock: its claim is often written before the submit returns)
STEPS = [
    ("submit: ready entry written", "caller.queue.after_put_ready", 0),
    ("worker woken, tries the claim", "worker.try_claim", 0),
    ("submit: its line written", "caller.store.append.after_write", 0),
    (SECOND_TRY, "worker.try_claim", 1),
    (LINE_SEEN, "worker.line_seen", 0),
    ("worker: the job read and verified", "worker.job_verified", -1),
    ("submit: file and folder durable (its lock released next)", "caller.store.append.after_fsync", 0),
    ("worker: claim sealed, asks for the file's lock", "worker.wants_lock", 0),
    ("claimer holds the file's lock", "store.append.before_write", 0),
    ("claim written", "store.append.after_write", 0),
    ("submit returned (its head record written)", "submit.returned", 0),
    ("claim fdatasynced", "store.append.after_fsync", 0),
    ("claim: its file closed (its lock released)", "store.append.before_aux", 0),
    ("claim: its head record written (in W2 it may wait for the submit still creating the record's file)",
     "append.after_event", 0),
    ("claim: its index step done", "append.after_head", 0),
    ("claim recorded (head record, index)", "worker.after_claim", 0),
    ("request sent to the handler process", "worker.after_start", 0),
    ("handler returned", "handler.returned", 0),
    ("outcome decided (payload parsed)", "worker.before_outcome", 0),
    ("outcome written", "store.append.after_write", -1),
    ("outcome fdatasynced", "store.append.after_fsync", -1),
    ("outcome recorded (head record)", "append.after_event", -1),
    ("visible to the separate reader", "reader.visible", 0),
]
# steps only some samples have: the worker found the line there already, or found nothing on its first try
SOMETIMES = frozenset({SECOND_TRY, LINE_SEEN})
W3_STEPS = [
    ("worker woken, tries the claim", "worker.try_claim", 0),
    ("resume: its line written", "caller.store.append.after_write", 0),
    (LINE_SEEN, "worker.line_seen", 0),
    ("worker: the job read on and verified", "worker.job_verified", -1),
    ("resume: its line durable (its lock released next)", "caller.store.append.after_fsync", 0),
    ("worker: claim sealed, asks for the file's lock", "worker.wants_lock", 0),
    ("the resume's event recorded (head record)", "resume.event_durable", 0),
    ("claimer holds the file's lock", "store.append.before_write", 0),
    ("claim written", "store.append.after_write", 0),
    ("the resume returned (its audit entry durable too)", "resume.returned", 0),
    *STEPS[[label for label, _, _ in STEPS].index("claim fdatasynced"):],  # the same path from here on
]

# What each step waits for, where that is not the step listed just before it (another process's step, or the later of
# two): ``--slowest`` counts a step's own time from the latest of these a sample has (none: from the start). The W2 and
# W3 paths run in two processes at first (the submit or resume beside the worker's claim), one chain afterwards.
WAITS_FOR: dict[str, tuple[str, ...]] = {
    "worker woken, tries the claim": ("submit: ready entry written",),
    "submit: its line written": ("submit: ready entry written",),
    SECOND_TRY: ("worker woken, tries the claim",),
    LINE_SEEN: ("submit: its line written",),
    "worker: the job read and verified": ("worker woken, tries the claim", SECOND_TRY, "submit: its line written",
                                          LINE_SEEN),
    "submit: file and folder durable (its lock released next)": ("submit: its line written",),
    "worker: claim sealed, asks for the file's lock": ("worker: the job read and verified",),
    "claimer holds the file's lock": ("worker: claim sealed, asks for the file's lock",
                                      "submit: file and folder durable (its lock released next)"),
    "claim written": ("claimer holds the file's lock",),
    "submit returned (its head record written)": ("submit: file and folder durable (its lock released next)",),
    "claim fdatasynced": ("claim written",),
}
W3_WAITS_FOR: dict[str, tuple[str, ...]] = {
    "worker woken, tries the claim": (),
    "resume: its line written": (),
    LINE_SEEN: ("resume: its line written",),
    "worker: the job read on and verified": ("worker woken, tries the claim", "resume: its line written", LINE_SEEN),
    "resume: its line durable (its lock released next)": ("resume: its line written",),
    "worker: claim sealed, asks for the file's lock": ("worker: the job read on and verified",),
    "the resume's event recorded (head record)": ("resume: its line durable (its lock released next)",),
    "claimer holds the file's lock": ("worker: claim sealed, asks for the file's lock",
                                      "resume: its line durable (its lock released next)"),
    "claim written": ("claimer holds the file's lock",),
    "the resume returned (its audit entry durable too)": ("the resume's event recorded (head record)",),
    "claim fdatasynced": ("claim written",),
}
PATHS = {"w2": (STEPS, WAITS_FOR), "w3": (W3_STEPS, W3_WAITS_FOR)}  # a workload's steps and what each waits for


def _worker(base: str, report: str) -> None:
    """The worker process: ``Worker.run`` with every named point stamped."""
    from orchestrator import claiming, faults
    from orchestrator.api import Orchestrator

    stamps: list[tuple[str, int]] = []
    real_point = faults.point

    def point(name: str, prepare: Any = None) -> None:
        stamps.append((name, time.monotonic_ns()))
        real_point(name, prepare)

    faults.point = point  # every module calls faults.point through the module
    real_try = claiming.Claimer._try_claim

    def try_claim(self: Any, entry: Any, now: float) -> Any:
        stamps.append(("worker.try_claim", time.monotonic_ns()))
        return real_try(self, entry, now)

    claiming.Claimer._try_claim = try_claim  # type: ignore[method-assign]
    from orchestrator.api import Orchestrator as _Orch
    from orchestrator.store.jsonl import JsonlStore

    def stamped(owner: Any, method: str, name: str) -> None:  # the moment ``method`` returns
        real = getattr(owner, method)

        def call(*a: Any, **k: Any) -> Any:
            try:
                return real(*a, **k)
            finally:
                stamps.append((name, time.monotonic_ns()))

        setattr(owner, method, call)

    stamped(JsonlStore, "wait_for_more", "worker.line_seen")
    stamped(_Orch, "load", "worker.job_verified")
    stamped(_Orch, "load_more", "worker.job_verified")
    stamped(JsonlStore, "_open_for_append", "worker.wants_lock")
    out = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def on_result(result: Any) -> None:
        os.write(out, (json.dumps({"job_id": result.job_id, "stamps": stamps}) + "\n").encode())
        stamps.clear()

    orch = Orchestrator(base_path=base, project_id="trace", store_url="file")
    w = orch.worker(worker_id="trace-worker")
    os.write(out, b'{"ready": true}\n')
    with w.handle_signals():
        w.run(on_result=on_result)


def run(samples: int, pause_ms: float = 0.0, warmup: int = 10, workload: str = "w2",
        settle_max_s: float = 180.0) -> list[dict[str, float]]:
    """Trace ``samples`` jobs (after ``warmup``); each sample's steps, in ms since its submit (resume) started."""
    from orchestrator import faults
    from orchestrator import latency as lat
    from orchestrator.api import Orchestrator
    from orchestrator.key_files import load_keyring
    from orchestrator.signing import new_seed

    from bench.common import Params, env_without_orch, settle

    settle(Params(settle_max_s=settle_max_s), "the trace")  # not in the wake of an earlier run's deletions (docs/performance.md)
    base = Path(tempfile.mkdtemp(prefix="orch-trace-"))
    report = base / "stamps.jsonl"

    env = env_without_orch()
    env.update(ORCH_SIGNING_KEY=new_seed(), ORCH_KEYRING_DIR=str(base / "keys"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-m", "bench.trace", "--worker", str(base), str(report)], env=env)
    real_point = faults.point
    try:
        deadline = time.monotonic() + 60
        while not (report.exists() and report.read_bytes()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the tracing worker did not start")
            time.sleep(0.01)
        orch = Orchestrator(base_path=base, project_id="trace", store_url="file", keyring=load_keyring(env, announce=False))
        reader = lat.Reader(orch)
        mine: dict[str, dict[str, int]] = {}
        durable: list[int] = []  # this process's own appends (the resume's event), stamped like the worker's
        own_points: dict[str, int] = {}  # this process's named points, first pass of each (the submit's)

        def point(name: str, prepare: Any = None) -> None:
            own_points.setdefault(f"caller.{name}", time.monotonic_ns())
            real_point(name, prepare)

        faults.point = point

        def stamp() -> None:
            durable.append(time.monotonic_ns())
            faults.arm("append.after_event", stamp)

        for i in range(warmup + samples):
            if workload == "w3":
                job_id = orch.submit(lat.ASK_KIND, {"sample": i})
                reader.wait_for(job_id, {"waiting_human"})
                durable.clear()
                faults.arm("append.after_event", stamp)
                own_points.clear()
                t0 = time.monotonic_ns()
                orch.resume(job_id, "yes")
                own = {"t0": t0, "resume.returned": time.monotonic_ns(), "resume.event_durable": durable[0],
                       **own_points}
                faults.disarm_all()
            else:
                own_points.clear()
                t0 = time.monotonic_ns()
                job_id = orch.submit(lat.ECHO_KIND, {"pad": 64, "sample": i})
                own = {"t0": t0, "submit.returned": time.monotonic_ns(), **own_points}
            st, seen = reader.wait_for(job_id, {"succeeded", "failed"} if workload == "w3" else lat.TERMINAL_STATES)
            if i >= warmup:
                mine[job_id] = {**own, "reader.visible": seen, "handler.returned": int(st.result["output"]["returned_ns"])}
            if pause_ms:
                time.sleep(pause_ms / 1000)
        reader.close()
        time.sleep(0.2)
        proc.terminate()
        proc.wait(30)
        worker_stamps = {}
        for line in report.read_text().splitlines():
            msg = json.loads(line)
            if "job_id" in msg:
                worker_stamps[msg["job_id"]] = msg["stamps"]  # the last run's (W3: the run after the resume)
    finally:
        faults.point = real_point
        faults.disarm_all()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
    steps, _ = PATHS[workload]
    return [sample_times(own, worker_stamps.get(job_id, []), steps) for job_id, own in mine.items()]


def sample_times(own: dict[str, int], passes: list[tuple[str, int]],
                 steps: list[tuple[str, str, int]]) -> dict[str, float]:
    """One sample: each step it has, in ms since its submit (resume) started, from this process's own stamps or the
    worker's pass of the named point (first or last)."""
    out = {}
    for label, name, which in steps:
        if name in own:
            t = own[name]
        else:
            hits = [ns for n, ns in passes if n == name]
            if not -len(hits) <= which < len(hits):
                continue
            t = hits[which]
        out[label] = (t - own["t0"]) / 1e6
    return out


def step_table(samples: list[dict[str, float]], steps: list[tuple[str, str, int]]) -> dict[str, dict[str, float]]:
    """P50/P90/P99 of each step's time since the start, over the samples that have it, in path order."""
    columns = {label: [s[label] for s in samples if label in s] for label, _, _ in steps}
    return {label: _stats(values) for label, values in columns.items() if values}


def slowest_split(samples: list[dict[str, float]], steps: list[tuple[str, str, int]], share: float = 0.1,
                  waits_for: dict[str, tuple[str, ...]] | None = None) -> dict[str, dict[str, float]]:
    """Where the slowest samples (``share`` of them, by their last step) lose their time: each step's own time, at
    the median of every sample and of the slowest. A step's own time is counted from the latest step it waits for
    (``waits_for``; by default the step listed before it), among those the sample has, else from the start: so a
    claim waiting on the submit's lock shows as the lock, not as the steps of the other process. A P99 is not the sum
    of its steps' P99s; this says which steps make a slow sample slow."""
    from bench.common import percentile

    waits_for = waits_for or {}
    last = steps[-1][0]
    ordered = sorted((s for s in samples if last in s), key=lambda s: s[last])
    slowest = ordered[len(ordered) - max(1, round(len(ordered) * share)):]

    def own_times(sample: dict[str, float]) -> dict[str, float]:
        out, before = {}, None
        for label, _, _ in steps:
            if label in sample:
                waited = waits_for.get(label, (before,) if before else ())
                out[label] = sample[label] - max((sample[w] for w in waited if w in sample), default=0.0)
                before = label
        return out

    every, slow = [own_times(s) for s in ordered], [own_times(s) for s in slowest]
    split = {}
    for label, _, _ in steps:
        a, b = [g[label] for g in every if label in g], [g[label] for g in slow if label in g]
        if a and b:
            split[label] = {"every_p50": percentile(a, 50), "slowest_p50": percentile(b, 50), "slowest_n": len(b)}
    return split


def _stats(values: list[float]) -> dict[str, float]:
    from bench.common import percentile  # the suite's one definition (nearest rank)

    return {"n": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99)}


def split_table(split: dict[str, dict[str, float]]) -> str:
    if not split:
        return "(no sample reached the last step: nothing to split)"
    n = max(s["slowest_n"] for s in split.values())
    lines = [f"| step (its own ms: since the latest step it waits for) | P50 of every sample "
             f"| P50 of the slowest {n} |",
             "|---|---:|---:|"]
    lines += [f"| {label} | {s['every_p50']:.3f} | {s['slowest_p50']:.3f} |" for label, s in split.items()]
    return "\n".join(lines)


def table(result: dict[str, dict[str, float]]) -> str:
    n = max(s["n"] for s in result.values())
    lines = ["| step (ms since the submit or resume started) | P50 | P90 | P99 |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {s['p50']:.3f} | {s['p90']:.3f} | {s['p99']:.3f} |" + (f" (in {s['n']} samples)" if s["n"] < n else "")
              for label, s in result.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=positive_int, default=300, help="jobs to trace (after 10 warm-up jobs)")
    parser.add_argument("--workload", choices=["w2", "w3"], default="w2",
                        help="w2: submit to final state; w3: resume of a waiting job to final state")
    parser.add_argument("--pause-ms", type=seconds, default=0.0,
                        help="pause between samples (W2 has none: the next job is submitted once the last is seen)")
    parser.add_argument("--json", dest="json_path",
                        help="also write the figures as JSON to this file (checked before the run, written whole)")
    parser.add_argument("--settle-max-s", type=seconds, default=180.0,
                        help="longest wait for file creation to come back to its usual cost first (0: do not wait)")
    parser.add_argument("--slowest", type=float, default=0.0, metavar="SHARE",
                        help="also split the slowest SHARE of the samples (0.1: the slowest 10%%, by their visible "
                             "time) into each step's own time, beside every sample's: which steps make a slow sample "
                             "slow")
    parser.add_argument("--worker", nargs=2, metavar=("BASE", "REPORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    if not 0 <= args.slowest < 1:
        parser.error("--slowest must be a share of the samples, at least 0 and under 1 (0.1: the slowest 10%)")
    with results_file(parser, args.json_path, "the trace") as json_file:
        return _trace(args, json_file)


def _trace(args: argparse.Namespace, json_file: OutputFile | None = None) -> int:
    from orchestrator.latency import machine

    steps, waits_for = PATHS[args.workload]
    samples = run(args.samples, args.pause_ms, workload=args.workload, settle_max_s=args.settle_max_s)
    result = step_table(samples, steps)
    print(table(result))
    out: dict[str, Any] = {"steps": result, "machine": machine()}
    if args.slowest:
        out["slowest"] = slowest_split(samples, steps, args.slowest, waits_for)
        print("\n" + split_table(out["slowest"]))
    print(f"\nmachine: {out['machine']}")
    if json_file is not None:
        json_file.write(json.dumps(out, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
