"""``python -m bench``: every workload for ours and the peers, a table on stdout, JSON with ``--json FILE``.

    python -m bench                         # full sizes (W1 2000 jobs, W2 300, W3 200, scale 1k/10k/100k)
    python -m bench --quick --peers none    # the smoke version the test suite runs (seconds)
    python -m bench --scale 1000,10000 --peers huey-sqlite,litequeue --json out.json
    python -m bench --repeat 3 --scale 1000,10000 --json bench.json   # the numbers of docs/performance.md

Progress goes to stderr. Peers come from the optional ``bench`` extra (``pip install -e '.[bench]'``);
a peer that is not installed, or cannot do a workload, is shown as n/a with the reason.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import report
from bench.cli_args import choices, measured_folder, positive_int, results_file, seconds, sizes
from bench.common import DUPLICATE_COUNTS, NotApplicable, Params, code_revision, progress, settle

if TYPE_CHECKING:
    from orchestrator.output_file import OutputFile

ALL_PEERS = ("huey-sqlite", "huey-file", "persist-queue", "litequeue", "dbos", "langgraph")


_peer_list = choices(ALL_PEERS, "peer")


def _peers(arg: str) -> tuple[str, ...]:
    """``all`` (every peer), ``none``, or a comma list of peers (``cli_args.choices``: each known, at least one)."""
    if arg == "all":
        return ALL_PEERS
    if arg == "none":
        return ()
    return tuple(_peer_list(arg))


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--quick", action="store_true", help="smoke sizes (a few seconds per system)")
    ap.add_argument("--peers", type=_peers, default=ALL_PEERS, help="all (default), none, or a comma list")
    ap.add_argument("--only", type=choices(report.WORKLOADS, "workload"), default=[],
                    help=f"comma list of workloads to run, ours and the peers' (default: every one): "
                         f"{', '.join(report.WORKLOADS)}")
    ap.add_argument("--w1-jobs", type=positive_int, help="W1 jobs (default 2000)")
    ap.add_argument("--w2-samples", type=positive_int, help="W2 samples (default 300)")
    ap.add_argument("--w3-samples", type=positive_int, help="W3 samples (default 200)")
    ap.add_argument("--scale", type=sizes, help="finished-job counts for the scale workload (default 1000,10000,100000)")
    ap.add_argument("--skip-cold-metrics", action="store_true", help="do not time metrics --rebuild (minutes at 100k)")
    ap.add_argument("--base", type=Path,
                    help="folder on the disk to measure (default: the temp folder; made if missing)")
    ap.add_argument("--settle-max-s", type=seconds,
                    help="before each timed workload, the longest wait for creating a file to cost what it usually "
                         "does on this disk (default 180; 0 with --quick: probe and record only)")
    ap.add_argument("--repeat", type=positive_int, default=1,
                    help="run everything N times and report the median of each number")
    ap.add_argument("--json", dest="json_out", type=Path,
                    help="also write every result as JSON to this file (its folder must exist; checked before the "
                         "run, written whole at its end, left as it was if the run fails or is stopped)")
    args = ap.parse_args(argv)
    if args.base is not None:
        measured_folder(ap, args.base)
    args.results = results_file(ap, args.json_out, "the results")
    return args


def params_from(args: argparse.Namespace) -> Params:
    p = Params.quick() if args.quick else Params()
    over: dict[str, Any] = {"peers": args.peers, "metrics_cold": not args.skip_cold_metrics}
    for field, value in (("w1_jobs", args.w1_jobs), ("w2_samples", args.w2_samples), ("w3_samples", args.w3_samples),
                         ("scale_sizes", args.scale), ("base", args.base), ("settle_max_s", args.settle_max_s)):
        if value is not None:
            over[field] = value
    return replace(p, **over)


def _guard(name: str, fn: Any, *a: Any) -> dict[str, Any]:
    try:
        return fn(*a)
    except NotApplicable as exc:
        return {"error": str(exc)}
    except Exception as exc:  # one broken peer must not lose the whole run
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}


def run(params: Params, only: set[str]) -> dict[str, Any]:
    from bench import ours, peers_queues, peers_workflows, scale
    from orchestrator.latency import machine

    want = lambda w: not only or w in only  # noqa: E731
    params.settle_log.clear()
    results: dict[str, Any] = {"machine": machine(), "params": {k: (str(v) if isinstance(v, Path) else v)
                                                              for k, v in params.__dict__.items()
                                                              if k != "settle_log"},
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "code": code_revision(),
                               "systems": {}}
    mine: dict[str, Any] = {}
    if want("W1") or want("W4"):
        settle(params, "ours W1")
        mine.update(_guard("ours", ours.w1_w4, params))
    if want("W2") or want("terminal"):
        settle(params, "ours W2")
        mine.update(_guard("ours", ours.w2_terminal, params))
    if want("W3"):
        settle(params, "ours W3")
        mine.update(_guard("ours", ours.w3, params))
    results["systems"]["ours"] = mine
    if want("skeleton"):
        from bench import skeleton

        settle(params, "skeleton")
        results["skeleton"] = _guard("skeleton", skeleton.measure, params)
    queues, flows = peers_queues.available(), peers_workflows.available()
    for name in params.peers:
        if not (want("W1") or want("W2") or want("W3") or want("W4")):
            break
        progress(f"peer {name}")
        settle(params, name)
        if name in queues:
            results["systems"][name] = _guard(name, peers_queues.run_peer, name, params)
        elif name in flows:
            results["systems"][name] = _guard(name, peers_workflows.run_peer, name, params)
        else:
            results["systems"][name] = {"error": "not installed (pip install -e '.[bench]')"}
    if want("floor"):
        from bench import floor

        settle(params, "floor")
        results["floor"] = _guard("floor", floor.run, params)
    if want("scale") or want("coldstart"):
        settle(params, "scale")
        results["scale"] = _guard("scale", scale.run, params)
        if "error" in results["scale"]:
            results["scale"] = None
    results["machine"]["loadavg_after"] = machine().get("loadavg_1m_5m_15m")
    results["settle"] = list(params.settle_log)  # this run's; main keeps one list per run
    results["targets"] = report.targets(results)
    return results


def median_of(runs: list[Any]) -> Any:
    """Field by field: the median of every number over the runs (the first run's value otherwise)."""
    import statistics

    first = runs[0]
    if isinstance(first, dict):
        merged = {k: median_of([r[k] for r in runs if isinstance(r, dict) and k in r]) for k in first}
        for k in DUPLICATE_COUNTS:  # any duplicate execution in any run counts: the worst run, not the median
            if k in first:
                merged[k] = max(r.get(k, 0) for r in runs if isinstance(r, dict))
        return merged
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        values = [r for r in runs if isinstance(r, (int, float)) and not isinstance(r, bool)]
        return statistics.median(values) if values else first
    return first


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    with args.results as json_file:  # written whole once the run ends; an error or Ctrl-C leaves the file as it was
        code = _main(args, json_file)
    if json_file is not None:
        progress(f"JSON written to {args.json_out}")
    return code


def _main(args: argparse.Namespace, json_file: OutputFile | None) -> int:
    params = params_from(args)
    only = set(args.only)
    t0 = time.perf_counter()
    runs = []
    for i in range(args.repeat):
        if args.repeat > 1:
            progress(f"run {i + 1} of {args.repeat}")
        runs.append(run(params, only))
    results = median_of(runs) if len(runs) > 1 else runs[0]
    results["runs"] = len(runs)
    results["settle"] = [r["settle"] for r in runs]
    results["targets"] = report.targets(results)
    results["elapsed_s"] = round(time.perf_counter() - t0, 1)
    m = results["machine"]
    print(f"machine: {m.get('cpu', m['arch'])}, {m['cpus']} cpu, {m['os']}, {m['python']}; "
          f"load average before/after: {m.get('loadavg_1m_5m_15m')} / {m.get('loadavg_after')}; "
          f"run took {results['elapsed_s']} s\n")
    print(report.table(results))
    if json_file is not None:
        json_file.write((json.dumps(results, indent=2, default=str) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
