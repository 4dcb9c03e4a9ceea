"""``python -m bench.suites [FILE ...]``: full suites side by side, one row each, and how many met each target.

Reads the JSON files ``python -m bench --json`` wrote (default: ``docs/release/bench-results-*.json``), keeps the full
suites among them (every workload and every peer, the 100k scale), and prints one row per suite, oldest first, with the
figures of the suites table in docs/performance.md ("Every full suite since"), then each target's count of suites
that met it. The table adds a word on each suite's code and host; ``tests/unit/test_bench_suites.py`` checks its
figures against these files, so a figure copied by hand cannot drift from its run's.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.report import targets, with_handler_mb
from orchestrator import stdout

REPO = Path(__file__).resolve().parents[1]
DEFAULT_GLOB = str(REPO / "docs" / "release" / "bench-results-*.json")
FULL_SCALE = 100_000
REFERENCE_SUITE = "2026-12-01 22:23"  # the suite the verdicts are judged on (docs/performance.md)


@dataclass(frozen=True)
class Suite:
    """A full suite's figures, as the suites table shows them (medians of its runs)."""

    path: str
    started: str  # "YYYY-MM-DD HH:MM", UTC, when the suite started
    code: str | None  # the commit measured (suites since 2026-12-05's sixteenth session record it)
    cpu: str
    fdatasync_us: float
    sign_us: float
    verify_us: float
    wait_ratio: float | None  # the same Python work right after a wait / back to back (P50); None before 2026-12-04
    w1: float
    best_peer: str
    best_peer_w1: float
    w2_p50: float
    w2_p99: float
    w2_skeleton_p99: float | None
    w3_p50: float
    w3_p99: float
    w3_skeleton_p99: float | None
    duplicates: int
    terminal_p50: float
    terminal_p99: float
    claim_growth: float
    status_growth: float
    metrics_warm_s: float
    cold_start_ms: float
    rss_mb: float  # the worker process alone
    rss_with_handler_mb: float
    met: dict[str, bool | None]  # target -> met, recomputed from the figures (``bench.report.targets``)

    def row(self) -> str:
        """The row's cells as the suites table writes them (its first column is the start time alone)."""
        wait = f"; a wait {self.wait_ratio:.2f}x" if self.wait_ratio is not None else ""
        return " | ".join([
            self.started + (f" ({self.code})" if self.code else ""), f"{self.cpu}, {self.fdatasync_us:.0f} / {self.sign_us:.0f} / {self.verify_us:.0f} us{wait}",
            f"{self.w1:,.0f} vs {self.best_peer_w1:,.0f} ({self.w1 / self.best_peer_w1:.2f}x, {self.best_peer})",
            f"{self.w2_p99:.2f} ({_ms(self.w2_skeleton_p99)})", f"{self.w3_p99:.2f} ({_ms(self.w3_skeleton_p99)}), "
            f"{self.duplicates}", f"{self.terminal_p99:.2f}", f"{self.claim_growth:.2f}x, {self.status_growth:.2f}x",
            f"{self.metrics_warm_s:.2f} s", f"{self.cold_start_ms:.0f} ms", f"{self.rss_with_handler_mb:.1f} MB"])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def read_suite(path: str) -> Suite | None:
    """The suite in ``path``, or None when it is not a full one (a workload or a peer left out, a smaller scale). A
    file that cannot be read as JSON (none there, a folder, not JSON) is a ``ValueError`` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON
        raise ValueError(f"cannot read {path} as a suite's JSON: {getattr(exc, 'strerror', None) or exc}") from None
    if not isinstance(results, dict):  # JSON, but no suite's
        return None
    systems = results.get("systems") or {}
    ours = systems.get("ours") or {}
    scale = results.get("scale") or {}
    floor = results.get("floor") or {}
    peers = {name: r for name, r in systems.items()
             if name != "ours" and r.get("durable", True) and "error" not in r and (r.get("W1") or {}).get("jobs_per_s")}
    needed = (ours.get("W1"), ours.get("W2"), ours.get("W3"), ours.get("W4"), ours.get("terminal"), peers,
              scale.get("growth"), scale.get("metrics"), scale.get("coldstart"), floor.get("sign"))
    if not all(needed) or (scale.get("growth") or {}).get("to") != FULL_SCALE:
        return None
    best = max(peers, key=lambda name: peers[name]["W1"]["jobs_per_s"])
    skeleton = results.get("skeleton") or {}
    after_idle = floor.get("python_work_after_idle")
    return Suite(
        path=path, started=results["started"][:16].replace("T", " "), code=results.get("code"), cpu=_cpu(results.get("machine") or {}),
        fdatasync_us=floor["fdatasync_append"]["p50_us"], sign_us=floor["sign"]["p50_us"],
        verify_us=floor["verify"]["p50_us"],
        wait_ratio=after_idle["p50_us"] / floor["python_work"]["p50_us"] if after_idle else None,
        w1=ours["W1"]["jobs_per_s"], best_peer=best, best_peer_w1=peers[best]["W1"]["jobs_per_s"],
        w2_p50=ours["W2"]["p50"], w2_p99=ours["W2"]["p99"], w2_skeleton_p99=(skeleton.get("W2") or {}).get("p99"),
        w3_p50=ours["W3"]["p50"], w3_p99=ours["W3"]["p99"], w3_skeleton_p99=(skeleton.get("W3") or {}).get("p99"),
        duplicates=ours["W3"]["duplicates"], terminal_p50=ours["terminal"]["p50"], terminal_p99=ours["terminal"]["p99"],
        claim_growth=scale["growth"]["claim_p50"], status_growth=scale["growth"]["status_p50"],
        metrics_warm_s=scale["metrics"]["warm_s"], cold_start_ms=scale["coldstart"]["status_ms"],
        rss_mb=ours["W4"]["rss_mb"], rss_with_handler_mb=with_handler_mb(ours["W4"]),
        met={t["target"]: t["met"] for t in targets(results)})


def _cpu(machine: dict[str, Any]) -> str:
    """The CPU's maker as the table names it ("AMD", "Intel"), else the architecture."""
    name = str(machine.get("cpu") or machine.get("arch") or "?").split()
    return name[0].removesuffix("(R)") if name else "?"


