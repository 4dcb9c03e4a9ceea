"""The ready index: ordering, projection hooks and crash-safe ordering of writes (memory implementation)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from orchestrator.queue import MemoryQueueIndex, ReadyEntry
from orchestrator.state import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobState


def job(job_id: str, state: str = QUEUED, priority: int = 0, at: float = 100.0, retry_at: float | None = None):
    return JobState(job_id=job_id, state=state, kind="k", input=None, options={"priority": priority},
                    submitted_at=at, updated_at=at, retry_at=retry_at)


def test_claim_order_is_priority_then_fifo_then_id() -> None:
    entries = [ReadyEntry.for_state(job("B", at=1.0)), ReadyEntry.for_state(job("A", at=2.0)),
               ReadyEntry.for_state(job("C", priority=5, at=3.0)), ReadyEntry.for_state(job("D", priority=-1000, at=0.5)),
               ReadyEntry.for_state(job("E", priority=1000, at=9.0))]
    assert [e.job_id for e in sorted(entries)] == ["E", "C", "B", "A", "D"]
    # the file names sort the same way
    assert [ReadyEntry.parse(n).job_id for n in sorted(e.name for e in entries)] == ["E", "C", "B", "A", "D"]


def test_a_delayed_job_is_ordered_by_its_retry_time() -> None:
    e = ReadyEntry.for_state(job("A", at=1.0, retry_at=50.0))
    assert e.runnable_at == 50.0 and ReadyEntry.parse(e.name) == e


def test_only_a_retry_waits_for_its_time_a_queued_job_is_runnable_at_once_whatever_its_time() -> None:
    queued, retry = ReadyEntry.for_state(job("A", at=500.0)), ReadyEntry.for_state(job("B", at=1.0, retry_at=50.0))
    assert queued.due(now=100.0) and not retry.due(now=49.0) and retry.due(now=50.0)
    # the names say so, and still sort in claim order (priority, then time, then id) with entries of either kind
    assert [ReadyEntry.parse(e.name).at_once for e in (queued, retry)] == [True, False]
    assert [ReadyEntry.parse(n).job_id for n in sorted([queued.name, retry.name])] == ["B", "A"]
    # an entry named before the mark is due at its time; it is the same entry (one job, one entry)
    older = ReadyEntry.parse(queued.names[1])
    assert older == queued and not older.at_once and not older.due(now=100.0)
    assert ReadyEntry.parse("0995.00000000000000001.a+b").job_id == "a+b"  # no id, dropped when met


def test_entry_exists_before_the_event_and_is_dropped_after_the_job_leaves_the_queue() -> None:
    index = MemoryQueueIndex()
    queued = job("A")
    index.before_append("A", None, queued)
    assert [e.job_id for e in index.ready()] == ["A"]  # before the event is written
    index.after_append("A", None, queued)
    running = replace(queued, state=RUNNING, updated_at=200.0)
    index.before_append("A", queued, running)
    assert index.running() == ["A"] and index.ready()  # still both: a crash here leaves extras, never gaps
    index.after_append("A", queued, running)
    assert index.ready() == []
    done = replace(running, state=SUCCEEDED)
    index.before_append("A", running, done)
    index.after_append("A", running, done)
    assert index.running() == []


def test_a_retry_moves_the_entry_to_its_new_time() -> None:
    index = MemoryQueueIndex()
    running = job("A", state=RUNNING)
    retry = replace(running, state=QUEUED, retry_at=500.0, updated_at=300.0)
    index.before_append("A", running, retry)
    index.after_append("A", running, retry)
    assert [e.runnable_at for e in index.ready()] == [500.0]


def test_an_announcement_during_a_scan_wakes_the_next_wait() -> None:
    index = MemoryQueueIndex()
    index.wait(0)
    index.announce(ReadyEntry.for_state(job("A")))  # arrives while the worker scans
    assert index.wait(5.0) is True  # returns at once
    assert index.wait(0.01) is False


def test_file_candidates_come_in_the_same_order_as_the_sorted_entries(tmp_path) -> None:
    from orchestrator.store.file_queue import FileQueueIndex

    index = FileQueueIndex(tmp_path / "index")
    for name, prio, at in (("C", 0, 300.0), ("A", 5, 900.0), ("B", 0, 100.0), ("D", -1000, 1.0), ("E", 1000, 5e9),
                           ("F", 0, 100.0)):
        index.put_ready(ReadyEntry.for_state(job(name, priority=prio, at=at)))
    (index.ready_dir / ".tmp-not-an-entry").touch()
    assert list(index.candidates(0.0)) == index.ready()
    assert [e.job_id for e in index.candidates(0.0)] == ["E", "A", "B", "F", "C", "D"]


def test_every_index_applies_one_table_of_what_an_event_changes() -> None:
    from orchestrator.queue import IndexChange

    queued, later = job("A"), job("A", at=300.0)
    running = replace(queued, state=RUNNING, updated_at=200.0)
    entry, moved = ReadyEntry.for_state(queued), ReadyEntry.for_state(later)
    assert IndexChange.of(None, queued) == IndexChange(entry, None, False, False)  # submitted
    assert IndexChange.of(queued, running) == IndexChange(None, entry, True, False)  # claimed
    assert IndexChange.of(running, later) == IndexChange(moved, None, False, True)  # retried / released
    assert IndexChange.of(running, replace(running, state=SUCCEEDED)) == IndexChange(None, None, False, True)
    assert IndexChange.of(queued, later) == IndexChange(moved, entry, False, False)  # moved in the queue
    assert IndexChange.of(queued, replace(queued, seq=2)) == IndexChange(entry, None, False, False)  # unchanged
    # a cancel keeps the running entry: stale recovery kills what the run left once its lease expired
    assert IndexChange.of(running, replace(running, state=CANCELLED)) == IndexChange(None, None, False, False)
    assert IndexChange.of(queued, replace(queued, state=CANCELLED)) == IndexChange(None, entry, False, False)
    # so does a stale recovery: it kills what the run left after its event, then drops the entry (a crash between
    # leaves the entry, and the next pass kills them)
    recovered = replace(later, last_event="stale_recovered")
    assert IndexChange.of(running, recovered) == IndexChange(moved, None, False, False)
    assert IndexChange.of(running, replace(running, state=FAILED, last_event="stale_recovered")) == IndexChange(
        None, None, False, False)


def _index(kind: str, tmp_path):
    from orchestrator.store.file_queue import FileQueueIndex

    return MemoryQueueIndex() if kind == "memory" else FileQueueIndex(tmp_path / "index", "poll")


@pytest.fixture
def pg_store():
    from backends import TestPostgresStore

    store = TestPostgresStore()
    yield store
    store.close()


@pytest.mark.parametrize("kind", ["memory", "file", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_stale_recovery_dropping_the_epoch_it_listed_never_drops_a_later_claims_entry(kind: str, tmp_path,
                                                                                     request) -> None:
    """Stale recovery drops entries outside any event's transaction, from a listing and a read that
    may be a little old: the job's next claim (another machine's) may have committed since."""
    if kind == "postgres":
        from orchestrator.store.pg_queue import PgQueueIndex

        index = PgQueueIndex(request.getfixturevalue("pg_store"))
    else:
        index = _index(kind, tmp_path)
    index.put_running("A", 1)
    assert index.running_entries() == [("A", 1)]  # what the recoverer lists, then reads the job: queued
    index.put_running("A", 2)  # meanwhile another worker claims it again (epoch 2)
    index.drop_running("A", 1)  # the recoverer drops the entry it listed
    assert index.running_entries() == [("A", 2)]  # the new claim's entry stands: its death would be recovered
    index.drop_running("A", 2)
    assert index.running_entries() == []


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_worker_handing_a_job_back_never_drops_the_next_claimers_running_entry(kind: str, tmp_path) -> None:
    index = _index(kind, tmp_path)
    running1 = replace(job("A"), state=RUNNING, epoch=1, updated_at=200.0)
    released = replace(running1, state=QUEUED, updated_at=300.0)
    running2 = replace(released, state=RUNNING, epoch=2, updated_at=301.0)
    index.before_append("A", running1, released)  # worker 1 hands the job back...
    index.before_append("A", released, running2)  # ...worker 2, woken by the entry, claims before 1 is done
    index.after_append("A", running1, released)  # worker 1 drops the entry of *its* epoch
    assert index.running() == ["A"]  # worker 2's entry is still there: its death would be recovered
    index.after_append("A", released, running2)
    assert index.running() == ["A"] and index.ready() == []


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_job_handed_back_gets_its_entry_back_if_a_claimer_dropped_it_meanwhile(kind: str, tmp_path) -> None:
    index = _index(kind, tmp_path)
    running1 = replace(job("A"), state=RUNNING, epoch=1, updated_at=200.0)
    released = replace(running1, state=QUEUED, updated_at=300.0)
    index.before_append("A", job("A"), running1)  # the run's own running entry
    index.before_append("A", running1, released)
    (entry,) = index.ready()
    index.drop_ready(entry)  # a claimer judged it stale (the clock stepped back)
    index.after_append("A", running1, released)  # the job's own running entry no longer hides it
    assert index.ready() == [entry] and index.running() == []


def test_file_index_entries_are_links_of_one_empty_file_not_files_of_their_own(tmp_path, monkeypatch) -> None:
    import errno
    import os

    from orchestrator.store.file_queue import FileQueueIndex

    index = FileQueueIndex(tmp_path)
    queued = job("A")
    index.before_append("A", None, queued)
    index.after_append("A", None, queued)
    running = replace(queued, state=RUNNING, epoch=1, updated_at=200.0)
    index.before_append("A", queued, running)
    entries = [index.ready_dir / ReadyEntry.for_state(queued).name, index.running_dir / "A@1"]
    template = index.template.stat()
    assert all(p.stat().st_ino == template.st_ino for p in entries) and template.st_size == 0
    index.after_append("A", queued, running)
    assert index.ready() == [] and index.running_entries() == [("A", 1)]

    index.template.unlink()  # removed by hand: made again by the next entry
    index.put_ready(ReadyEntry.for_state(job("B")))
    assert index.template.exists() and [e.job_id for e in index.ready()] == ["B"]

    def too_many_links(*_a, **_k):
        raise OSError(errno.EMLINK, "Too many links")

    monkeypatch.setattr(os, "link", too_many_links)  # 65,000 entries on ext4, or no hard links at all
    index.put_running("C", 1)
    assert ("C", 1) in index.running_entries()
    assert (index.running_dir / "C@1").stat().st_ino != index.template.stat().st_ino  # a file of its own


def test_a_new_entry_and_its_announcement_both_wake_a_waiting_file_index(tmp_path) -> None:
    """Entries are links: a link into ``ready/`` must wake watchers as a created file does (IN_CREATE),
    and the announcement's touch (IN_ATTRIB) too."""
    import sys

    from orchestrator.store.file_queue import FileQueueIndex

    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only; elsewhere the folder's mtime is polled")
    writer, waiter = FileQueueIndex(tmp_path), FileQueueIndex(tmp_path)
    entry = ReadyEntry.for_state(job("A"))
    assert waiter.wait(0) is False  # armed, nothing yet
    writer.put_ready(entry)
    assert waiter.wait(1.0) is True
    writer.announce(entry)
    assert waiter.wait(1.0) is True
    assert waiter.wait(0.05) is False
    waiter.close()


