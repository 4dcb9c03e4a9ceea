"""``verify`` of a project its workers and operators are writing to: what it reads first (the audit log's entries,
the store's index of streams, the list of jobs) is older than the jobs it reads after, and an action may be between
its event and its audit entry. Neither is a warning (nor a problem): what disagrees is read again before it is
reported, and an action in flight is waited for. Until 2026-12-07 a verify while 3 workers ran gave up to 60
warnings, ``STREAM_INDEX_STALE`` ("a derived index, changed by hand") and ``AUDIT_ENTRY_MISSING``. A real edit is
still reported (``tests/integration/test_pg_stream_index.py``, ``test_audit_healing.py``; and below)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, faults
from orchestrator.integrity import STREAM_INDEX_STALE, verify_project
from orchestrator.signing import new_seed

from backends import BACKENDS, orchestrator_on
from helpers import after_first_call, read_while_an_action_is_in_flight


@pytest.fixture(params=BACKENDS)
def orch(request: pytest.FixtureRequest, base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orchestrator]:
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    with orchestrator_on(request.param, base, keyring=None) as made:
        yield made
    faults.disarm_all()


def test_an_audited_action_between_verifys_first_reads_and_its_job_read_gives_no_warning(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit log is read first (its entries), then (PostgreSQL) the rows of ``orch_streams``, then each job: a
    cancel in between is in the job's events and in neither of those, nor in the audit log's row."""
    first, job = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(first, "before the verify")
    # read right after the audit log's entries, on every store (files keep no index of streams: None)
    after_first_call(monkeypatch, orch.store, "indexed_heads", lambda: orch.cancel(job, "while verify reads"))
    report = verify_project(orch)
    assert report.ok and report.warnings == [], (report.problems, report.warnings)
    assert orch.status(job).state == "cancelled"