def read_suites(paths: list[str]) -> list[Suite]:
    """The full suites among ``paths``, oldest first."""
    found = (read_suite(path) for path in paths)
    return sorted((suite for suite in found if suite is not None), key=lambda suite: suite.started)


def counts(suites: list[Suite]) -> dict[str, tuple[int, int]]:
    """Target -> (suites that met it, suites that judged it)."""
    out: dict[str, tuple[int, int]] = {}
    for suite in suites:
        for target, met in suite.met.items():
            if met is not None:
                yes, judged = out.get(target, (0, 0))
                out[target] = (yes + bool(met), judged + 1)
    return out


def _minute(text: str) -> str:
    """``--since``'s value, checked: a start time as the rows write it."""
    try:
        return datetime.strptime(text, "%Y-%m-%d %H:%M").strftime("%Y-%m-%d %H:%M")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time written 'YYYY-MM-DD HH:MM'") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suites", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", help=f"suite JSON files (default: {DEFAULT_GLOB})")
    parser.add_argument("--since", type=_minute, metavar="'YYYY-MM-DD HH:MM'",
                        help="only the suites started then or later, UTC (the suites table starts at the reference "
                             f"suite: --since '{REFERENCE_SUITE}')")
    args = parser.parse_args(argv)
    paths = args.files or sorted(glob.glob(DEFAULT_GLOB))
    try:
        found = read_suites(paths)
    except ValueError as exc:  # a file named that is not a suite's JSON: a usage error (exit 2), not a traceback
        parser.error(str(exc))
    suites = [suite for suite in found if args.since is None or suite.started >= args.since]
    if not suites:
        print(f"no full suite among {len(paths)} file(s)" + (f" since {args.since}" if args.since else ""),
              file=sys.stderr)
        return 1
    print("| suite start (UTC) | CPU, fdatasync / sign / verify P50 | W1 ours vs best durable peer | W2 P99 (skeleton) "
          "| W3 P99 (skeleton), dup. | terminal P99 | claim, `status` 100k/1k | `metrics` warm | cold start | "
          "RSS with handler |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for suite in suites:
        print(f"| {suite.row()} |")
    print(f"\ntargets met, of {len(suites)} full suites ({len(paths)} file(s) read):")
    for target, (yes, judged) in counts(suites).items():
        print(f"- {target}: {yes} of {judged}")
    return 0


if __name__ == "__main__":  # a full disk: STORAGE_ERROR, exit 10; a reader gone (| head): exit 141, as the CLI
    sys.exit(stdout.run(main, "nothing was changed (it only reads the suites' files)"))
