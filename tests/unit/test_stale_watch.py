"""``recovery.StaleWatch``: what a worker's stale recovery remembers between passes, in virtual time."""
from __future__ import annotations

import pytest

from orchestrator import recovery
from orchestrator.recovery import StaleWatch

T = 1_800_000_000.0
A, B = ("A", 1), ("B", 2)


def look(watch: StaleWatch, entries: list, now: float, held: dict | None = None) -> list:
    """One pass of ``recover_expired`` over ``entries``, whose reads find the expiries in ``held``."""
    assert watch.due(now)
    read = watch.to_read(entries, now)
    for entry in read:
        if held and held.get(entry, now) > now:
            watch.holds_until(entry, held[entry], now)
    watch.listed(now, bool(entries))
    return read


def test_the_intervals_follow_the_workers_lease() -> None:
    assert (StaleWatch(30).list_every, StaleWatch(30).idle_every) == (1.0, 5.0)
    assert (StaleWatch(1).list_every, StaleWatch(1).idle_every) == (0.5, 0.5)
    assert StaleWatch(0.1).list_every == pytest.approx(0.05)


def test_an_entry_is_read_again_once_its_expiry_passed_and_one_no_longer_listed_is_forgotten() -> None:
    watch = StaleWatch(30)
    assert look(watch, [A, B], T, {A: T + 10, B: T + 20}) == [A, B]
    assert not watch.due(T + 0.5)
    assert look(watch, [A, B], T + 1) == []  # listed (list_every), nothing read
    assert watch.due(T + 10)  # A's expiry, whatever the listing interval
    assert look(watch, [B], T + 10) == []  # A is gone (finished), B holds
    assert look(watch, [A, B], T + 11, {A: T + 50}) == [A]  # A again (claimed anew?): not remembered any more
    assert look(watch, [A, B], T + 20) == [B]


def test_a_clock_earlier_than_the_last_listing_forgets_everything() -> None:
    watch = StaleWatch(30)
    look(watch, [A], T, {A: T + 30})
    assert watch.due(T - 1)
    assert look(watch, [A], T - 1, {A: T + 30}) == [A]


def test_a_pass_that_did_not_finish_lists_again() -> None:
    watch = StaleWatch(30)
    look(watch, [A], T, {A: T + 30})
    watch.to_read([A], T + 0.5 + 30)  # its reads then fail (the store is lost): listed() is not called
    assert watch.due(T + 30.5)


def test_an_expiry_is_trusted_for_a_minute_at_most() -> None:
    watch = StaleWatch(30)
    look(watch, [A], T, {A: T + 3600})
    assert look(watch, [A], T + recovery.EXPIRY_TRUSTED_FOR - 0.5) == []  # listed, not read
    assert look(watch, [A], T + recovery.EXPIRY_TRUSTED_FOR, {A: T + 3600}) == [A]


def test_at_most_so_many_expiries_are_remembered(monkeypatch) -> None:
    monkeypatch.setattr(recovery, "EXPIRIES_KEPT", 2)
    watch = StaleWatch(30)
    entries = [("A", 1), ("B", 1), ("C", 1)]
    look(watch, entries, T, {e: T + 30 for e in entries})
    assert look(watch, entries, T + 1, {e: T + 30 for e in entries}) == [("C", 1)]  # read at every listing


def test_an_idle_worker_looks_again_at_the_earliest_expiry_or_within_idle_every() -> None:
    watch = StaleWatch(30)
    assert watch.next_look(T) == T  # never listed
    look(watch, [], T)
    assert watch.next_look(T) is None  # this pass listed and found nothing: wait for news
    assert watch.next_look(T + 0.5) == T + watch.list_every  # an older listing found nothing: list again soon
    look(watch, [A], T + 2, {A: T + 4})
    assert watch.next_look(T + 2) == T + 4  # A's lease may end then
    look(watch, [A], T + 4, {A: T + 40})
    assert watch.next_look(T + 4) == T + 4 + watch.idle_every  # jobs run: a look every idle_every
    assert watch.next_look(T + 3) == T + 3  # the clock went back: look at once
