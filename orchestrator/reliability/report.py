"""Run every campaign and print the figure table of ``docs/guarantees.md``.

``--quick`` runs the sizes CI runs; the default runs the long versions. Progress goes to
stderr, the table (or ``--json``) to stdout; the exit status is 0 only when every figure is
what the guarantees promise. A campaign that raises instead of measuring is a failed row naming
the exception, never a traceback that hides the other parts' figures.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.json_usage import ArgumentParser, print_result
from orchestrator.reliability import badinput, concurrency, crash, crash_cli, disk, double_crash, tamper, torn
from orchestrator.reliability.common import progress

# the crash sweeps kill once per seed at a sampled pass of each point (quick: 21 kills, and the command line's 36 at
# crash_cli.QUICK_POINTS), or at every pass of every point (long: 263 kills, 2 to 4 min on 2 shared cores, and the
# command line's 224); a workload crash then its recovery's: 8 sampled pairs, or every pair of points (long: 244)
QUICK = {"crash_seeds": 1, "crash_mode": crash.SAMPLED, "cli_points": crash_cli.QUICK_POINTS, "double_pairs": 8,
         "torn_step": 7, "flips": 500, "per_kind": 20, "storm": (4, 150, 0.5), "zombie_rounds": 1, "clock_seeds": 3,
         "line_samples": 300}
LONG = {"crash_seeds": 20, "crash_mode": crash.EVERY_PASS, "cli_points": None, "double_pairs": None, "torn_step": 1,
        "flips": 2000, "per_kind": 200, "storm": (8, 1000, 1.0), "zombie_rounds": 3, "clock_seeds": 30,
        "line_samples": 3000}


CAMPAIGN_ERROR = "campaign_error"  # the key of a part that raised: its figures are missing, its row failed
PARTS = ("crash", "crash_cli", "double_crash", "torn", "tamper", "storm", "zombie", "clock", "disk", "fsync",
         "bad_input", "secrets")


def run_all(root: Path, quick: bool = True, only: set[str] | None = None,
            crash_mode: str | None = None, pg_url: str | None = None) -> dict[str, Any]:
    """Run the ``PARTS``, or ``only`` those (a name that is none of them would run nothing, and report every figure
    met: ``main`` refuses it); ``crash_mode`` (one of ``crash.MODES``) None takes the size's (``QUICK``/``LONG``);
    ``pg_url``: a PostgreSQL server on which the command-line sweep also kills ``db migrate`` (none: not swept)."""
    size = QUICK if quick else LONG
    mode = crash_mode or size["crash_mode"]
    workers, jobs, kill_every = size["storm"]
    parts: dict[str, Callable[[], Any]] = {
        "crash": lambda: crash.sweep(root / "crash", mode=mode, seeds=size["crash_seeds"]),
        "crash_cli": lambda: crash_cli.sweep(root / "crash_cli", mode=mode, points=size["cli_points"], pg_url=pg_url),
        "double_crash": lambda: double_crash.sweep(root / "double_crash", pairs=size["double_pairs"]),
        "torn": lambda: torn.campaign(root / "torn", step=size["torn_step"]),
        "tamper": lambda: tamper.campaign(root / "tamper", flips=size["flips"], per_kind=size["per_kind"]),
        "storm": lambda: concurrency.storm(root / "storm", workers=workers, jobs=jobs, kill_every=kill_every,
                                           timeout=600.0),
        "zombie": lambda: concurrency.zombie(root / "zombie", rounds=size["zombie_rounds"]),
        "clock": lambda: _clock(root / "clock", size["clock_seeds"]),
        "disk": lambda: disk.full_disk(root / "disk"),
        "fsync": lambda: disk.failed_fsync(root / "fsync"),
        "bad_input": lambda: badinput.campaign(root / "bad", line_samples=size["line_samples"]),
        "secrets": lambda: badinput.secrets(root / "secrets"),
    }
    assert tuple(parts) == PARTS  # the names --only takes
    out: dict[str, Any] = {"mode": "quick" if quick else "long"}
    for name, fn in parts.items():
        if only and name not in only:
            continue
        (root / name).mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        progress(f"{name}: running")
        try:
            out[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a campaign broken by the code it measures is that part's failed row
            progress(f"{name}: raised {type(exc).__name__}: {exc}")
            out[name] = {CAMPAIGN_ERROR: f"{type(exc).__name__}: {exc}"[:500]}
        out[name]["elapsed_s"] = round(time.monotonic() - start, 1)
    return out


def _clock(root: Path, seeds: int) -> dict[str, Any]:
    runs = [concurrency.clock_jumps(root, seed=s) for s in range(seeds)]
    keys = ("jumps", "lost", "finished_twice", "late_writes_accepted", "reruns")
    return {"seeds": seeds, **{k: sum(r[k] for r in runs) for k in keys},
            "verify_ok": all(r["verify_ok"] for r in runs)}


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """(figure, measured, promised, met) for every figure present in ``r``."""
    out: list[tuple[str, str, str, bool]] = []

    def add(figure: str, measured: Any, promised: str, met: bool) -> None:
        out.append((figure, str(measured), promised, bool(met)))

    for name in PARTS:
        if CAMPAIGN_ERROR in r.get(name, {}):
            add(f"{name}: the campaign itself raised", r[name][CAMPAIGN_ERROR], "its figures", False)
    r = {name: part for name, part in r.items() if not (isinstance(part, dict) and CAMPAIGN_ERROR in part)}
    if "crash" in r:
        out.append(_kills_row(r["crash"], "crash"))
        _sweep_rows(add, r["crash"])
    if "crash_cli" in r:
        c = r["crash_cli"]
        out.append(_kills_row(c, f"crash the CLI ({crash_cli.describe(c['commands'])})"))
        add("  commands run again after the kill: its work done, once", f"{c['again_ok']}/{c['again_runs']}", "all",
            c["again_ok"] == c["again_runs"])
        _sweep_rows(add, c)
    if "double_crash" in r:
        d = r["double_crash"]
        every = (f"at each point it passes ({d['first_points']} points x the recovery's: {d['runs']} pairs, passes "
                 f"picked by seed {d['seed']})")
        how = every if d["pairs"] == "all" else f"({d['runs']} pairs sampled by seed {d['seed']})"
        add(f"crash, then crash the recovery {how}: workloads / recoveries killed",
            f"{d['crashed']} / {d['recoveries_killed']} of {d['runs']}", "all",
            d["crashed"] == d["recoveries_killed"] == d["runs"] > 0)
        _sweep_rows(add, d)
    if "torn" in r:
        t = r["torn"]
        add("torn-tail offsets recovered (job file + audit log)", f"{t['recovered']}/{t['offsets']}", "all",
            t["recovered"] == t["offsets"])
        add("garbage / NUL tails recovered", f"{t['garbage_recovered']}/{t['garbage']}", "all",
            t["garbage_recovered"] == t["garbage"])
        add("complete garbage line reported as corruption", t["complete_garbage_line_reported"], "True",
            t["complete_garbage_line_reported"])
    if "tamper" in r:
        for kind, k in r["tamper"]["kinds"].items():
            if k["promised"] and not k["read_trials"]:  # the audit log only: no read of it starts from a head record
                add(f"tamper {kind}: detected by verify", f"{k['detected']}/{k['trials']}", "100%",
                    k["detected"] == k["trials"])
            elif k["promised"]:  # a read counts over the trials that hit a job's file
                add(f"tamper {kind}: detected by verify / job files by a read (status)",
                    f"{k['detected']}/{k['trials']} / {k['detected_by_read']}/{k['read_trials']}", "100% / 100%",
                    k["detected"] == k["trials"] and k["detected_by_read"] == k["read_trials"])
            else:
                add(f"tamper {kind}: detected by verify / with anchor",
                    f"{k['detected']}/{k['trials']} / {k['detected_with_anchor']}/{k['trials']}",
                    "anchor 100%", k["detected_with_anchor"] == k["trials"])
    if "storm" in r:
        s = r["storm"]
        add(f"kill storm {s['workers']} workers x {s['jobs']} jobs, {s['kills']} SIGKILLs: lost / finished twice",
            f"{s['lost']} / {s['finished_twice']}{_verify_failed(s)}", "0 / 0",
            s["lost"] == 0 and s["finished_twice"] == 0 and s["verify_ok"])
        add("  re-runs after a kill (at-least-once, informative)", s["reruns"], "any", True)
    if "zombie" in r:
        z = r["zombie"]
        add(f"zombie (SIGSTOP past lease, {z['completed']}/{z['rounds']} rounds): late writes accepted / finished "
            "twice",
            f"{z['late_writes_accepted']} / {z['finished_twice']}{_verify_failed(z)}", "0 / 0",
            z["late_writes_accepted"] == 0 and z["finished_twice"] == 0 and z["completed"] == z["rounds"]
            and z["verify_ok"])
    if "clock" in r:
        k = r["clock"]
        add(f"clock jumps ({k['seeds']} seeds, {k['jumps']} jumps): lost / twice / late writes",
            f"{k['lost']} / {k['finished_twice']} / {k['late_writes_accepted']}{_verify_failed(k)}", "0 / 0 / 0",
            k["lost"] == 0 and k["finished_twice"] == 0 and k["late_writes_accepted"] == 0 and k["verify_ok"])
    if "disk" in r:
        d = r["disk"]
        add(f"full disk ({d['mode']}): acked but missing", f"{d['acked_missing']} of {d['acked']}", "0",
            d["acked_missing"] == 0)
        add("  error code / CLI exit", f"{d['error_code']} / {d.get('cli_exit', 'n/a')}", "STORAGE_ERROR / 10",
            d["error_code"] == "STORAGE_ERROR" and d.get("cli_exit", 10) == 10)
        if "worker_exit_while_full" in d:
            add("  `worker --once` on the full disk: exit", d["worker_exit_while_full"], "10 (or 0 if it found room)",
                d["worker_clear"])
        add("  work resumes once space is freed", f"{d['resumed'] and d['unfinished'] == 0}{_verify_failed(d)}",
            "True", d["resumed"] and d["unfinished"] == 0 and d["verify_ok"])
    if "fsync" in r:
        f = r["fsync"]
        why = [f"{n} of {f['trials']} {what}" for n, what in (
            (f.get("never_synced", 0), "appends never called fdatasync"),
            (f.get("verify_failures_after", 0), "trials left a project failing verify"),
            (f.get("refused", 0), f"trials refused otherwise ({f.get('first_refusal', '')})")) if n]
        add("failed fsync acknowledged anyway / lines left",
            f"{f['acknowledged_anyway']} / {f['lines_kept']}" + "".join(f"; {w}" for w in why), "0 / 0",
            f["acknowledged_anyway"] == 0 and f["lines_kept"] == 0 and not why)
    if "bad_input" in r:
        b = r["bad_input"]["total"]
        add(f"bad inputs ({b['cases']}): accepted / crashed / stored data harmed",
            f"{b['accepted']} / {b['crashed']} / {b['harmed']}", "0 / 0 / 0",
            b["accepted"] == 0 and b["crashed"] == 0 and b["harmed"] == 0)
    if "secrets" in r:
        s = r["secrets"]
        add(f"secrets leaked ({s['patterns']} kinds x {s['channels']} handler channels)", s["leaked"], "0",
            s["leaked"] == 0)
    return out


def _seeds(seeds: list[int]) -> str:
    """The seeds a sampled sweep ran (consecutive), as its row names them."""
    if len(seeds) < 2:
        return f"seed {seeds[0]}" if seeds else "no seed named"
    return f"seeds {seeds[0]}-{seeds[-1]}"


def _pass_counts(passes: dict[str, Any]) -> list[int]:
    """How often a sweep's points were passed: the crash part's by point, the command line's by command and point."""
    return [n for v in passes.values() for n in (_pass_counts(v) if isinstance(v, dict) else [v])]


