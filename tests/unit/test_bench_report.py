"""The benchmark's report judges only what was measured: a peer that was asked for and not measured, a peer that
cannot run a workload, a single scale size and a workload that failed are never read as a verdict.

``bench.report`` works on the results' dictionary alone (``python -m bench --json`` writes it): no run needed here.
"""
from __future__ import annotations

from typing import Any

from bench import report

STATS = {"p50": 1.0, "p95": 1.5, "p99": 2.5, "max": 3.0, "n": 15}


def results(ours: dict[str, Any] | None = None, scale: dict[str, Any] | None = None,
            **peers: dict[str, Any]) -> dict[str, Any]:
    mine = {"W1": {"jobs_per_s": 66.0}, "W2": dict(STATS), "W3": {**STATS, "duplicates": 0}, "terminal": dict(STATS),
            "W4": {"rss_mb": 25.0}} if ours is None else ours
    return {"systems": {"ours": mine, **{name.replace("_", "-"): r for name, r in peers.items()}}, "scale": scale}


def target(res: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [t for t in report.targets(res) if t["target"] == name]
    return found


W1_TARGET = "W1 ahead of every durable peer"


def test_w1_is_not_judged_ahead_when_a_durable_peer_asked_for_was_not_measured_and_names_it() -> None:
    """A peer that failed, or is not installed, was left out of "every durable peer": ours was judged ahead of
    the ones that ran ("met (66 jobs/s vs best dbos 24)" with litequeue's import failing)."""
    for litequeue in ({"error": "RuntimeError: the worker process did not start", "durable": True},
                      {"na": "not installed (pip install -e '.[bench]')", "durable": True}):
        t = target(results(dbos={"W1": {"jobs_per_s": 24.0}, "durable": True}, litequeue=litequeue), W1_TARGET)
        assert t["met"] is None and "litequeue" in t["measured"] and "best dbos 24" in t["measured"], t


def test_w1_is_not_met_when_a_measured_peer_is_ahead_even_if_another_was_not_measured() -> None:
    t = target(results(dbos={"W1": {"jobs_per_s": 240.0}, "durable": True},
                       litequeue={"error": "ImportError: no", "durable": True}), W1_TARGET)
    assert t["met"] is False


def test_a_peer_that_failed_but_is_not_durable_does_not_keep_w1_from_its_verdict() -> None:
    t = target(results(dbos={"W1": {"jobs_per_s": 24.0}, "durable": True},
                       huey_file={"error": "ImportError: no", "durable": False}), W1_TARGET)
    assert t["met"] is True and "best dbos 24" in t["measured"]


def test_a_peer_that_cannot_run_w1_is_no_peer_to_be_ahead_of() -> None:
    """LangGraph has no W1 (a graph runs in the caller): it counted as a peer at 0 jobs/s, so ours was "met (379
    jobs/s vs best langgraph 0)"."""
    langgraph = {"W1": {"na": "not a job queue"}, "W3": {**STATS, "duplicates": 20}, "durable": True}
    t = target(results(langgraph=langgraph), W1_TARGET)
    assert t["met"] is None and "langgraph" not in t["measured"], t
    t = target(results(langgraph=langgraph, dbos={"W1": {"jobs_per_s": 24.0}, "durable": True}), W1_TARGET)
    assert t["met"] is True and "best dbos 24" in t["measured"]


def scale_of(*sizes: int) -> dict[str, Any]:
    growth = {"claim_p50": 1.0, "status_p50": 1.0, "from": sizes[0], "to": sizes[-1]} if len(sizes) > 1 else None
    return {"sizes": {str(s): {} for s in sizes}, **({"growth": growth} if growth else {}),
            "metrics": {"jobs": sizes[-1], "warm_s": 0.4, "cold_s": None}, "coldstart": {"status_ms": 80.0}}


CLAIM, STATUS = ("claim at largest size within 1.2x of smallest (P50)",
                 "status at largest size within 1.2x of smallest (P50)")


def test_claim_and_status_growth_are_not_judged_with_a_single_scale_size() -> None:
    """One ``--scale`` size was compared with itself: "met (1.0)"."""
    one = {**scale_of(1000), "growth": {"claim_p50": 1.0, "status_p50": 1.0, "from": 1000, "to": 1000}}  # as before
    for name in (CLAIM, STATUS):
        assert target(results(scale=one), name)["met"] is None
        assert target(results(scale=scale_of(1000)), name)["met"] is None


def test_the_growth_names_the_sizes_compared_unless_they_are_1k_and_100k() -> None:
    assert target(results(scale=scale_of(1000, 10000, 100000)), CLAIM) == {"target": CLAIM, "measured": 1.0,
                                                                           "met": True}
    small = target(results(scale=scale_of(50, 200)), STATUS)
    assert small["met"] is True and small["measured"] == "1.00 (200 jobs against 50)"


def test_a_failed_workload_of_ours_shows_error_in_its_own_cells_only_and_says_why_under_notes() -> None:
    """Before, one failed workload made every cell of ours ``error`` (W2 too, which was measured and judged), and
    only the last failure's message was kept."""
    ours = {"W1": {"error": "RuntimeError: the worker ran 0 of 40 jobs"},
            "W4": {"error": "RuntimeError: the worker ran 0 of 40 jobs"}, "W2": dict(STATS), "terminal": dict(STATS),
            "W3": {"error": "AttributeError: no jobs_dir"}}
    res = results(ours=ours, scale={"error": "AssertionError: generated 3 of 5"})
    res["targets"] = report.targets(res)
    text = report.table(res)
    cells = {line.split("|")[1].strip(): line.split("|")[3].strip() for line in text.splitlines()
             if line.startswith("| W")}
    assert cells["W1 throughput"] == cells["W4 worker peak RSS"] == cells["W3 resume->visible P99"] == "error"
    assert cells["W2 submit->visible P99"] == "2.50" and cells["W2 submit->visible P50"] == "1.00"
    assert "- ours W1, W4: error: RuntimeError: the worker ran 0 of 40 jobs" in text
    assert "- ours W3: error: AttributeError: no jobs_dir" in text
    assert "- scale: error: AssertionError: generated 3 of 5" in text
    verdicts = {t["target"]: t["met"] for t in res["targets"]}
    assert verdicts["W2 P99 <= 3 ms"] is True and verdicts["W3 P99 <= 5 ms, 0 duplicates"] is None
    assert verdicts["worker RSS <= 40 MB"] is None and verdicts[W1_TARGET] is None
    assert "terminal latency (handler return" in text  # measured: still printed


def test_a_peer_not_installed_is_n_a_in_its_cells_with_the_reason_under_notes() -> None:
    """``--help`` says so; its cells said ``error``."""
    res = results(litequeue={"na": "not installed (pip install -e '.[bench]')", "durable": True})
    text = report.table(res)
    row = next(line for line in text.splitlines() if line.startswith("| W1 throughput"))
    assert row.split("|")[4].strip() == "n/a"
    assert "- litequeue: n/a: not installed (pip install -e '.[bench]')" in text
