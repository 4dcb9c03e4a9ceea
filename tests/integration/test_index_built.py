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


@pytest.mark.parametrize("made_again_by", [None, "a submit", "a waiting worker"])
def test_a_ready_folder_deleted_by_hand_is_rebuilt_even_after_a_new_entry_or_a_watch_made_it_again(
        orch: Orchestrator, made_again_by: str | None) -> None:
    """``index/ready/`` is a cache (README, ADR): a worker that finds it gone, or made anew without the jobs it held
    (by the next submit's entry, or by an idle worker's watch), rebuilds the index. Before: ``built`` alone said
    built, the folder read as empty, and the job stayed queued for ever (``worker --once`` exit 75)."""
    lost = orch.submit("t.echo", 0)
    shutil.rmtree(orch.queue.ready_dir)
    later = []
    if made_again_by == "a submit":
        later.append(orch.submit("t.echo", 1))
    elif made_again_by == "a waiting worker":
        orch.queue.wait(0)
        orch.queue.close()
        assert orch.queue.ready_dir.is_dir()
    assert not orch.queue.is_built()
    worker = Worker(orch, WorkerSettings(worker_id="w-ready"))
    assert worker.run(max_jobs=3, idle_exit=True) == 1 + len(later)
    assert {orch.status(j).state for j in [lost, *later]} == {"succeeded"}
    assert orch.queue.is_built()


@pytest.mark.parametrize("made_again_by", [None, "a claim"])
def test_a_running_folder_deleted_by_hand_is_rebuilt_so_a_dead_workers_job_is_recovered(
        orch: Orchestrator, made_again_by: str | None) -> None:
    """``index/running/`` is what stale recovery lists: deleted, it is rebuilt from the events (a claim made since
    puts its own entry in a new folder, unmarked). Before: no running entry, the job running for ever."""
    dead = orch.submit("t.echo", 0)
    claimed = Worker(orch, WorkerSettings(worker_id="w-dead", lease_seconds=1)).claim()  # its worker then dies
    assert claimed is not None and claimed.job_id == dead
    shutil.rmtree(orch.queue.running_dir)
    if made_again_by == "a claim":
        orch.submit("t.echo", 1)
        assert Worker(orch, WorkerSettings(worker_id="w-other")).claim() is not None
        assert orch.queue.running_dir.is_dir()
    rescuer = Worker(orch, WorkerSettings(worker_id="w-rescuer"))
    assert rescuer.recover_stale(now=orch.clock() + 5) == [dead]
    assert orch.status(dead).state == "queued"


def test_a_folder_deleted_while_the_index_is_rebuilt_leaves_it_to_rebuild_again(orch: Orchestrator) -> None:
    """A rebuild marks the folders before its scan: one removed during the scan (its jobs' entries with it) takes
    its mark along, so the index is not called built over the entries it lost."""
    from orchestrator import faults

    jobs = [orch.submit("t.echo", i) for i in range(2)]
    (orch.queue.root / "built").unlink()
    removed: list[bool] = []

    def remove_ready() -> None:
        shutil.rmtree(orch.queue.ready_dir)
        removed.append(True)

    faults.arm("queue.rebuild.each_job", remove_ready, nth=2)  # the first job's entry goes with the folder
    try:
        orch.queue.ensure_built(orch)
    finally:
        faults.disarm_all()
    assert removed and not orch.queue.is_built() and len(orch.queue.ready()) == 1
    orch.queue.ensure_built(orch)
    assert orch.queue.is_built() and sorted(e.job_id for e in orch.queue.ready()) == sorted(jobs)


def entry_of(orch: Orchestrator, job_id: str) -> Path:
    """The one index entry of ``job_id`` (ready or running)."""
    [found] = [p for folder in (orch.queue.ready_dir, orch.queue.running_dir) for p in folder.iterdir()
               if job_id in p.name]
    return found