def _kills_row(c: dict[str, Any], subject: str) -> tuple[str, str, str, bool]:
    """A sweep's first row: the mode that ran, and whether it killed once at each pass that mode promises (at every
    pass of every point, or at one per point and seed); a mode it does not name, or seeds it does not give, promise
    nothing it can meet."""
    counts, seeds = _pass_counts(c["passes"]), c.get("seeds") or []
    if c.get("mode") == crash.EVERY_PASS:
        figure, promised = f"at every pass of every point ({len(counts)} points, {sum(counts)} passes)", sum(counts)
    else:
        figure = f"at one sampled pass of every point per seed ({len(counts)} points x {len(seeds)}, {_seeds(seeds)})"
        promised = len(counts) * len(seeds) if c.get("mode") == crash.SAMPLED and seeds else -1
    return (f"{subject} {figure}: processes killed", f"{c['crashed']}/{c['runs']}", "all",
            c["crashed"] == c["runs"] == promised)


def _sweep_rows(add: Callable[[str, Any, str, bool], None], c: dict[str, Any]) -> None:
    """The rows every crash sweep has below its first (``crash.summary``'s figures)."""
    add("  acknowledged events lost", c["acked_lost"], "0", c["acked_lost"] == 0)
    add("  jobs lost / finished twice", f"{c['jobs_lost']} / {c['finished_twice']}", "0 / 0",
        c["jobs_lost"] == 0 and c["finished_twice"] == 0)
    add("  histories failing verify after recovery", c["verify_problems"], "0", c["verify_problems"] == 0)
    add("  runs breaking any invariant", len(c["failed_runs"]), "0", not c["failed_runs"])


