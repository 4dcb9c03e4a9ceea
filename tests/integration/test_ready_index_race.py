"""A job that becomes queued while a worker scans the ready index is still claimed.

Found by the W3 benchmark (resume -> final state): the resume writes the ready entry, a worker
scanning at that instant reads the job (still ``waiting_human``: the event is not written yet)
and drops the entry as stale; without a repair the resumed job stays queued with no entry.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import jobstates as js
import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator
from orchestrator.queue import MemoryQueueIndex
from orchestrator.store.file_queue import FileQueueIndex
from orchestrator import claiming
from orchestrator.worker import Worker, WorkerSettings


@pytest.fixture(params=["file", "memory"])
def index_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_a_resume_racing_a_claim_scan_leaves_the_job_claimable(orch, index_kind: str, monkeypatch) -> None:
    if index_kind == "memory":
        orch.queue = MemoryQueueIndex()
    assert isinstance(orch.queue, FileQueueIndex if index_kind == "file" else MemoryQueueIndex)
    monkeypatch.setattr(claiming, "EVENT_WAIT", 0.0)  # the scan runs on the writer's own thread: nothing to wait for
    worker = Worker(orch, WorkerSettings(worker_id="w-race"))
    job_id = js.waiting_human(orch)
    put_ready = orch.queue.put_ready

    def put_then_scan(entry):  # the scan happens between the entry and the job_resumed event
        put_ready(entry)
        assert worker.claim() is None  # the job is not queued yet
        assert [e.job_id for e in orch.queue.ready()] == [job_id]  # ...but its entry is newer than its events: kept

    monkeypatch.setattr(orch.queue, "put_ready", put_then_scan)
    orch.resume(job_id, "yes")
    monkeypatch.undo()
    assert orch.status(job_id).state == "queued"
    assert [e.job_id for e in orch.queue.ready()] == [job_id]


def test_announcing_restores_an_entry_a_claimer_dropped_meanwhile(orch, index_kind: str) -> None:
    if index_kind == "memory":
        orch.queue = MemoryQueueIndex()
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    (entry,) = orch.queue.ready()
    orch.queue.drop_ready(entry)  # a claimer that read the job just before the resume event landed
    orch.queue.announce(entry)  # the resume's announcement, after its event is durable
    assert orch.queue.ready() == [entry]


def test_a_claimer_woken_by_a_new_entry_waits_for_its_submit_instead_of_giving_up(orch, monkeypatch) -> None:
    """The entry is written before the job's first event: a worker woken by it finds no event yet.
    It waits for the submit (the line is there ~0.1 ms later) and claims the job in the same pass,
    its claim landing once the submit is durable, instead of sleeping until the announcement."""
    import threading
    import time

    from orchestrator.store import jsonl

    monkeypatch.setattr(claiming, "EVENT_WAIT", 10.0)  # the submit's pace does not matter: the wait ends with it
    worker = Worker(orch, WorkerSettings(worker_id="w-early"))
    put_ready, claimed, lines_at_folder_fsync = orch.queue.put_ready, [], []
    real_fsync_dir = jsonl.fsync_dir

    def slow_folder_fsync(path):  # the submit's last durable step, under the file's lock
        if Path(path) == orch.store.jobs_dir:
            time.sleep(0.02)  # the waiting worker has read the line by now and wants to append its claim
            lines_at_folder_fsync.extend(p.read_bytes().count(b"\n") for p in Path(path).glob("*.events.jsonl"))
        real_fsync_dir(path)

    monkeypatch.setattr(jsonl, "fsync_dir", slow_folder_fsync)

    def put_then_wake_a_worker(entry):
        put_ready(entry)
        thread = threading.Thread(target=lambda: claimed.append(worker.claim()))
        thread.start()
        time.sleep(0.02)  # the worker looks now: the events file does not exist yet
        claimed.append(thread)

    monkeypatch.setattr(orch.queue, "put_ready", put_then_wake_a_worker)
    job_id = orch.submit("t.echo", "early")
    monkeypatch.undo()
    claimed.pop(0).join(5)
    (claim,) = claimed
    assert claim is not None and claim.job_id == job_id
    assert [e.type for e in orch.load(job_id).events] == ["job_submitted", "job_claimed"]
    assert lines_at_folder_fsync == [1]  # the claim was written only after the submit was durable


def test_a_claimer_does_not_wait_for_an_entry_left_by_a_submit_that_died(orch, monkeypatch) -> None:
    from orchestrator.queue import ReadyEntry

    worker = Worker(orch, WorkerSettings(worker_id="w-orphan"))
    now = orch.clock()
    waits = []
    real_wait = orch.store.wait_for_more
    monkeypatch.setattr(orch.store, "wait_for_more", lambda s, n, t: waits.append(s) or real_wait(s, n, t))
    young, old = "01JYOUNGJOB0000000000000AA", "01JOLDJOB000000000000000AA"
    orch.queue.put_ready(ReadyEntry(0, int((now - 0.001) * 1e6), young))  # its submit may still be writing
    orch.queue.put_ready(ReadyEntry(0, int((now - 5) * 1e6), old))  # its submit died seconds ago
    assert worker.claim(now) is None
    assert waits == [young]  # waited (and gave up after EVENT_WAIT) for the young one only
    assert {e.job_id for e in orch.queue.ready()} == {young, old}  # both kept until ORPHAN_ENTRY_GRACE


def test_a_claimer_woken_by_a_resumes_entry_waits_for_the_resume_and_claims_the_job(orch, monkeypatch) -> None:
    import threading
    import time

    monkeypatch.setattr(claiming, "EVENT_WAIT", 10.0)
    worker = Worker(orch, WorkerSettings(worker_id="w-resume"))
    job_id = js.waiting_human(orch, job_id=orch.submit("t.echo", "ask"))
    put_ready, claimed = orch.queue.put_ready, []

    def put_then_wake_a_worker(entry):
        put_ready(entry)
        thread = threading.Thread(target=lambda: claimed.append(worker.claim()))
        thread.start()
        time.sleep(0.02)  # the worker reads the job now: still waiting_human, its entry newer than its events
        claimed.append(thread)

    read_on_from = []
    real_load_more = orch.load_more
    orch.load_more = lambda view, **kw: read_on_from.append(view.head.seq) or real_load_more(view, **kw)
    monkeypatch.setattr(orch.queue, "put_ready", put_then_wake_a_worker)
    orch.resume(job_id, "yes")
    monkeypatch.undo()
    claimed.pop(0).join(5)
    (claim,) = claimed
    assert claim is not None and claim.job_id == job_id and claim.state.answers == ("yes",)
    # after its wait it checked only the resume's line, not again the events it had read before it
    assert read_on_from == [len(orch.load(job_id).events) - 2]


def test_an_append_decided_from_a_line_that_was_replaced_at_the_same_position_is_refused(orch) -> None:
    """A claimer may read a submit's line before its fsync. If that fsync failed, the line was cut
    back, and another submit of the same id took its place, the claim would not chain: refused."""
    from orchestrator.errors import ConcurrencyError

    job_id = orch.submit("t.echo", "first")
    view = orch.load(job_id)  # read before the line's fsync, say
    path = orch.store.path(job_id)
    path.write_bytes(b"")  # the failed fsync's cut-back
    (orch.settings.state_dir / "heads" / job_id).unlink()
    again = Orchestrator(base_path=orch.settings.base_path, project_id=orch.project_id, keyring=orch.keyring,
                         clock=lambda: orch.clock() + 1)
    again.append(None, job_id, [("job_submitted", view.stream.records[0]["data"])])  # same id, other line
    replaced = path.read_bytes()
    with pytest.raises(ConcurrencyError):
        orch.append(view, job_id, [("job_cancelled", {"reason": "decided from the first line"})])
    assert path.read_bytes() == replaced and orch.load(job_id).ok


def test_announcing_leaves_no_entry_behind_for_a_job_a_fast_worker_already_claimed(orch, index_kind: str) -> None:
    if index_kind == "memory":
        orch.queue = MemoryQueueIndex()
    job_id = orch.submit("t.echo", "fast")
    (entry,) = orch.queue.ready()
    claim = Worker(orch, WorkerSettings(worker_id="w-fast")).claim()  # before the submitter's announcement
    assert claim is not None and claim.view.job_id == job_id and orch.queue.ready() == []
    orch.queue.announce(entry)  # the submitter's announcement, late
    assert orch.queue.ready() == []  # no stale entry for the next claim to read and drop


def test_stale_recovery_puts_back_the_ready_entry_of_a_queued_job_a_crash_left_in_running(orch) -> None:
    worker = Worker(orch, WorkerSettings(worker_id="w-heal"))
    job_id = orch.submit("t.echo", "lost entry")
    worker.queue.ensure_built(orch)  # built: no rebuild will find the job for us
    (entry,) = orch.queue.ready()
    orch.queue.drop_ready(entry)  # dropped as stale after a clock step...
    orch.queue.put_running(job_id)  # ...while a crash had left a running entry, which hid it from announce
    assert worker.recover_stale(orch.clock()) == [] and orch.queue.running() == []
    assert [e.job_id for e in orch.queue.ready()] == [job_id]
    assert worker.claim() is not None


def test_stale_recovery_keeps_the_running_entry_of_a_claim_being_written(orch) -> None:
    worker = Worker(orch, WorkerSettings(worker_id="w-keep"))
    job_id = orch.submit("t.echo", "claim in flight")
    worker.queue.ensure_built(orch)
    orch.queue.put_running(job_id, 1)  # another worker's claim (epoch 1): its entry first, its event next
    orch.queue.put_running(job_id, 0)  # a left-over of no run at all
    worker.recover_stale(orch.clock())
    assert orch.queue.running_entries() == [(job_id, 1)]