def test_an_entry_carries_its_jobs_kind_except_for_a_history_that_failed_verification() -> None:
    """An index that filters by kind (PostgreSQL, ``worker --kind``) must still show every worker a job whose
    history failed verification: its kind may be forged, and any worker refuses it (``Claimer._refuse``)."""
    index = MemoryQueueIndex()
    good, bad = replace(job("J1"), kind="t.echo"), replace(job("J2"), kind="t.echo")
    index.index_job(good, ok=True)
    index.index_job(bad, ok=False)
    assert {e.job_id: e.kind for e in index.ready()} == {"J1": "t.echo", "J2": None}
    assert ReadyEntry.for_state(good) == ReadyEntry(0, 100_000_000, "J1"), "the kind is not part of the entry's identity"


def test_a_rebuild_puts_the_running_entry_a_cancel_or_a_stale_recovery_kept() -> None:
    """What a run ended from outside left is killed by the stale recovery that meets its running entry: a rebuilt
    index has it too (until 2026-12-07, twenty-ninth session, it had none, and those processes ran on)."""
    claimed = replace(job("A", state=RUNNING), epoch=3, history=(("job_submitted", "t"), ("job_claimed", "t")))
    cancelled = replace(claimed, state=CANCELLED, last_event="job_cancelled", history=(*claimed.history, ("c", "t")))
    recovered = replace(claimed, job_id="B", state=QUEUED, retry_at=500.0, last_event="stale_recovered")
    never_ran = replace(job("C"), state=CANCELLED, last_event="job_cancelled",
                        history=(("job_submitted", "t"), ("job_cancelled", "t")))
    index = MemoryQueueIndex()
    assert [index.index_job(s) for s in (cancelled, recovered, never_ran)] == [True, True, False]
    assert sorted(index.running_entries()) == [("A", 3), ("B", 3)]
    assert [e.job_id for e in index.ready()] == ["B"]  # the recovered job's retry, as before
    unverified = MemoryQueueIndex()
    unverified.index_job(cancelled, ok=False)  # met by a claimer, which refuses it: no run of it is trusted
    assert unverified.running_entries() == []


