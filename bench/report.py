"""The printed table, the ours/peer ratios and the targets (met / not met): printed, never asserted."""
from __future__ import annotations

from typing import Any, Callable

from bench.common import ratio
from bench.floor import (FDATASYNCS_PER_JOB, IDLE_GAP_S, SIGNATURES_PER_JOB, SYNCFS_BATCH, VERIFICATIONS_PER_JOB,
                         w1_ceiling)

# (key, label, getter, unit, higher is better)
ROWS: list[tuple[str, str, Callable[[dict[str, Any]], Any], str, bool]] = [
    ("W1", "W1 throughput", lambda r: r.get("W1", {}).get("jobs_per_s"), "jobs/s", True),
    ("W2", "W2 submit->visible P50", lambda r: r.get("W2", {}).get("p50"), "ms", False),
    ("W2", "W2 submit->visible P95", lambda r: r.get("W2", {}).get("p95"), "ms", False),
    ("W2", "W2 submit->visible P99", lambda r: r.get("W2", {}).get("p99"), "ms", False),
    ("W3", "W3 resume->visible P50", lambda r: r.get("W3", {}).get("p50"), "ms", False),
    ("W3", "W3 resume->visible P95", lambda r: r.get("W3", {}).get("p95"), "ms", False),
    ("W3", "W3 resume->visible P99", lambda r: r.get("W3", {}).get("p99"), "ms", False),
    ("W3", "W3 duplicate executions", lambda r: r.get("W3", {}).get("duplicates"), "", False),
    ("W4", "W4 worker peak RSS", lambda r: r.get("W4", {}).get("rss_mb"), "MB", False),
    ("W4", "W4 with its handler process", lambda r: with_handler_mb(r.get("W4", {})), "MB", False),
]


def with_handler_mb(w4: dict[str, Any]) -> float | None:
    """The worker's peak RSS plus the pages of its own that a separate handler process adds (ours); a worker that
    runs the handler itself (every peer) is its RSS alone."""
    return w4.get("with_handler_mb", w4.get("rss_mb"))
WORKLOADS = ("W1", "W2", "W3", "W4", "terminal", "scale", "coldstart", "floor", "skeleton")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    return str(value)


def figures(result: dict[str, Any], key: str) -> dict[str, Any] | None:
    """A system's figures of workload ``key``, or None where there are none to read: not run, n/a (the system, or
    that workload of it: ``na`` holds the reason), or failed (``error`` holds what went wrong)."""
    found = result.get(key)
    if "error" in result or "na" in result or not isinstance(found, dict) or "na" in found or "error" in found:
        return None
    return found


def _cell(result: dict[str, Any], key: str, get: Callable[[dict[str, Any]], Any]) -> str:
    for where in (result, result.get(key) or {}):
        if "error" in where:
            return "error"
        if "na" in where:
            return "n/a"
    return _fmt(get(result))


def failures(results: dict[str, Any]) -> list[str]:
    """What failed in this run (a workload of ours, a peer, the scale, floor or skeleton workload), by name: what
    makes ``python -m bench`` exit 1. A peer not installed, or a workload a system cannot do, is n/a, no failure."""
    failed = []
    for name, r in results["systems"].items():
        if "error" in r:
            failed.append(name)
        failed.extend(f"{name} {key}" for key, w in r.items() if isinstance(w, dict) and "error" in w)
    failed.extend(key for key in ("skeleton", "floor", "scale") if "error" in (results.get(key) or {}))
    return failed


def _notes(results: dict[str, Any]) -> list[str]:
    """One line per system's note, per reason it has no figures (n/a) and per failure, each failure once with the
    workloads it took (ours' W1 and W4 come from one run)."""
    notes = []
    for name, r in results["systems"].items():
        if r.get("note"):
            notes.append(f"- {name}: {r['note']}" + ("" if r.get("durable", True) else "  [NOT DURABLE]"))
        for what in ("na", "error"):
            if what in r:
                notes.append(f"- {name}: {'n/a' if what == 'na' else 'error'}: {r[what]}")
        for key in ("W1", "W2", "W3", "W4"):
            if "na" in (r.get(key) or {}):
                notes.append(f"- {name} {key}: n/a: {r[key]['na']}")
        errors: dict[str, list[str]] = {}
        for key, w in r.items():
            if isinstance(w, dict) and "error" in w:
                errors.setdefault(str(w["error"]), []).append(key)
        notes.extend(f"- {name} {', '.join(keys)}: error: {error}" for error, keys in errors.items())
    for key in ("skeleton", "floor", "scale"):
        if "error" in (results.get(key) or {}):
            notes.append(f"- {key}: error: {results[key]['error']}")
    return notes


