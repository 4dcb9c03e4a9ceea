"""``python -m bench``: every workload for ours and the peers, a table on stdout, JSON with ``--json FILE``.

    python -m bench                         # full sizes (W1 2000 jobs, W2 300, W3 200, scale 1k/10k/100k)
    python -m bench --quick --peers none    # the smoke version the test suite runs (seconds)
    python -m bench --scale 1000,10000 --peers huey-sqlite,litequeue --json out.json
    python -m bench --repeat 3 --json bench.json   # the numbers of docs/performance.md

Progress goes to stderr. Peers come from the optional ``bench`` extra (``pip install -e '.[bench]'``);
a peer that is not installed, or cannot do a workload, is shown as n/a with the reason.

Exit status: 0 when every workload asked for was measured (n/a is no failure); 1 when one failed, ours or a
peer's: its cells say error, its traceback is on stderr, the error is under notes and in the JSON, which is
still written whole; 2 for a usage error; 143 (SIGTERM) or 130 (SIGINT) when stopped: the worker processes
are stopped, the scratch projects removed, and the --json file is left as it was.
"""
from __future__ import annotations

if __name__ == "__main__":  # before the imports below: a stop in them is this run's (``orchestrator.entry``)
    from orchestrator.entry import tool_started

    tool_started()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from bench import report  # noqa: E402
from bench.cli_args import choices, measured_folder, positive_int, results_file, seconds, sizes  # noqa: E402
from bench.common import DUPLICATE_COUNTS, NotApplicable, Params, code_revision, progress, settle  # noqa: E402

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
    """``fn(*a)``'s results; ``{"na": reason}`` when the system cannot do it, ``{"error": what}`` when it failed
    (its traceback on stderr): one broken workload or peer must not lose the whole run."""
    try:
        return fn(*a)
    except NotApplicable as exc:
        return {"na": str(exc)}
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        return {"error": f"{type(exc).__name__}: {exc}"}


def _workloads(keys: tuple[str, ...], fn: Any, *a: Any) -> dict[str, Any]:
    """``_guard`` for one run of ours that measures the workloads ``keys``: a failure, or n/a, is each one's, so
    the others' figures, and the table's cells of them, stay."""
    got = _guard("ours", fn, *a)
    if "error" in got or "na" in got:
        return {key: dict(got) for key in keys}
    return got


def _durable(peer: str) -> bool:
    """Whether ``peer`` can be run durably at all (known without running it: a peer not installed or broken counts
    for the W1 target only if it is)."""
    from bench.peers_queues import PEERS

    return PEERS[peer].durable if peer in PEERS else True


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
        mine.update(_workloads(("W1", "W4"), ours.w1_w4, params))
    if want("W2") or want("terminal"):
        settle(params, "ours W2")
        mine.update(_workloads(("W2", "terminal"), ours.w2_terminal, params))
    if want("W3"):
        settle(params, "ours W3")
        mine.update(_workloads(("W3",), ours.w3, params))
    results["systems"]["ours"] = mine
    if want("skeleton"):
        from bench import skeleton

        settle(params, "skeleton")
        results["skeleton"] = _guard("skeleton", skeleton.measure, params)
    queues, flows = peers_queues.available(), peers_workflows.available()
    wanted = {w for w in ("W1", "W2", "W3", "W4") if want(w)}  # the peers run these only
    if wanted & {"W1", "W4"}:  # one run, as ours: W4 is the worker's peak RSS during W1
        wanted |= {"W1", "W4"}
    for name in params.peers:
        if not wanted:
            break
        progress(f"peer {name}")
        settle(params, name)
        if name in queues:
            measured = _guard(name, peers_queues.run_peer, name, params, frozenset(wanted))
        elif name in flows:
            measured = _guard(name, peers_workflows.run_peer, name, params, frozenset(wanted))
        else:
            measured = {"na": "not installed (pip install -e '.[bench]')"}
        results["systems"][name] = {"durable": _durable(name), **measured}
    if want("floor"):
        from bench import floor

        settle(params, "floor")
        results["floor"] = _guard("floor", floor.run, params)
    if want("scale") or want("coldstart"):
        settle(params, "scale")
        results["scale"] = _guard("scale", scale.run, params)  # a failure kept: {"error": ...}
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
        errors = [r["error"] for r in runs if isinstance(r, dict) and "error" in r]
        if errors:  # failed in any run: an error, whatever the other runs measured (their medians kept beside it)
            merged["error"] = "; ".join(dict.fromkeys(map(str, errors)))
        return merged
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        values = [r for r in runs if isinstance(r, (int, float)) and not isinstance(r, bool)]
        return statistics.median(values) if values else first
    return first


def main(argv: list[str] | None = None) -> int:
    from orchestrator.command_stop import COMMAND_STOP
    from orchestrator.errors import Interrupted

    args = parse(argv)
    try:
        # SIGTERM and SIGINT raise where the run is, as for bench_terminal_latency: every workload's way out runs
        # (its worker processes stopped, its scratch project removed), and the results file, written whole once
        # the run ends, is left as it was, as by an error
        with COMMAND_STOP.handled(), args.results as json_file:
            code = _main(args, json_file)
    except Interrupted as stop:
        print(f"{stop.message}: the worker processes were stopped and the scratch projects removed; no results were "
              "written" + (f" ({args.json_out} left as it was)" if args.json_out else ""), file=sys.stderr)
        return stop.exit_code
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
    failed = report.failures(results)
    if failed:
        progress(f"failed: {', '.join(failed)} (the errors are under notes" + (" and in the JSON)" if json_file
                                                                                else ")") + "; exit 1")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
