"""A job that becomes queued while a worker scans the ready index is still claimed.

Found by the W3 benchmark (resume -> final state): the resume writes the ready entry, a worker
scanning at that instant reads the job (still ``waiting_human``: the event is not written yet)
and drops the entry as stale; without a repair the resumed job stays queued with no entry.
"""
from __future__ import annotations

import pytest

import jobstates as js
from orchestrator.queue import FileQueueIndex, MemoryQueueIndex
from orchestrator.worker import Worker, WorkerSettings


@pytest.fixture(params=["file", "memory"])
def index_kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_a_resume_racing_a_claim_scan_leaves_the_job_claimable(orch, index_kind: str, monkeypatch) -> None:
    if index_kind == "memory":
        orch.queue = MemoryQueueIndex()
    assert isinstance(orch.queue, FileQueueIndex if index_kind == "file" else MemoryQueueIndex)
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
