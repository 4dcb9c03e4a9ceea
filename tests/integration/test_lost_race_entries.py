"""A writer that loses a race leaves no ready entry behind, and no left-over entry lets a job jump the queue.

Found by a model-based hunt (2026-12-07): a resume that lost to another resume (or a revise to a revise, a resume
to a cancel, a keyed submit to the same key) was refused as documented, but the ready entry it put before its
append stayed. When the job was queued again later (its retry), a worker claimed it through that old entry, ahead
of jobs queued before the retry. Claim order is priority, then FIFO (README, docs/worker.md "Ready index").
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

import jobstates as js
from backends import orchestrator_on
import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, clock
from orchestrator.errors import ConcurrencyError
from orchestrator.queue import MemoryQueueIndex, ReadyEntry
from orchestrator.signing import Keyring
from orchestrator.worker import Worker, WorkerSettings

T0 = 1_700_000_000.0  # 2023: the events given this time come before every job submitted at the clock's


@pytest.fixture(params=["file", "memory", pytest.param("postgres", marks=pytest.mark.postgres)])
def indexed(base: Path, keyring: Keyring, request: pytest.FixtureRequest) -> Iterator[Orchestrator]:
    """A project on each index: files, memory, and PostgreSQL, whose rows commit with their event (a refused append
    writes none: never affected, checked all the same)."""
    with orchestrator_on("file" if request.param == "memory" else request.param, base, keyring) as orch:
        if request.param == "memory":
            orch.queue = MemoryQueueIndex()
        yield orch


def entries(orch: Orchestrator) -> list[tuple[str, int]]:
    return [(e.job_id, e.runnable_at_us) for e in orch.queue.ready()]


def lose_race(orch: Orchestrator, job_id: str, won: Callable[[Orchestrator, str], object],
              lost: tuple[str, dict[str, str]]) -> None:
    """A decision that read the job before another one's event landed: its append is refused (``control._act`` then
    reads again and says ACTION_CONFLICT, already applied or INVALID_TRANSITION)."""
    view = orch.load(job_id)
    won(orch, job_id)
    with pytest.raises(ConcurrencyError):
        orch.append(view, job_id, [lost], now=T0 + 2)


RESUME_LOST = ("job_resumed", {"answer": "the answer that lost", "question": "Deploy to prod?"})


def resume_won(orch: Orchestrator, job_id: str) -> object:
    return orch.resume(job_id, "the answer that won", now=T0 + 1)


def fail_for_retry(orch: Orchestrator, job_id: str, *, at: float, retry_at: float) -> None:
    js.claim(orch, job_id, "run-b", now=at)
    js.finish(orch, job_id, "job_failed", {"error_code": "MY_TRANSIENT", "retry_at": clock.to_iso(retry_at)}, now=at)


@pytest.mark.parametrize("make, won, lost", [
    (js.waiting_human, resume_won, RESUME_LOST),
    (js.waiting_human, lambda o, j: o.cancel(j, "not needed", now=T0 + 1), RESUME_LOST),
    (js.awaiting_audit, lambda o, j: o.revise(j, "the notes that won", now=T0 + 1), ("job_revised", {"notes": "lost"})),
], ids=["resume-resume", "resume-cancel", "revise-revise"])
def test_a_decision_that_lost_the_race_leaves_no_ready_entry(indexed: Orchestrator, make, won, lost) -> None:
    job = make(indexed, now=T0, job_id=indexed.submit("t.echo", {"text": "b"}))
    lose_race(indexed, job, won, lost)
    s = indexed.load(job).state
    assert entries(indexed) == ([(job, int((T0 + 1) * 1e6))] if s.state == "queued" else []), "the winner's only"


def test_a_job_whose_resume_lost_a_race_is_claimed_after_jobs_queued_before_its_retry(indexed: Orchestrator) -> None:
    b = js.waiting_human(indexed, now=T0, job_id=indexed.submit("t.echo", {"text": "b"}))
    lose_race(indexed, b, resume_won, RESUME_LOST)
    a = indexed.submit("t.echo", {"text": "queued before b's retry"})  # at the clock's time: long after T0
    a_at = indexed.load(a).state.updated_at
    fail_for_retry(indexed, b, at=a_at + 1, retry_at=a_at + 2)
    worker = Worker(indexed, WorkerSettings(worker_id="w-fifo"))
    first = worker.claim(now=a_at + 3)
    assert first is not None and first.job_id == a


def test_a_keyed_submit_that_lost_the_race_leaves_no_second_entry(indexed: Orchestrator, monkeypatch) -> None:
    store_append = indexed.store.append
    racing = []

    def the_other_submit_lands_first(job_id, build, **kw):  # both submits decided "new job"; the other wrote first
        if not racing:
            racing.append(job_id)
            indexed.submit("t.echo", {"n": 1}, key="k1")
        return store_append(job_id, build, **kw)

    monkeypatch.setattr(indexed.store, "append", the_other_submit_lands_first)
    submitted = indexed.submit_job("t.echo", {"n": 1}, key="k1")
    assert not submitted.created
    assert [job for job, _ in entries(indexed)] == [submitted.job_id]


def test_a_refused_append_keeps_the_entry_the_winner_put_under_the_same_name(indexed: Orchestrator) -> None:
    """Two writers at the same microsecond and priority put one entry name: the loser must not take the
    winner's entry away (the job would stay queued with none)."""
    job = js.waiting_human(indexed, now=T0, job_id=indexed.submit("t.echo", {"text": "b"}))
    view = indexed.load(job)
    indexed.resume(job, "the answer that won", now=T0 + 1)
    with pytest.raises(ConcurrencyError):
        indexed.append(view, job, [("job_resumed", {"answer": "lost", "question": view.state.question})], now=T0 + 1)
    assert entries(indexed) == [(job, int((T0 + 1) * 1e6))]


