"""A worker draining a queue of jobs with large inputs (and, if asked, large outputs): time per job and peak RSS.

    python -m bench.large_jobs                                  # 12 jobs of a 900 KB input, 3 runs
    python -m bench.large_jobs --jobs 20 --input-kb 500 --output-kb 200 --repeat 5 --json results.json
    python -m bench.large_jobs --input-kb 1 --output-kb 900 --output-shape records   # a large structured output

W1's path with inputs of up to 1 MiB (``MAX_INPUT_BYTES``), where W1's inputs are a few bytes: the input is a list
of small objects (``{"id": ..., "name": ..., "tags": [...], "ok": true}``, ~70 bytes each), what a handler given a
page of records gets, the costliest shape to encode, parse and check per byte. The jobs are submitted first, then
one real worker process (``orchestrator.latency.WorkerProcess``, as W1's) runs them all with its handler process; a
job's time is the worker's ``run`` (from its start, its handler process's included, to its last outcome) divided by
the jobs. ``--output-kb`` makes the handler return that many KB of text (``latency.echo_handler``'s ``pad``), or of
small objects like the input's with ``--output-shape records``, else it returns nothing (``noop_handler``). Peak RSS
is the worker process's (``VmHWM``). Every event is signed and fdatasynced; nothing is cached between runs (each run
has a project of its own). Medians of ``--repeat`` runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cli_args import add_scratch_and_json, count, positive_int, results_file, scratch_folder  # noqa: E402

MAX_KB = 1000  # an input and a payload may take up to 1 MiB (``MAX_INPUT_BYTES``, ``MAX_PAYLOAD_BYTES``) as JSON


def kilobytes(least: int) -> Callable[[str], int]:
    """A size in KB from ``least`` to ``MAX_KB``: a larger input or output would be refused by the submit or the
    worker, after the jobs before it ran."""
    def parse(text: str) -> int:
        value = positive_int(text) if least else count(text)
        if value > MAX_KB:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_KB} (an input or an output takes up to 1 MiB)")
        return value
    return parse


SHAPES = ("text", "records")  # what ``--output-kb`` is made of: one text, or small objects (``latency.records``)


def job_input(input_kb: int, output_kb: int, output_shape: str = "text") -> dict[str, Any]:
    """An input of about ``input_kb`` KB of small objects, asking ``echo_handler`` for ``output_kb`` KB back as one
    text or as small objects (``output_shape``)."""
    from orchestrator.latency import records

    return {"items": records(input_kb * 1000), ("pad" if output_shape == "text" else "records"): output_kb * 1000}


def one_run(jobs: int, input_kb: int, output_kb: int, base: Path, output_shape: str = "text") -> dict[str, float]:
    """Submit ``jobs`` jobs in a new project under ``base``, then let one worker process run them all."""
    from bench.ours import project_env, project_orchestrator
    from orchestrator import latency as lat

    env = project_env(base)
    orch = project_orchestrator(base, env)
    data = job_input(input_kb, output_kb, output_shape)
    kind = lat.ECHO_KIND if output_kb else lat.NOOP_KIND
    started = time.perf_counter()
    for _ in range(jobs):
        orch.submit(kind, data)
    submit_s = time.perf_counter() - started
    summary = lat.WorkerProcess(str(base), "bench", env, max_jobs=jobs, idle_exit=True).start().stop(timeout=600)
    done = summary.get("done", 0)
    if done != jobs:
        raise RuntimeError(f"the worker ran {done} of {jobs} jobs")
    states = {orch.status(j).state for j in orch.job_ids()}
    if states != {"succeeded"}:
        raise RuntimeError(f"unexpected job states: {sorted(states)}")
    return {"ms_per_job": summary["elapsed_s"] / done * 1e3, "submit_ms_per_job": submit_s / jobs * 1e3,
            "worker_rss_mb": summary.get("maxrss_kb", 0) / 1024}


def measure(jobs: int, input_kb: int, output_kb: int, repeat: int, base_path: str | None = None,
            output_shape: str = "text") -> dict[str, Any]:
    """``repeat`` runs; their figures and medians."""
    from orchestrator.latency import machine

    runs = []
    for i in range(repeat):
        base = Path(tempfile.mkdtemp(prefix="large-jobs-", dir=base_path))
        try:
            runs.append(one_run(jobs, input_kb, output_kb, base, output_shape))
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(f"run {i + 1}/{repeat}: {runs[-1]['ms_per_job']:.1f} ms a job, worker peak RSS "
              f"{runs[-1]['worker_rss_mb']:.1f} MB", file=sys.stderr, flush=True)
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return {"jobs": jobs, "input_kb": input_kb, "output_kb": output_kb, "output_shape": output_shape, "repeat": repeat,
            "machine": machine(), "runs": runs, "median": medians}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.large_jobs", description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=positive_int, default=12, help="jobs per run (default 12)")
    ap.add_argument("--input-kb", type=kilobytes(1), default=900, help=f"each job's input, in KB (default 900, at "
                    f"most {MAX_KB})")
    ap.add_argument("--output-kb", type=kilobytes(0), default=0, help=f"each job's output, in KB (default 0: none; "
                    f"at most {MAX_KB})")
    ap.add_argument("--output-shape", choices=SHAPES, default="text", help="what the output is made of: one text "
                    "(default) or small objects like the input's (records)")
    ap.add_argument("--repeat", type=positive_int, default=3, help="runs, each in a new project (default 3)")
    add_scratch_and_json(ap)
    args = ap.parse_args(argv)
    scratch_folder(ap, args)
    with results_file(ap, args.json, "the figures") as json_file:
        result = measure(args.jobs, args.input_kb, args.output_kb, args.repeat, args.base_path, args.output_shape)
        m = result["median"]
        runs = f"{args.repeat} run{'s' if args.repeat > 1 else ''}"
        shape = " of small objects" if args.output_shape == "records" and args.output_kb else ""
        print(f"{args.jobs} jobs of a {args.input_kb} KB input and a {args.output_kb} KB output{shape}, median of "
              f"{runs}: {m['ms_per_job']:.1f} ms a job in the worker (submit {m['submit_ms_per_job']:.1f} ms a job), worker "
              f"peak RSS {m['worker_rss_mb']:.1f} MB")
        if json_file is not None:
            json_file.write((json.dumps(result, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