def table(results: dict[str, Any]) -> str:
    systems = list(results["systems"])
    head = "| workload | unit | " + " | ".join(systems) + " |"
    lines = [head, "|---|---|" + "---:|" * len(systems)]
    for key, label, get, unit, _hib in ROWS:
        lines.append(f"| {label} | {unit} | " + " | ".join(_cell(results["systems"][s], key, get) for s in systems) + " |")
    out = ["\n".join(lines)]
    ratios = ratio_lines(results)
    if ratios:
        out.append("ours / peer (> 1 means ours is ahead):\n" + "\n".join(ratios))
    notes = _notes(results)
    if notes:
        out.append("notes:\n" + "\n".join(dict.fromkeys(notes)))
    ours = results["systems"].get("ours", {})
    extra = []
    t = figures(ours, "terminal")
    if t:
        extra.append(f"terminal latency (handler return -> durable + visible): P50 {t['p50']:.2f} ms, "
                     f"P95 {t['p95']:.2f} ms, P99 {t['p99']:.2f} ms, max {t['max']:.2f} ms (n={t['n']})")
    sc = results.get("scale")
    if sc and "error" not in sc:
        for size, v in sc["sizes"].items():
            extra.append(f"scale {int(size):>7} finished jobs: claim P50 {v['claim_ms']['p50']:.2f} ms "
                         f"(P99 {v['claim_ms']['p99']:.2f}), status P50 {v['status_ms']['p50']:.2f} ms "
                         f"(P99 {v['status_ms']['p99']:.2f})")
        m = sc["metrics"]
        cold = f"{m['cold_s']:.2f} s" if m.get("cold_s") is not None else "not measured"
        extra.append(f"metrics on {m['jobs']} jobs: cold (--rebuild) {cold}, warm {m['warm_s']:.2f} s (process wall time)")
        v = sc["verify"]
        extra.append(f"verify: {v['events_per_s']:,.0f} events/s ({v['events']} events, {v['jobs']} jobs, process wall time)")
        c = sc["coldstart"]
        extra.append(f"status cold start: {c['status_ms']:.0f} ms (python -c pass: {c['python_startup_ms']:.0f} ms)")
    fl = results.get("floor")
    if fl and "error" not in fl:
        extra.append("physical floors (plain Python, this disk and CPU; P50 / P99 us): " + ", ".join(
            f"{k} {v['p50_us']:.0f} / {v['p99_us']:.0f}" for k, v in fl.items() if isinstance(v, dict)))
        if "python_work_after_idle" in fl:
            hot, cold = fl["python_work"]["p50_us"], fl["python_work_after_idle"]["p50_us"]
            extra.append(f"what a wait costs: the same Python work {hot:.0f} us back to back, {cold:.0f} us right "
                         f"after a {IDLE_GAP_S * 1000:g} ms sleep ({cold / hot:.2f}x, P50): every step of W2 and W3, "
                         "ours and the skeleton's, runs right after its process waited")
        if "round_trip" in fl:
            hot, cold = fl["round_trip"]["p50_us"], fl["round_trip_after_idle"]["p50_us"]
            extra.append(f"what a hand-off costs: a request and its answer between two processes {hot:.0f} us back to "
                         f"back, {cold:.0f} us right after a {IDLE_GAP_S * 1000:g} ms sleep (P50, no work in either): "
                         "the worker's round trip to its handler process has this floor, and W2's path wakes a process "
                         "four times (the worker, its handler process, the worker again, the reader)")
        c = w1_ceiling(fl)
        extra.append(f"W1 ceiling of the format itself ({SIGNATURES_PER_JOB} signatures + {VERIFICATIONS_PER_JOB} "
                     f"verification + {FDATASYNCS_PER_JOB} fdatasyncs per job, "
                     f"nothing else): signatures alone {c['crypto_us']:.0f} us/job = {c['crypto_jobs_per_s']:,.0f} "
                     f"jobs/s; with the fdatasyncs {c['crypto_and_fsync_jobs_per_s']:,.0f} jobs/s"
                     + (f"; with group commit (not built: a job's outcome and the next job's claim made durable "
                        f"together, {c['group_commit_fsync_us']:.0f} us a pair) {c['group_commit_jobs_per_s']:,.0f} "
                        "jobs/s" if "group_commit_jobs_per_s" in c else "")
                     + (f"; with a batch commit (not built: {SYNCFS_BATCH} jobs' claims, then their outcomes, made "
                        f"durable by one syncfs each, {fl['syncfs_batch']['p50_us']:.0f} us a batch) "
                        f"{c['batch_commit_jobs_per_s']:,.0f} jobs/s" if "batch_commit_jobs_per_s" in c else ""))
        w1 = (figures(ours, "W1") or {}).get("jobs_per_s")
        if w1:
            spent = 1e6 / w1
            floor_us = c["crypto_us"] + c["fsync_us"]
            extra.append(f"ours W1: {spent:,.0f} us per job, of which that floor {floor_us:,.0f} us; the other "
                         f"{spent - floor_us:,.0f} us are our code and the handler process's round trip"
                         + (f" (with a batch commit and the same code, at most "
                            f"{1e6 / (spent - floor_us + c['crypto_us'] + c['batch_commit_fsync_us']):,.0f} jobs/s)"
                            if "batch_commit_fsync_us" in c else ""))
    sk = results.get("skeleton")
    if sk and "error" not in sk:
        extra.append("floor of the W2 / W3 paths (bench.skeleton: the same processes, durable writes, signatures "
                     "and wake-ups, no orchestrator code): " + "; ".join(
                         f"{w} P50 {v['p50']:.2f} / P95 {v['p95']:.2f} / P99 {v['p99']:.2f} ms" for w, v in sk.items()))
    extra.extend(settle_lines(results.get("settle")))
    if extra:
        out.append("\n".join(extra))
    out.append(targets_text(results))
    return "\n\n".join(out)