class _Killed(Exception):
    """The losing writer dies at a fault point: nothing of it runs after."""


def test_a_loser_killed_in_its_clean_up_never_takes_the_entry_the_winner_put_under_the_same_name(
        indexed: Orchestrator) -> None:
    """Dropped first and put back after a look (until 2026-12-07), a loser killed in between left the winner's job
    queued with no entry: ``verify`` warned INDEX_ENTRY_MISSING, and no worker claimed it until the index was rebuilt.
    The winner's entry is now looked at before anything is dropped."""
    from orchestrator import faults
    from orchestrator.integrity import verify_project

    job = js.waiting_human(indexed, now=T0, job_id=indexed.submit("t.echo", {"text": "b"}))
    view = indexed.load(job)
    indexed.resume(job, "the answer that won", now=T0 + 1)
    faults.arm("queue.drop_refused.after_drop", lambda: (_ for _ in ()).throw(_Killed()))
    try:
        with pytest.raises((ConcurrencyError, _Killed)):
            indexed.append(view, job, [("job_resumed", {"answer": "lost", "question": view.state.question})],
                           now=T0 + 1)
    finally:
        faults.disarm_all()
    assert entries(indexed) == [(job, int((T0 + 1) * 1e6))]
    assert "INDEX_ENTRY_MISSING" not in [w.code for w in verify_project(indexed).warnings]
    claim = Worker(indexed, WorkerSettings(worker_id="w-after")).claim()
    assert claim is not None and claim.job_id == job


def test_a_left_over_entry_does_not_let_its_job_jump_the_queue(indexed: Orchestrator) -> None:
    """An entry a crash left (a refused writer killed before it dropped its entry; a claim's writer killed between
    its event and the drop of the job's entry, step 3 of docs/worker.md): the job is tried at the place of its own
    entry, not the old one's."""
    b = indexed.submit("t.echo", {"text": "b"})
    left_over = ReadyEntry.for_state(indexed.load(b).state)  # b's entry as submitted
    a = indexed.submit("t.echo", {"text": "a"})
    a_at = indexed.load(a).state.updated_at
    fail_for_retry(indexed, b, at=a_at + 1, retry_at=a_at + 2)
    indexed.queue.put_ready(left_over)
    worker = Worker(indexed, WorkerSettings(worker_id="w-left-over"))
    claims = [worker.claim(now=a_at + 3), worker.claim(now=a_at + 3)]
    assert [c.job_id for c in claims if c is not None] == [a, b]
    assert entries(indexed) == []


def test_a_job_met_under_a_left_over_entry_is_claimed_first_when_its_own_entry_comes_first(
        indexed: Orchestrator) -> None:
    b = indexed.submit("t.echo", {"text": "b"})
    own = ReadyEntry.for_state(indexed.load(b).state)
    a = indexed.submit("t.echo", {"text": "a"})
    indexed.queue.put_ready(ReadyEntry(own.neg_priority, own.runnable_at_us - 5_000_000, b, at_once=True))
    worker = Worker(indexed, WorkerSettings(worker_id="w-left-over"))
    assert [worker.claim().job_id, worker.claim().job_id] == [b, a]
    assert entries(indexed) == []


def test_a_job_met_only_under_a_left_over_entry_is_claimed_in_that_pass(indexed: Orchestrator) -> None:
    """Its own entry gone too (deleted by hand): the claimer puts it back and claims the job, not a pass later."""
    c = indexed.submit("t.echo", {"text": "c"})
    own = ReadyEntry.for_state(indexed.load(c).state)
    indexed.queue.drop_ready(own)
    indexed.queue.put_ready(ReadyEntry(own.neg_priority, own.runnable_at_us - 9_000_000, c, at_once=True))
    claim = Worker(indexed, WorkerSettings(worker_id="w-left-over")).claim()
    assert claim is not None and claim.job_id == c
    assert entries(indexed) == []
