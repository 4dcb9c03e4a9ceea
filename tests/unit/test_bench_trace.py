"""``bench.trace --slowest``: which steps make the slow samples slow."""
from __future__ import annotations

import pytest

from bench.trace import slowest_split, split_table

STEPS = [("a", "p.a", 0), ("b", "p.b", 0), ("c", "p.c", 0)]


def test_the_slowest_samples_are_split_by_the_time_each_step_took_in_them():
    # nine samples whose step b takes 1 ms, one whose step b takes 5 ms: the slow sample's own gap is what shows
    samples = [{"a": 1.0, "b": 2.0, "c": 2.5} for _ in range(9)] + [{"a": 1.0, "b": 6.0, "c": 6.5}]
    split = slowest_split(samples, STEPS, share=0.1)
    assert split["b"] == {"every_p50": 1.0, "slowest_p50": 5.0, "slowest_n": 1}
    assert split["a"]["slowest_p50"] == 1.0 and split["c"]["slowest_p50"] == 0.5  # since the step before it


def test_a_step_a_sample_lacks_is_skipped_and_the_next_counts_from_the_one_before_it():
    samples = [{"a": 1.0, "c": 3.0}, {"a": 1.0, "b": 1.5, "c": 2.0}]
    split = slowest_split(samples, STEPS, share=0.5)  # the slowest is the first: c at 3.0
    assert split["c"]["slowest_p50"] == 2.0  # 3.0 - a's 1.0: b is not in that sample
    assert "b" not in split  # none of the slowest has it: nothing to set beside every sample's


def test_samples_that_never_reached_the_last_step_are_left_out():
    samples = [{"a": 1.0, "b": 2.0}, {"a": 1.0, "b": 1.2, "c": 1.4}]
    assert slowest_split(samples, STEPS, share=0.5)["b"]["every_p50"] == pytest.approx(0.2)


def test_no_sample_that_reached_the_last_step_gives_an_empty_split_and_says_so():
    split = slowest_split([{"a": 1.0}], STEPS, share=0.1)
    assert split == {} and "nothing to split" in split_table(split)


def test_a_step_that_waits_for_two_counts_its_own_time_from_the_later_of_them():
    """The claim's lock waits for the worker's sealing and for the submit's fsyncs: its own time is what comes after
    the later, so a slow disk under the submit shows on the submit's step, not as the lock."""
    steps = [("sealed", "p.s", 0), ("submit durable", "p.d", 0), ("lock held", "p.l", 0)]
    waits = {"submit durable": (), "lock held": ("sealed", "submit durable")}
    samples = [{"sealed": 1.0, "submit durable": 3.0, "lock held": 3.1}]
    split = slowest_split(samples, steps, share=1.0 - 1e-9, waits_for=waits)
    assert split["lock held"]["every_p50"] == pytest.approx(0.1)
    assert split["submit durable"]["every_p50"] == 3.0  # waits for nothing listed: from the start


def test_every_step_the_traces_wait_for_is_one_they_stamp():
    from bench.trace import STEPS, W3_STEPS, W3_WAITS_FOR, WAITS_FOR

    for steps, waits in ((STEPS, WAITS_FOR), (W3_STEPS, W3_WAITS_FOR)):
        labels = [label for label, _, _ in steps]
        for step, waited in waits.items():
            assert step in labels and all(w in labels[:labels.index(step)] for w in waited), step