def test_verify_warns_of_a_queued_job_whose_ready_entry_was_deleted_and_removing_built_gets_it_run(
        orch: Orchestrator) -> None:
    """A single entry is not a folder: nothing marks it, and no worker looks for it (that would be a scan of every
    job). ``verify``, which reads every job anyway, names the job and the fix; exit 0, the events are intact."""
    job = orch.submit("t.echo", 0)
    entry_of(orch, job).unlink()
    report = orch.verify()
    assert report.ok and [(w.code, w.stream) for w in report.warnings] == [("INDEX_ENTRY_MISSING", job)]
    built = orch.queue.root / "built"
    assert "is queued but has no entry in index/ready/" in report.warnings[0].message
    assert f"remove {built}" in report.warnings[0].message
    assert orch.worker(worker_id="w").run_once() is None  # no worker runs it: what the warning says
    built.unlink()
    assert not orch.verify().warnings  # an index to rebuild lacks nothing yet
    ran = orch.worker(worker_id="w2").run_once()
    assert ran is not None and (ran.job_id, ran.state) == (job, "succeeded") and not orch.verify().warnings


def test_a_missing_entry_of_a_job_whose_history_may_have_been_cut_says_to_compare_with_an_anchor_first(
        orch: Orchestrator) -> None:
    """A finished job whose last event and head record were removed reads as running, with no entry in
    index/running/ (it was rightly dropped when the job ended): the same warning as an entry deleted by hand. Its
    advice puts the anchor and the audit log before the rebuild, which would recover the job and run it again."""
    job = orch.submit("t.echo", 0)
    ran = orch.worker(worker_id="w").run_once()
    assert ran is not None and ran.state == "succeeded"
    path = orch.store.path(job)
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().splitlines()[:-1]))  # job_succeeded cut
    (orch.settings.state_dir / "heads" / job).unlink()
    report = orch.verify(job)
    assert report.ok and [(w.code, w.stream) for w in report.warnings] == [("INDEX_ENTRY_MISSING", job)]
    message = report.warnings[0].message
    assert "is running but has no entry in index/running/" in message
    assert "verify --against" in message and "audit-timeline --job-id" in message
    assert "cut" in message and "again" in message
    assert message.index("verify --against") < message.index("remove ")


def test_verify_warns_of_a_running_job_whose_running_entry_was_deleted_and_removing_built_gets_it_recovered(
        orch: Orchestrator) -> None:
    job = orch.submit("t.echo", 0)
    assert Worker(orch, WorkerSettings(worker_id="w-dead", lease_seconds=1)).claim() is not None  # its worker dies
    entry_of(orch, job).unlink()
    report = orch.verify(job)
    assert [(w.code, w.stream) for w in report.warnings] == [("INDEX_ENTRY_MISSING", job)]
    assert "is running but has no entry in index/running/" in report.warnings[0].message
    later = orch.clock() + 5
    assert Worker(orch, WorkerSettings(worker_id="w1")).recover_stale(now=later) == []
    (orch.queue.root / "built").unlink()
    assert Worker(orch, WorkerSettings(worker_id="w2")).recover_stale(now=later) == [job]


def test_verify_says_nothing_of_a_job_that_moved_on_while_its_entry_was_looked_at(orch: Orchestrator,
                                                                                monkeypatch) -> None:
    """A job claimed (or finished) between verify's read and its look at the entry has dropped the entry of the state
    that was read: the job is read again, and an entry is missing only if its history did not grow meanwhile."""
    from orchestrator.store.file_queue import FileQueueIndex

    job = orch.submit("t.echo", 0)
    real = FileQueueIndex.holds_entry

    def claimed_first(index, s):  # noqa: ANN001
        orch.worker(worker_id="w").run_once()
        return real(index, s)

    monkeypatch.setattr(FileQueueIndex, "holds_entry", claimed_first)
    report = orch.verify()
    assert orch.status(job).state == "succeeded" and report.ok and not report.warnings
