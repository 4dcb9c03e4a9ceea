"""The benchmark suite's arithmetic: percentiles, medians of repeats, W3's duplicate count and the target verdicts.

No process is started here: these are the functions every printed number and verdict goes through.
"""
from __future__ import annotations

from pathlib import Path

from bench.__main__ import median_of
from bench.common import WARMUP, percentile, ratio, summarize
from bench.ours import duplicates_of, w4_memory
from bench.report import table, targets
from orchestrator.terminal_bench import Settings

ASKED = ["job_submitted", "job_claimed", "human_input_requested"]


def test_percentiles_are_nearest_rank_so_with_few_samples_p95_and_p99_are_the_slowest_sample() -> None:
    values = [float(v) for v in range(1, 301)]  # 1..300, shuffled order must not matter
    assert percentile(values[::-1], 50) == 150 and percentile(values, 95) == 285 and percentile(values, 99) == 297
    few = [5.0, 1.0, 3.0, 2.0, 4.0, 9.0, 6.0, 8.0, 7.0, 10.0]
    assert (percentile(few, 50), percentile(few, 95), percentile(few, 99)) == (5.0, 10.0, 10.0)
    assert percentile([7.0], 99) == 7.0 and summarize([])["n"] == 0


def test_every_latency_workload_skips_the_same_warm_up_rounds_as_the_gates_benchmark() -> None:
    assert WARMUP == Settings(samples=1, seed=0, base_path=Path("."), project_id="p").warmup == 10


def test_a_double_delivery_that_runs_the_handler_twice_under_one_claim_is_a_duplicate() -> None:
    """Only the handler's own count sees it: the events show one resume and one claim after it."""
    once = ASKED + ["job_resumed", "job_claimed", "job_succeeded"]
    assert duplicates_of(once, 1, "succeeded")["duplicates"] == 0
    assert duplicates_of(once, 2, "succeeded") == {"duplicates": 1, "extra_runs": 1, "extra_claims": 0,
                                                   "reruns_pending": 0, "extra_resume_events": 0}


def test_a_second_claim_and_its_run_count_as_one_duplicate_not_two() -> None:
    twice = ASKED + ["job_resumed", "job_claimed", "job_succeeded", "job_claimed", "job_succeeded"]
    assert duplicates_of(twice, 2, "succeeded")["duplicates"] == 1
    assert duplicates_of(twice, 1, "succeeded")["duplicates"] == 1  # a claim whose run the handler never counted


def test_a_second_resume_recorded_or_a_run_still_to_come_is_a_duplicate() -> None:
    resumed_twice = ASKED + ["job_resumed", "job_resumed", "job_claimed", "job_succeeded"]
    assert duplicates_of(resumed_twice, 1, "succeeded")["extra_resume_events"] == 1
    assert duplicates_of(resumed_twice, 1, "succeeded")["duplicates"] == 1
    requeued = ASKED + ["job_resumed", "job_claimed", "job_succeeded", "job_resumed"]
    assert duplicates_of(requeued, 1, "queued")["duplicates"] == 2  # the extra resume, and the run it queued


def test_the_median_of_repeats_keeps_the_worst_duplicate_count_and_the_median_of_every_number() -> None:
    runs = [{"W3": {"p99": p99, "duplicates": d, "extra_runs": d}} for p99, d in ((3.0, 0), (9.0, 1), (4.0, 0))]
    assert median_of(runs) == {"W3": {"p99": 4.0, "duplicates": 1, "extra_runs": 1}}


def test_ratios_say_how_many_times_ours_is_ahead_for_throughput_and_for_latency() -> None:
    assert ratio(200.0, 100.0, higher_is_better=True) == 2.0  # jobs/s: ours twice the peer's
    assert ratio(2.0, 1.0, higher_is_better=False) == 0.5  # ms: ours twice as slow
    assert ratio(None, 1.0, True) is None and ratio(0.0, 1.0, False) is None


def _results(ours: dict, **peers: dict) -> dict:
    return {"systems": {"ours": ours, **peers}}


def _verdict(results: dict, name: str) -> dict:
    return next(t for t in targets(results) if t["target"] == name)


def test_w1_is_judged_against_durable_peers_only_and_not_at_all_without_one() -> None:
    ours = {"W1": {"jobs_per_s": 900.0}}
    alone = _verdict(_results(ours), "W1 ahead of every durable peer")
    assert alone["met"] is None and "no durable peer with a W1 in this run" in alone["measured"]
    fast_but_not_durable = {"W1": {"jobs_per_s": 5000.0}, "durable": False}
    assert _verdict(_results(ours, f=fast_but_not_durable), "W1 ahead of every durable peer")["met"] is None
    assert _verdict(_results(ours, p={"W1": {"jobs_per_s": 3884.0}}), "W1 ahead of every durable peer")["met"] is False
    assert _verdict(_results(ours, p={"W1": {"jobs_per_s": 800.0}}), "W1 ahead of every durable peer")["met"] is True


def test_latency_targets_are_judged_on_p99_and_w3_needs_zero_duplicates_too() -> None:
    w3 = {"p50": 1.0, "p95": 2.0, "p99": 5.0, "duplicates": 0}
    assert _verdict(_results({"W3": w3}), "W3 P99 <= 5 ms, 0 duplicates")["met"] is True
    assert _verdict(_results({"W3": {**w3, "duplicates": 1}}), "W3 P99 <= 5 ms, 0 duplicates")["met"] is False
    assert _verdict(_results({"W3": {**w3, "p99": 5.01}}), "W3 P99 <= 5 ms, 0 duplicates")["met"] is False
    assert _verdict(_results({"W2": {"p99": 3.0}}), "W2 P99 <= 3 ms")["met"] is True
    assert _verdict(_results({"terminal": {"p99": 2.001}}), "terminal latency P99 <= 2 ms")["met"] is False


def test_the_rss_target_counts_the_pages_the_handler_process_adds_to_the_worker() -> None:
    """Ours runs handlers in a second process; a peer runs its no-op inside its worker, so its RSS is all of it."""
    w4 = w4_memory({"maxrss_kb": 36 * 1024, "handler_kb": {"hwm_kb": 30 * 1024, "private_kb": 5 * 1024}})
    assert w4["with_handler_mb"] == 41.0 and w4["rss_mb"] == 36.0
    verdict = _verdict(_results({"W4": w4}), "worker RSS <= 40 MB")
    assert verdict["met"] is False and verdict["measured"].startswith("41.0 MB with its handler process")
    assert _verdict(_results({"W4": {"rss_mb": 36.0}}), "worker RSS <= 40 MB")["met"] is True  # nothing to add


def test_the_printed_table_shows_the_numbers_of_the_json() -> None:
    results = _results({"W1": {"jobs_per_s": 871.4}, "W4": {"rss_mb": 25.7}})
    results["targets"] = targets(results)
    text = table(results)
    assert "| W1 throughput | jobs/s | 871 |" in text and "| W4 worker peak RSS | MB | 25.70 |" in text