def _verify_failed(part: dict[str, Any]) -> str:
    """What a row adds to its measured figures when ``verify`` failed on the project its campaign left."""
    return "" if part["verify_ok"] else "; verify failed"


def table(r: dict[str, Any]) -> str:
    lines = ["| figure | measured | promised | ok |", "|---|---|---|---|"]
    lines += [f"| {f} | {m} | {p} | {'yes' if ok else 'NO'} |" for f, m, p, ok in rows(r)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])  # a usage error with --json: as JSON on stdout
    parser.add_argument("--quick", action="store_true", help="the short versions (what CI runs)")
    parser.add_argument("--json", action="store_true", help="print every measured figure as JSON")
    parser.add_argument("--only", action="append", default=None, choices=PARTS, metavar="PART",
                        help=f"run only this part (repeatable): {', '.join(PARTS)}; any other name is a usage error")
    parser.add_argument("--crash", choices=crash.MODES, default=None,
                        help="where the crash parts (crash, crash_cli) kill: at one sampled pass of each point per "
                             "seed (the default with --quick) or at every pass of every point (the default without it)")
    parser.add_argument("--pg-url", metavar="URL", default=None,
                        help="a PostgreSQL server (postgresql://...) on which the crash_cli part also kills `db "
                             "migrate`, in a database of its own made and dropped there (without it, not swept)")
    parser.add_argument("--keep", metavar="DIR", default=None, help="work in DIR and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)  # the campaigns provoke warnings by design
    with tempfile.TemporaryDirectory(prefix="orch-reliability-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        result = run_all(root, quick=args.quick, only=set(args.only) if args.only else None,
                         crash_mode=args.crash, pg_url=args.pg_url)
    met = all(ok for *_, ok in rows(result))
    result["all_met"] = met
    print_result(json.dumps(result, indent=1, default=str) if args.json else table(result))
    return 0 if met else 1


OUTPUT_LOST = ("the campaigns ran, but their table is lost (their folder is kept only with --keep): run it again "
               "where its output fits")


def command_line() -> int | None:
    """``scripts/reliability_report.py``: ``main`` with stdout failing as the CLI's does (``stdout.run``): a full
    disk is STORAGE_ERROR, exit 10; a reader gone (``| head``) ends it quietly, exit 141."""
    from orchestrator import stdout

    return stdout.run(main, OUTPUT_LOST)


if __name__ == "__main__":
    sys.exit(command_line())
