"""Stale recovery reads a running job again only once its lease may have expired (``recovery.StaleWatch``).

Before 2026-12-02 every pass of ``run_once`` (and every recovery of the loop, each 5 s) listed the
running index and read every running job, its history and its lease: with N workers each running a job,
each pass of each worker read N-1 jobs. A worker now remembers the expiry each read found (only the
holder extends a lease, and only later) and lists the index at most every half lease (a second at most),
or when a remembered expiry is due. A stale job is still recovered at the first pass after its lease ends;
a live one is never recovered, since nothing is recovered without a fresh read.
"""
from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, recovery
from orchestrator.errors import StorageUnavailableError
from orchestrator.leases import Lease, write_lease
from orchestrator.signing import Keyring
from orchestrator.worker import Worker, WorkerSettings

from backends import BACKENDS, orchestrator_on
from helpers import WAIT, wait_until


@pytest.fixture(params=BACKENDS)
def orch(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


def make_worker(orch: Orchestrator, worker_id: str, **kw) -> Worker:
    kw.setdefault("retry_base_seconds", 0.0)
    return Worker(orch, WorkerSettings(worker_id=worker_id, **kw), rng=random.Random(7))


class Reads:
    """What stale recovery reads from the store: listings of the running index, jobs, lease records."""

    def __init__(self, orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listings = self.loads = self.leases = 0
        real_listing, real_load, real_lease = orch.queue.running_entries, orch.load, recovery.lease_expiry

        def listing():
            self.listings += 1
            return real_listing()

        def load(job_id, **kw):
            self.loads += 1
            return real_load(job_id, **kw)

        def lease(store, state, now):
            self.leases += 1
            return real_lease(store, state, now)

        monkeypatch.setattr(orch.queue, "running_entries", listing)
        monkeypatch.setattr(orch, "load", load)
        monkeypatch.setattr(recovery, "lease_expiry", lease)

    def take(self) -> tuple[int, int, int]:
        counts = (self.listings, self.loads, self.leases)
        self.listings = self.loads = self.leases = 0
        return counts


def test_a_live_running_job_is_not_read_again_until_its_lease_may_have_expired(orch, monkeypatch) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    assert make_worker(orch, "dead", lease_seconds=30).claim(now=t) is not None
    watcher = make_worker(orch, "watcher")
    reads = Reads(orch, monkeypatch)
    assert watcher.recover_stale(now=t) == []
    assert reads.take() == (1, 1, 1)  # listed, the job read, its lease read: holds until t+30
    for k in range(1, 60):  # a pass every half second until t+29.5
        assert watcher.recover_stale(now=t + k / 2) == []
    listings, loads, leases = reads.take()
    assert (loads, leases) == (0, 0)  # before: 59 of each
    assert 14 <= listings <= 30  # once a second (list_every), for jobs claimed since; before: 59
    assert watcher.recover_stale(now=t + 30.5) == [job]
    assert reads.take()[1] >= 1


def test_a_remembered_expiry_that_passed_is_recovered_at_the_next_pass(orch) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    make_worker(orch, "dead", lease_seconds=30).claim(now=t)
    watcher = make_worker(orch, "watcher")
    assert watcher.recover_stale(now=t + 29.9) == []  # read: holds until t+30
    # less than list_every after that listing: only the remembered expiry makes this pass look
    assert watcher.recover_stale(now=t + 30.2) == [job]


def test_a_lease_renewed_since_it_was_read_is_read_again_when_the_old_expiry_passes(orch) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "busy", lease_seconds=30).claim(now=t)
    watcher = make_worker(orch, "watcher")
    assert watcher.recover_stale(now=t + 5) == []  # holds until t+30
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "busy", 1, t + 45, t + 15))  # a heartbeat
    assert watcher.recover_stale(now=t + 30.2) == []  # read again: renewed until t+45, still live
    assert orch.status(job).state == "running"
    assert watcher.recover_stale(now=t + 44.9) == []  # listed, not read: t+45 is remembered
    assert watcher.recover_stale(now=t + 45.2) == [job]