def settle_lines(settle: Any) -> list[str]:
    """One line on the disk's state before the timed workloads (``common.settle``): a list per run."""
    entries = [e for run in settle or [] for e in run]
    if not entries:
        return []
    waited = [e for e in entries if e["waited_s"] >= 1]
    slow = [e["before"] for e in entries if not e["quiet"]]
    line = (f"disk before each timed workload: creating a file took {min(e['create_p50_us'] for e in entries):.0f}-"
            f"{max(e['create_p50_us'] for e in entries):.0f} us (P50 of 10); {len(waited)} of {len(entries)} "
            "settles waited for it to come back to its usual cost"
            + (f" (longest {max(e['waited_s'] for e in waited):.0f} s)" if waited else ""))
    if slow:
        line += f"; still slow when measured anyway: {', '.join(slow)}"
    return [line]


def ratio_lines(results: dict[str, Any]) -> list[str]:
    ours = results["systems"].get("ours")
    if not ours:
        return []
    lines = []
    for key, label, get, _unit, hib in ROWS:
        if key == "W3" and label.endswith("executions"):
            continue
        parts = []
        for name, r in results["systems"].items():
            if name == "ours" or figures(ours, key) is None or figures(r, key) is None:
                continue
            x = ratio(get(ours), get(r), hib)
            if x is not None:
                parts.append(f"{name} {x:.2f}x")
        if parts:
            lines.append(f"- {label}: " + ", ".join(parts))
    return lines


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measurement and met / not met (None when not measured in this run)."""
    ours = results["systems"].get("ours", {})
    sc = results.get("scale") or {}
    if "error" in sc:  # failed (in one of the runs, at least): nothing of it judged
        sc = {}
    out: list[dict[str, Any]] = []

    def add(name: str, measured: Any, met: bool | None) -> None:
        out.append({"target": name, "measured": measured, "met": met})

    t = figures(ours, "terminal")
    add("terminal latency P99 <= 2 ms", t and round(t["p99"], 3), t and t["p99"] <= 2.0)
    w1 = (figures(ours, "W1") or {}).get("jobs_per_s")
    fl = results.get("floor")
    ceiling = ""
    if fl and "error" not in fl:
        ceiling = f"; the format's signatures alone allow {w1_ceiling(fl)['crypto_jobs_per_s']:,.0f}"
    add("W1 ahead of every durable peer", *_ahead_of_every_durable_peer(w1, results["systems"], ceiling))
    sk = results.get("skeleton") or {}

    def floor_of(w: str) -> str:  # the path's own floor in this run, beside our figure
        v = sk.get(w)
        return f" (the path's floor, bench.skeleton: P99 {v['p99']:.2f} ms)" if isinstance(v, dict) else ""

    w2 = figures(ours, "W2")
    add("W2 P99 <= 3 ms", w2 and (f"{w2['p99']:.2f} ms{floor_of('W2')}" if sk else round(w2["p99"], 3)),
        w2 and w2["p99"] <= 3.0)
    w3 = figures(ours, "W3")
    add("W3 P99 <= 5 ms, 0 duplicates", w3 and f"{w3['p99']:.2f} ms, {w3['duplicates']} duplicates{floor_of('W3')}",
        w3 and w3["p99"] <= 5.0 and w3["duplicates"] == 0)
    g = sc.get("growth")
    if g and g["from"] >= g["to"]:  # one size, compared with itself (the growth of runs before 2026-12-07)
        g = None
    for what in ("claim", "status"):
        x = g and g[f"{what}_p50"]
        add(f"{what} at largest size within 1.2x of smallest (P50)",
            g and (round(x, 2) if (g["from"], g["to"]) == (1000, 100000) else f"{x:.2f} ({g['to']} jobs against "
                                                                              f"{g['from']})"),
            g and x <= 1.2)
    m = sc.get("metrics")
    add("metrics on 100k jobs <= 1 s warm", m and f"{m['warm_s']:.2f} s on {m['jobs']} jobs",
        (m["warm_s"] <= 1.0 if m["jobs"] >= 100000 else None) if m else None)
    c = sc.get("coldstart")
    add("status cold start <= 150 ms", c and round(c["status_ms"], 1), c and c["status_ms"] <= 150)
    w4 = figures(ours, "W4")
    mem = w4 and with_handler_mb(w4)  # the handler runs in a second process: its own pages count too
    add("worker RSS <= 40 MB", w4 and (f"{mem:.1f} MB with its handler process's own pages ({w4['rss_mb']:.1f} MB "
                                       "the worker process alone)" if "with_handler_mb" in w4 else round(mem, 1)),
        w4 and mem <= 40)
    return out


def _ahead_of_every_durable_peer(w1: float | None, systems: dict[str, Any], ceiling: str) -> tuple[Any, bool | None]:
    """The W1 target's measurement and verdict. A peer that cannot run W1 (LangGraph) is no peer to be ahead of; a
    durable peer asked for and not measured (not installed, failed) leaves "met" unjudged, since it could be ahead,
    and is named; one measured ahead of ours is "not met" whatever the others did."""
    durable = {n: r for n, r in systems.items() if n != "ours" and r.get("durable", True)}
    measured = {n: w["jobs_per_s"] for n, r in durable.items()
                if (w := figures(r, "W1")) is not None and w.get("jobs_per_s") is not None}
    missing = [n for n, r in durable.items() if "error" in r or "na" in r or "error" in (r.get("W1") or {})]
    if not w1:
        return None, None
    best = max(measured.items(), key=lambda item: item[1], default=None)
    vs = f"best {best[0]} {best[1]:.0f}" if best else "no durable peer with a W1 in this run"
    text = (f"{w1:.0f} jobs/s vs {vs}" + (f"; not measured: {', '.join(missing)} (see notes)" if missing else "")
            + ceiling)
    if best and w1 <= best[1]:
        return text, False
    return text, (True if best and not missing else None)


def targets_text(results: dict[str, Any]) -> str:
    lines = ["targets:"]
    for t in results.get("targets") or targets(results):
        verdict = {True: "met", False: "NOT MET",
                   None: "not judged in this run (not run, failed, one scale size, or a peer not measured)"}[t["met"]]
        lines.append(f"- {t['target']}: {verdict} ({t['measured'] if t['measured'] is not None else '-'})")
    return "\n".join(lines)
