"""An ``import`` into a project whose workers run: no imported job is lost from the queue index, nor claimed or
recovered before all of its lines are in, on either backend.

An imported job's entry is put once its lines are there, and carries the job's own time, older than
``ORPHAN_ENTRY_GRACE``: until 2026-12-07 it was put before the lines too, and a worker that met it then found no job
(and dropped it as an orphan's: a worker that drops one looks once more for its lines), or found the job's first
chunk, and claimed it (docs/postgres.md, "Claiming across machines")."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import jobstates as js
import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import BACKENDS, TestPostgresStore, unique_project
from orchestrator import Orchestrator
from orchestrator.clock import now
from orchestrator.errors import JobNotFoundError
from orchestrator.signing import Keyring
from orchestrator.transfer import export_project, import_project

HOUR = 3600.0  # how long after the export the import runs: its jobs' entries are far older than any grace


@pytest.fixture(params=BACKENDS)
def later(request: Any, base: Path, keyring: Keyring) -> Iterator[Callable[[str], Orchestrator]]:
    """A destination of a project's bundle on each backend, whose clock is an hour ahead of the source's."""
    stores: list[TestPostgresStore] = []

    def make(project: str) -> Orchestrator:
        def clock() -> float:
            return now() + HOUR

        if request.param == "file":
            return Orchestrator(base_path=base / "dst", project_id=project, keyring=keyring, clock=clock)
        stores.append(TestPostgresStore(project))
        return Orchestrator(base_path=base / "dst", project_id=project, keyring=keyring, store=stores[-1],
                            clock=clock)

    yield make
    for store in stores:
        store.close()


def bundle(source: Orchestrator) -> bytes:
    buf = io.BytesIO()
    export_project(source, buf)
    return buf.getvalue()


def before_the_lines_land(dest: Orchestrator, job_id: str, meanwhile: Callable[[], object]) -> None:
    """Have ``meanwhile`` run once, just before the import appends ``job_id``'s lines (its entry already put)."""
    append = dest.store.append

    def slow_append(stream: str, *args: Any, **kwargs: Any) -> Any:
        if stream == job_id and not done:
            done.append(meanwhile())
        return append(stream, *args, **kwargs)

    done: list[object] = []
    dest.store.append = slow_append  # type: ignore[method-assign]


def test_a_worker_that_met_an_imported_jobs_entry_before_its_lines_still_claims_the_job(
        base: Path, keyring: Keyring, later: Callable[[str], Orchestrator]) -> None:
    from orchestrator.integrity import verify_project

    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = source.submit("t.echo", "imported")
    dest = later(source.project_id)
    worker = dest.worker()
    assert worker.run_once() is None  # the destination's index is built (empty) before the import
    before_the_lines_land(dest, job_id, worker.run_once)
    import_project(dest, io.BytesIO(bundle(source)))
    assert dest.status(job_id).state == "queued"
    report = verify_project(dest)
    assert report.ok and report.warnings == []
    ran = worker.run_once()
    assert ran is not None and ran.job_id == job_id


def test_a_worker_whose_stale_recovery_met_an_imported_running_jobs_entry_before_its_lines_still_recovers_it(
        base: Path, keyring: Keyring, later: Callable[[str], Orchestrator]) -> None:
    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = js.running(source, kind="t.echo", lease="2020-01-01T00:00:00.000000Z")  # its worker is long gone
    dest = later(source.project_id)
    worker = dest.worker()
    assert worker.run_once() is None
    before_the_lines_land(dest, job_id, lambda: worker.recover_stale(dest.clock() + worker.stale_watch.list_every))
    import_project(dest, io.BytesIO(bundle(source)))
    assert worker.recover_stale(dest.clock() + 2 * worker.stale_watch.list_every) == [job_id]


def read_just_before_the_lines_land(dest: Orchestrator, job_id: str, whole: bytes) -> None:
    """The next ``load`` of ``job_id`` finds no job, and the import runs before the reader acts on that (its lines
    land, its entries are put again): what a worker sees that reads the job an instant before the lines land."""
    load = dest.load

    def load_then_import(job: str, *args: Any, **kwargs: Any) -> Any:
        if job != job_id or done:
            return load(job, *args, **kwargs)
        done.append(import_project(dest, io.BytesIO(whole)))
        raise JobNotFoundError(f"job {job} not found")

    done: list[object] = []
    dest.load = load_then_import  # type: ignore[method-assign]


@pytest.mark.parametrize("state", ["queued", "running"])
def test_an_entry_taken_for_an_orphans_as_the_imported_lines_landed_is_put_back(
        base: Path, keyring: Keyring, later: Callable[[str], Orchestrator], state: str) -> None:
    """The import's second put comes before the worker's drop: the worker looks for the lines once more after it."""
    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = (source.submit("t.echo", "imported") if state == "queued"
              else js.running(source, kind="t.echo", lease="2020-01-01T00:00:00.000000Z"))
    dest = later(source.project_id)
    worker = dest.worker()
    assert worker.run_once() is None
    dest.queue.index_job(source.load(job_id).state)  # the import's first put, before its lines
    read_just_before_the_lines_land(dest, job_id, bundle(source))
    at = dest.clock() + worker.stale_watch.list_every
    if state == "queued":
        assert worker.claim(at) is None  # dropped as an orphan's, and put back
        ran = worker.run_once()
        assert ran is not None and ran.job_id == job_id
    else:
        assert worker.recover_stale(at) == []
        assert worker.recover_stale(at + worker.stale_watch.list_every) == [job_id]


class Crash(Exception):
    """The import process dying at a crash point."""