def test_a_job_claimed_after_a_listing_is_met_at_the_next_listing(orch) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    watcher = make_worker(orch, "watcher")  # lease 30 s: lists the running index at most once a second
    assert watcher.recover_stale(now=t) == []  # nothing runs yet
    make_worker(orch, "dead", lease_seconds=0.1).claim(now=t)  # a lease shorter than list_every
    assert watcher.recover_stale(now=t + 0.5) == []  # not listed again yet: at most list_every late
    assert watcher.recover_stale(now=t + watcher.stale_watch.list_every) == [job]


def test_an_expiry_that_moved_earlier_is_relied_on_for_at_most_a_minute(orch) -> None:
    """Only the holder writes its lease, and only later, unless its clock stepped back between two heartbeats
    (or its record is lost): a remembered expiry is trusted for EXPIRY_TRUSTED_FOR, not until it passes."""
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "busy", lease_seconds=10).claim(now=t)
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "busy", 1, t + 600, t))  # a 600 s lease
    watcher = make_worker(orch, "watcher")
    assert watcher.recover_stale(now=t + 1) == []  # holds until t+600: trusted until t+61
    # the holder's clock stepped back by 570 s, then it wrote one more heartbeat and died
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "busy", 1, t + 30, t - 570))
    assert watcher.recover_stale(now=t + 40) == []  # a worker without the memory would recover it here
    assert watcher.recover_stale(now=t + 1 + recovery.EXPIRY_TRUSTED_FOR + 0.5) == [job]


def test_a_clock_stepped_back_reads_every_running_job_again(orch, monkeypatch) -> None:
    orch.submit("t.echo", 1)
    t = orch.clock()
    make_worker(orch, "busy", lease_seconds=30).claim(now=t)
    watcher = make_worker(orch, "watcher")
    reads = Reads(orch, monkeypatch)
    watcher.recover_stale(now=t)
    assert reads.take() == (1, 1, 1)
    watcher.recover_stale(now=t + 2)
    assert reads.take() == (1, 0, 0)
    watcher.recover_stale(now=t - 5)  # what was read at t says nothing of a lease as seen at t-5
    assert reads.take() == (1, 1, 1)


def test_a_pass_cut_short_by_a_lost_store_looks_again_at_the_next(orch, monkeypatch) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    make_worker(orch, "dead", lease_seconds=30).claim(now=t)
    watcher = make_worker(orch, "watcher")
    assert watcher.recover_stale(now=t + 29.9) == []  # holds until t+30
    real_load = orch.load

    def lost(job_id, **kw):
        raise StorageUnavailableError("the connection was lost")

    monkeypatch.setattr(orch, "load", lost)
    with pytest.raises(StorageUnavailableError):
        watcher.recover_stale(now=t + 30.2)
    monkeypatch.setattr(orch, "load", real_load)
    assert watcher.recover_stale(now=t + 30.2) == [job]  # the same pass again (run_once waits out a loss)


def test_an_idle_worker_wakes_when_a_remembered_lease_expires(orch) -> None:
    """The loop's idle wait ends at the earliest remembered expiry, not at its next look (5 s with 30 s leases)."""
    job = orch.submit("t.echo", 1)
    make_worker(orch, "dead", lease_seconds=0.5).claim()  # dies at once
    worker = make_worker(orch, "idle", lease_seconds=30)
    started = time.monotonic()
    runner = threading.Thread(target=worker.run, kwargs={"max_jobs": 1})
    runner.start()
    try:
        wait_until(lambda: orch.status(job).state == "succeeded", timeout=WAIT, what="the job recovered and run")
        assert time.monotonic() - started < 4.0  # before: 5 s, the loop's recovery interval
    finally:
        worker.stop()
        runner.join(WAIT)