def test_a_job_submitted_and_audited_after_verify_listed_the_jobs_is_no_problem(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The jobs are listed before the audit log is read: an entry naming a job the list does not hold was
    ``AUDIT_EVENT_MISSING``, a problem (exit 7), of a job submitted and cancelled in between."""
    orch.submit("t.echo", {})
    made: list[str] = []

    def submit_and_cancel() -> None:
        made.append(orch.submit("t.echo", {"late": True}))
        orch.cancel(made[-1], "between the listing and the audit log's read")

    after_first_call(monkeypatch, orch.store, "job_ids", submit_and_cancel)
    report = verify_project(orch)
    assert report.ok and report.warnings == [], (report.problems, report.warnings)
    assert report.streams == 3  # the two jobs and the audit log


def test_an_action_between_its_event_and_its_entry_is_waited_for_not_reported_missing(orch: Orchestrator) -> None:
    """The writer holds the job's pending lock from before its event until after its entry: verify, finding the
    entry missing after it read the log's tail again, waits for that lock, then reads the tail once more."""
    job = orch.submit("t.echo", {})
    report, took = read_while_an_action_is_in_flight(lambda: orch.cancel(job, "in flight"), lambda: verify_project(orch))
    assert report.ok and report.warnings == [], (report.problems, report.warnings)
    assert took >= 0.5, "it waited for the action"


def test_an_entry_really_missing_is_still_reported(orch: Orchestrator) -> None:
    """An event whose writer died before its entry (its lock gone with it) is reported after the second look."""
    job = orch.submit("t.echo", {})
    faults.arm("append.after_event", lambda: (_ for _ in ()).throw(RuntimeError("the writer dies")))
    with pytest.raises(RuntimeError):
        orch.cancel(job, "its writer dies")
    report = verify_project(orch)
    assert report.ok and [(w.stream, w.code) for w in report.warnings] == [(job, "AUDIT_ENTRY_MISSING")]


def test_a_row_changed_by_hand_on_a_live_project_is_still_reported(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    if orch.store.indexed_heads() is None:
        pytest.skip("only PostgreSQL keeps an index of streams")
    from orchestrator.store.postgres import connect

    job, other = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(job, "two events")
    with connect(orch.store.url, autocommit=True) as admin:
        admin.execute("UPDATE orch_streams SET seq = 1 WHERE project = %s AND stream = %s", (orch.store.project, job))
    after_first_call(monkeypatch, orch.store, "indexed_heads", lambda: orch.cancel(other, "meanwhile"))
    report = verify_project(orch)
    assert [(w.stream, w.code) for w in report.warnings] == [(job, STREAM_INDEX_STALE)], report.warnings


# -- a queue index entry (INDEX_ENTRY_MISSING): on PostgreSQL too since 2026-12-07 ----------------------------------

def delete_entry(orch: Orchestrator, job: str) -> None:
    """Delete the job's ready or running entry by hand: a file of ``index/``, or its row."""
    if orch.store.indexed_heads() is None:
        [entry] = [p for folder in (orch.queue.ready_dir, orch.queue.running_dir) for p in folder.iterdir()
                   if job in p.name]
        entry.unlink()
        return
    from orchestrator.store.postgres import connect

    with connect(orch.store.url, autocommit=True) as admin:
        for table in ("orch_ready", "orch_running"):
            admin.execute(f"DELETE FROM {table} WHERE project = %s AND job_id = %s", (orch.store.project, job))


def rebuild_as_told(orch: Orchestrator, message: str) -> None:
    """Do what the warning says makes the next worker rebuild the index."""
    if orch.store.indexed_heads() is None:
        built = message.split(", remove ")[1].split(" and the next worker")[0]
        Path(built).unlink()
        return
    from orchestrator.store.postgres import connect

    statement = message.split("(`")[-1].split("`)")[0]
    assert statement.startswith("DELETE FROM orch_aux WHERE project = "), message
    with connect(orch.store.url, autocommit=True) as admin:
        assert admin.execute(statement).rowcount == 1
    time.sleep(1.1)  # a worker trusts a "built" it saw in the last second (``BUILT_RECHECK_SECONDS``)


def test_a_ready_entry_deleted_by_hand_is_reported_on_every_store_and_the_rebuild_it_names_runs_the_job(
        orch: Orchestrator) -> None:
    """On PostgreSQL ``verify`` did not look at ``orch_ready`` (until 2026-12-07): a queued job whose row was deleted
    was run by no worker and reported by nothing."""
    job = orch.submit("t.echo", 0)
    delete_entry(orch, job)
    report = verify_project(orch)
    assert report.ok and [(w.code, w.stream) for w in report.warnings] == [("INDEX_ENTRY_MISSING", job)]
    message = report.warnings[0].message
    assert "is queued but has no " in message and ("orch_ready" in message or "index/ready/" in message), message
    assert orch.worker(worker_id="w").run_once() is None  # no worker runs it: what the warning says
    rebuild_as_told(orch, message)
    ran = orch.worker(worker_id="w2").run_once()
    assert ran is not None and (ran.job_id, ran.state) == (job, "succeeded") and not verify_project(orch).warnings


def test_a_running_entry_deleted_by_hand_is_reported_on_every_store(orch: Orchestrator) -> None:
    from orchestrator.worker import Worker, WorkerSettings

    job = orch.submit("t.echo", 0)
    assert Worker(orch, WorkerSettings(worker_id="w-dead", lease_seconds=1)).claim() is not None  # its worker dies
    assert not verify_project(orch).warnings
    delete_entry(orch, job)
    report = verify_project(orch, job)
    assert [(w.code, w.stream) for w in report.warnings] == [("INDEX_ENTRY_MISSING", job)]
    assert "is running but has no " in report.warnings[0].message


def test_a_job_claimed_between_verifys_read_and_its_look_at_the_index_gives_no_warning(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim drops the ready entry (on PostgreSQL in its own transaction) after verify read the job queued: the
    job is read again, and grew."""
    job = orch.submit("t.echo", 0)
    real = type(orch.queue).holding

    def claimed_first(index: Any, states: Any) -> set[str]:  # verify's look at the entries of the jobs it read
        orch.worker(worker_id="w").run_once()
        return real(index, states)

    monkeypatch.setattr(type(orch.queue), "holding", claimed_first)
    report = verify_project(orch)
    assert orch.status(job).state == "succeeded" and report.ok and not report.warnings, report.warnings


def test_an_entry_a_claimer_drops_and_puts_back_while_verify_looks_gives_no_warning(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claimer that met an imported job before its lines drops its entry, then finds the lines and puts it back
    (``drop_orphan_ready``): verify's first look may fall in between, and the job's history does not grow. The entry
    is looked at again after that read."""
    from orchestrator.queue import ReadyEntry

    job = orch.submit("t.echo", 0)
    entry = ReadyEntry.for_state(orch.load(job).state)
    real = type(orch.queue).holding
    first: list[set[str]] = []

    def dropped_meanwhile(index: Any, states: Any) -> set[str]:  # verify's first look (PostgreSQL's second too)
        if first:
            return real(index, states)
        orch.queue.drop_ready(entry)
        first.append(real(index, states))
        orch.queue.put_ready(entry)
        return first[-1]

    monkeypatch.setattr(type(orch.queue), "holding", dropped_meanwhile)
    report = verify_project(orch)
    assert first == [set()] and report.ok and not report.warnings, report.warnings