def test_an_import_that_died_between_the_lines_and_putting_the_entry_again_puts_it_when_run_again(
        base: Path, keyring: Keyring, later: Callable[[str], Orchestrator]) -> None:
    from orchestrator import faults

    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = source.submit("t.echo", "imported")
    whole = bundle(source)
    dest = later(source.project_id)
    worker = dest.worker()
    assert worker.run_once() is None

    def worker_then_crash_after_the_lines() -> None:
        assert worker.run_once() is None  # the entry dropped as an orphan's: no line yet
        faults.arm("import.after_chunk", lambda: (_ for _ in ()).throw(Crash()))

    before_the_lines_land(dest, job_id, worker_then_crash_after_the_lines)
    try:
        with pytest.raises(Crash):
            import_project(dest, io.BytesIO(whole))
    finally:
        faults.disarm_all()
    assert worker.run_once() is None  # the lines are there, the entry is not
    assert import_project(dest, io.BytesIO(whole))["written"] == 0
    ran = worker.run_once()
    assert ran is not None and ran.job_id == job_id


RETRY = {"error_code": "HANDLER_ERROR", "retry_at": "2020-01-01T00:00:00.000000Z"}  # queued again, due long ago


def queued_between_chunks(source: Orchestrator, final: str) -> str:
    """A job of 5 events (4 for ``final`` running) whose first 3, a chunk of ``CHUNK`` 3, leave it queued (submitted,
    claimed, failed to be retried), and whose last leave it ``final``; its worker's lease long expired."""
    job_id = source.submit("t.echo", "imported", max_attempts=5)
    js.claim(source, job_id, "run-1")
    js.finish(source, job_id, "job_failed", RETRY)
    js.claim(source, job_id, "run-2", lease="2020-01-01T00:00:00.000000Z")
    if final == "queued":
        js.finish(source, job_id, "job_failed", RETRY)
    elif final == "succeeded":
        js.finish(source, job_id, "job_succeeded", {"summary": "done"})
    return job_id


@pytest.mark.parametrize("final, index", [("queued", "built"), ("running", "built"), ("succeeded", "never built")])
def test_a_worker_running_between_the_chunks_of_an_imported_job_never_claims_it(
        base: Path, keyring: Keyring, later: Callable[[str], Orchestrator], final: str, index: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's lines land in chunks; between them it reads as queued. A worker there neither claims it nor
    recovers it: no entry of it is put before its last chunk, and an import into a project with no job marks the
    index built, so that a worker starting meanwhile does not rebuild it from the half-written job. Until
    2026-12-07 the worker claimed it (through the entry put before the lines, or the rebuild's), and the import
    ended IMPORT_CONFLICT, the job to run again."""
    from orchestrator import faults, transfer

    monkeypatch.setattr(transfer, "CHUNK", 3)
    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = queued_between_chunks(source, final)
    dest = later(source.project_id)
    worker = dest.worker()
    if index == "built":
        assert worker.run_once() is None
    met: list[object] = []

    def a_worker_between_the_chunks() -> None:
        assert len(dest.store.read(job_id)) == 3 and dest.status(job_id).state == "queued"
        met.append(worker.recover_stale(dest.clock() + worker.stale_watch.list_every))
        met.append(worker.run_once())

    faults.arm("import.after_chunk", a_worker_between_the_chunks)
    try:
        result = import_project(dest, io.BytesIO(bundle(source)))
    finally:
        faults.disarm_all()
    assert met == [[], None]
    assert result["written"] == len(source.store.read(job_id))
    assert [s.raw for s in dest.store.read(job_id)] == [s.raw for s in source.store.read(job_id)]
    if final == "queued":
        ran = worker.run_once()
        assert ran is not None and ran.job_id == job_id
    elif final == "running":
        assert worker.recover_stale(dest.clock() + 2 * worker.stale_watch.list_every) == [job_id]


@pytest.mark.parametrize("final", ["queued", "running"])
def test_an_import_that_died_between_the_chunks_of_a_job_leaves_it_to_no_worker_until_run_again(
        base: Path, keyring: Keyring, later: Callable[[str], Orchestrator], final: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The project holds the job's first lines, no entry and no head record of it: no worker claims or recovers it
    (the index marked built by the import, not rebuilt from them); the import run again writes the rest and puts
    its entries. ``verify`` warns of the missing entry, naming the import as a cause."""
    from orchestrator import faults, transfer
    from orchestrator.integrity import INDEX_ENTRY_MISSING, verify_project

    monkeypatch.setattr(transfer, "CHUNK", 3)
    source = Orchestrator(base_path=base / "src", project_id=unique_project("imp"), keyring=keyring)
    job_id = queued_between_chunks(source, final)
    whole = bundle(source)
    dest = later(source.project_id)
    faults.arm("import.after_chunk", lambda: (_ for _ in ()).throw(Crash()))
    try:
        with pytest.raises(Crash):
            import_project(dest, io.BytesIO(whole))
    finally:
        faults.disarm_all()
    assert len(dest.store.read(job_id)) == 3
    worker = dest.worker()
    assert worker.recover_stale(dest.clock() + worker.stale_watch.list_every) == []
    assert worker.run_once() is None
    warnings = [w.to_dict() for w in verify_project(dest).warnings]
    assert [w["code"] for w in warnings] == [INDEX_ENTRY_MISSING]
    assert "`orchestrator import` stopped" in warnings[0]["message"]
    assert import_project(dest, io.BytesIO(whole))["written"] == len(source.store.read(job_id)) - 3
    assert verify_project(dest).ok and verify_project(dest).warnings == []
    if final == "queued":
        ran = worker.run_once()
        assert ran is not None and ran.job_id == job_id
    else:
        assert worker.recover_stale(dest.clock() + 2 * worker.stale_watch.list_every) == [job_id]