@pytest.mark.parametrize("how", ["index removed", "ready moved away"])
def test_a_waiting_file_index_wakes_for_new_entries_after_its_folder_was_removed(tmp_path, how: str) -> None:
    """The index is a cache, deletable at any time (docs/ADR-state-source.md). A worker idle when an operator
    removes it must still wake for the entries the next submits put in the folder made in its place: not once
    its idle wait is over (30 s), because its watch is on a folder no entry will ever go into again."""
    import os
    import shutil
    import sys

    from orchestrator.store.file_queue import FileQueueIndex

    if not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only; elsewhere the folder's mtime is polled")
    root = tmp_path / "index"
    waiter = FileQueueIndex(root)
    assert waiter.wait(0) is False  # armed, nothing yet
    if how == "index removed":
        shutil.rmtree(root)
    else:
        os.rename(root / "ready", tmp_path / "ready.old")
    waiter.wait(1.0)  # may wake for the removal itself
    writer = FileQueueIndex(root)
    writer.put_ready(ReadyEntry.for_state(job("A")))
    assert waiter.wait(1.0) is True
    writer.put_ready(ReadyEntry.for_state(job("B")))
    assert waiter.wait(1.0) is True
    assert waiter.wait(0.05) is False
    waiter.close()


def test_an_entry_carries_the_jobs_kind_only_when_it_can_be_a_kind_today_however_often_it_is_asked() -> None:
    """A kind with a control character (a history from before 2026-12-07) gives an entry with no kind; the answer is
    kept per kind (``_can_be_a_kind``), so each is asked twice, in turn with the others."""
    kinds = ["t.echo", "nul\x00kind", "mod:func", "new\nline", "", "x" * 1000]
    for _ in range(2):
        assert [ReadyEntry.for_state(replace(job("A"), kind=k)).kind for k in kinds] == [
            "t.echo", None, "mod:func", None, None, None]
