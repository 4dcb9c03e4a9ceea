"""A project's ready index is complete from its first job on: the first worker claims without a scan.

The index is a cache rebuilt from the events when it is not marked built (``QueueIndex.rebuild``,
O(all jobs)). A project whose first job is submitted through the API has every job's entries from
the append hooks, so that submit marks it built. A project that already has jobs without an index
(an older version wrote them, an operator removed the index) is still rebuilt.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator
from orchestrator.queue import INDEX_DIR, QueueIndex
from orchestrator.signing import Keyring
from orchestrator.worker import Worker, WorkerSettings

from backends import BACKENDS, orchestrator_on


@pytest.fixture(params=BACKENDS)
def fresh(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


def no_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self, orch):  # noqa: ANN001
        raise AssertionError("the index was rebuilt: every job was loaded before the first claim")

    monkeypatch.setattr(QueueIndex, "rebuild", refuse)
    for sub in QueueIndex.__subclasses__():
        monkeypatch.setattr(sub, "rebuild", refuse, raising=False)


def test_the_first_submit_of_a_project_marks_its_index_built(fresh: Orchestrator, monkeypatch) -> None:
    assert not fresh.queue.is_built()
    ids = [fresh.submit("t.echo", i) for i in range(3)]
    assert fresh.queue.is_built()
    no_rebuild(monkeypatch)
    worker = Worker(Orchestrator(base_path=fresh.settings.base_path, project_id=fresh.project_id,
                                 keyring=fresh.keyring, store=fresh.store), WorkerSettings(worker_id="w-first"))
    assert worker.run(max_jobs=3, idle_exit=True) == 3
    assert {fresh.status(j).state for j in ids} == {"succeeded"}


def test_an_index_removed_from_a_project_with_jobs_is_rebuilt_not_marked_built(orch: Orchestrator) -> None:
    first = [orch.submit("t.echo", i) for i in range(2)]
    shutil.rmtree(orch.settings.state_dir / INDEX_DIR)
    later = Orchestrator(base_path=orch.settings.base_path, project_id=orch.project_id, keyring=orch.keyring)
    third = later.submit("t.echo", 2)  # the project has jobs: this submit must not call the index complete
    assert not later.queue.is_built()
    assert [e.job_id for e in later.queue.ready()] == [third]
    worker = Worker(later, WorkerSettings(worker_id="w-rebuild"))
    assert worker.run(max_jobs=3, idle_exit=True) == 3  # the rebuild found the two jobs the index lost
    assert {later.status(j).state for j in [*first, third]} == {"succeeded"}


@pytest.mark.parametrize("point", ["queue.after_put_ready", "store.append.after_write", "store.append.after_fsync",
                                   "append.after_head", "queue.after_append"])
@pytest.mark.parametrize("action", ["submit", "resume"])
def test_an_index_deleted_and_rebuilt_while_a_job_is_being_queued_still_holds_its_entry(
        orch: Orchestrator, point: str, action: str) -> None:
    """``index/`` is a cache that may be deleted at any time (SPEC): an operator removing it while a submit or a
    resume is between its ready entry and its announcement, and a worker rebuilding it at that moment, leave the
    job with its entry. The event is either seen by the rebuild, or the announcement finds its entry gone and
    puts it back."""
    import jobstates as js
    from orchestrator import faults

    earlier = orch.submit("t.echo", 0)
    waiting = js.waiting_human(orch) if action == "resume" else None
    rebuilder = Orchestrator(base_path=orch.settings.base_path, project_id=orch.project_id, keyring=orch.keyring)

    fired: list[str] = []

    def delete_and_rebuild() -> None:
        shutil.rmtree(orch.settings.state_dir / INDEX_DIR)
        rebuilder.queue.ensure_built(rebuilder)
        fired.append(point)

    faults.arm(point, delete_and_rebuild)
    try:
        if waiting is not None:
            orch.resume(waiting, "yes")
            job = waiting
        else:
            job = orch.submit("t.echo", 1)
    finally:
        faults.disarm_all()
    assert fired == [point]
    assert rebuilder.queue.is_built()
    assert sorted(e.job_id for e in rebuilder.queue.ready()) == sorted([earlier, job])
