"""A statement the server cancels (``statement_timeout``, ``lock_timeout``, set for the role, the database or in the
URL's ``options``; an administrator's ``pg_cancel_backend``) is a storage error that may pass: a looping worker logs
it, waits and goes on, as after a lost connection, and a command run once exits 10 saying what happened. Nothing of
a cancelled append stays, and the audit entry of events already committed is never what a timeout cancels.

Each test has a database of its own, so that a table it locks keeps no other test waiting."""
from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator
from orchestrator.store.postgres import connect
from orchestrator.worker import Worker, WorkerSettings

from backends import scratch_database, timing_out
from helpers import wait_until

pytestmark = pytest.mark.postgres

PROJECT = "p"


@pytest.fixture
def scratch() -> Iterator[str]:
    """The URL of a new, migrated database, dropped afterwards."""
    with scratch_database() as url:
        yield url


@contextlib.contextmanager
def held(url: str, statement: str, params: tuple[Any, ...] = (), *, for_seconds: float) -> Iterator[None]:
    """A lock ``statement`` takes, in a transaction of another session, released after ``for_seconds`` (or at the
    block's end, whichever comes first)."""
    holder = connect(url)
    holder.execute(statement, params)
    lock = threading.Lock()

    def release() -> None:
        with lock:
            if not holder.closed:
                holder.rollback()
                holder.close()

    timer = threading.Timer(for_seconds, release)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        release()


def event_types(orch: Orchestrator, job_id: str) -> list[str]:
    return [json.loads(s.raw)["type"] for s in orch.store.read(job_id)]


def run_in_thread(worker: Worker) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["done"] = worker.run(max_jobs=1)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="worker-under-test")
    thread.start()
    return thread, outcome


def test_a_looping_worker_waits_out_a_lock_timeout_in_its_claim_and_runs_the_job_once_the_lock_is_gone(
        scratch: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Until 2026-12-06 the worker exited 10 (``PostgreSQL error: canceling statement due to lock timeout``)."""
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=timing_out(scratch, lock_timeout="100ms"))
    job = orch.submit("t.echo", {"message": "hi"})
    worker = Worker(orch, WorkerSettings(worker_id="w1", retry_base_seconds=0.0), rng=random.Random(7))
    caplog.set_level(logging.WARNING)
    with held(scratch, "LOCK TABLE orch_ready IN ACCESS EXCLUSIVE MODE", for_seconds=1.0):
        thread, outcome = run_in_thread(worker)
        thread.join(30)
    assert not thread.is_alive()
    assert outcome == {"done": 1}, outcome
    assert event_types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]
    waits = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert waits and all("lock timeout" in w and "cancelled the statement" in w for w in waits), waits
    orch.store.close()


def test_a_looping_worker_whose_outcome_times_out_records_it_once_the_row_is_free_and_the_history_verifies(
        scratch: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A ``statement_timeout`` cancels the outcome's append while another session holds the job's row: nothing of it
    is written; the worker reads the job back, appends it again, and the job ends with one outcome."""
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT,
                        store_url=timing_out(scratch, statement_timeout="500"))
    started, release = tmp_path / "started.json", tmp_path / "release"
    job = orch.submit("t.wait", {"started": str(started), "release": str(release)})
    worker = Worker(orch, WorkerSettings(worker_id="w1", retry_base_seconds=0.0), rng=random.Random(7))
    caplog.set_level(logging.WARNING)
    thread, outcome = run_in_thread(worker)
    try:
        wait_until(started.exists, what="the handler to start")
        row = "SELECT 1 FROM orch_streams WHERE project = %s AND stream = %s FOR UPDATE"
        with held(scratch, row, (PROJECT, job), for_seconds=2.0):
            release.touch()
            thread.join(30)
    finally:
        release.touch()
        thread.join(30)
    assert outcome == {"done": 1}, outcome
    assert any("statement timeout" in r.getMessage() for r in caplog.records), "the outcome was never cancelled"
    assert event_types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


def test_a_command_run_once_whose_statement_times_out_exits_10_saying_so_and_writes_nothing(
        scratch: str, tmp_path: Path) -> None:
    env = {"BASE_PATH": str(tmp_path), "PROJECT_ID": PROJECT,
           "ORCH_STORE_URL": timing_out(scratch, lock_timeout="100ms")}
    with held(scratch, "LOCK TABLE orch_ready IN ACCESS EXCLUSIVE MODE", for_seconds=30.0):
        result = CliRunner().invoke(cli(), ["submit", "--kind", "t.echo", "--input", "{}", "--json"], env=env)
    assert result.exit_code == 10, result.output
    error = json.loads(result.stdout)
    assert error["error"] == "STORAGE_ERROR", error
    assert "PostgreSQL cancelled the statement: canceling statement due to lock timeout" in error["message"]
    assert "lock_timeout" in error["message"] and error["message"].endswith("nothing was written")
    listed = CliRunner().invoke(cli(), ["status", "--all", "--json"], env=env)
    assert listed.exit_code == 0 and json.loads(listed.stdout)["jobs"] == [], listed.output


def test_an_audited_action_waits_for_the_audit_log_past_a_lock_timeout_so_its_entry_is_never_left_out(
        scratch: str, tmp_path: Path) -> None:
    """The action's event commits first, then its audit entry waits for the audit log's row. A ``lock_timeout`` there
    left the event without its entry and said "nothing was written" (until 2026-12-06); the entry's transaction now
    waits under the store's own deadline only."""
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=timing_out(scratch, lock_timeout="100ms"))
    first, second = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(first, "the audit log's row is made")
    audit_row = "SELECT 1 FROM orch_streams WHERE project = %s AND stream = '@audit' FOR UPDATE"
    with held(scratch, audit_row, (PROJECT,), for_seconds=1.0):
        result = orch.cancel(second, "waits for the row")
    assert result.applied and result.state == "cancelled"
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    entries = [json.loads(s.raw) for s in orch.store.read("@audit")]
    assert [e["job_id"] for e in entries] == [first, second]
    orch.store.close()


def test_an_audit_entry_the_server_refuses_after_its_event_committed_says_the_event_stands_and_heal_writes_it(
        scratch: str, tmp_path: Path) -> None:
    """A server error in the entry's transaction (here a constraint added by hand; a full disk of the server, an
    administrator's cancel) comes after the event's commit: the entry not written, the event durable, not "nothing was
    written" (until 2026-12-06). ``audit heal`` writes it once it can, waiting for the audit log's row past a
    ``lock_timeout`` as the action's own entry does."""
    from orchestrator.audit import heal
    from orchestrator.errors import AuditEntryNotWrittenError

    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=timing_out(scratch, lock_timeout="100ms"))
    first, job = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(first, "the audit log's row is made")
    admin = connect(scratch, autocommit=True)
    try:
        admin.execute("ALTER TABLE orch_events ADD CONSTRAINT no_audit_entry CHECK (stream <> '@audit') NOT VALID")
        with pytest.raises(AuditEntryNotWrittenError) as caught:
            orch.cancel(job, "its entry is refused")
        assert "is durable" in caught.value.message and "audit heal" in caught.value.message
        assert "nothing was written" not in caught.value.message
        assert event_types(orch, job)[-1] == "job_cancelled"
        assert [w.code for w in orch.verify().warnings] == ["AUDIT_ENTRY_MISSING"]
        admin.execute("ALTER TABLE orch_events DROP CONSTRAINT no_audit_entry")
    finally:
        admin.close()
    audit_row = "SELECT 1 FROM orch_streams WHERE project = %s AND stream = '@audit' FOR UPDATE"
    with held(scratch, audit_row, (PROJECT,), for_seconds=1.0):
        heal(orch, [orch.load(job)])
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


def test_audit_heal_waits_for_the_audit_log_past_a_statement_timeout_as_an_actions_entry_does(
        scratch: str, tmp_path: Path) -> None:
    """An entry ``audit heal`` writes is alone on its session: no event's statement turned the server's
    statement_timeout off there (``pg_append._TIMEOUT_OFF``), so the entry's own transaction does
    (``_NO_SERVER_TIMEOUTS``), and its wait for the audit log's row is bounded by the store's deadline only."""
    from orchestrator.audit import heal

    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT,
                        store_url=timing_out(scratch, statement_timeout="200ms"))
    first, job = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(first, "the audit log's row is made")
    orch.append(orch.load(job), job, [("job_cancelled", {"reason": "no entry"})])  # as a crash before its entry
    assert [w.code for w in orch.verify().warnings] == ["AUDIT_ENTRY_MISSING"]
    with held(scratch, AUDIT_ROW, (PROJECT,), for_seconds=1.0):
        assert len(heal(orch, [orch.load(job)])) == 1
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


def cli() -> Any:
    from orchestrator.cli import cli as command

    return command


# -- transactions the server rolls back for a conflict: a deadlock (40P01), a serialization failure (40001) ---------
class Deadlock:
    """Another session that takes the lock ``first`` (a row the statement under test then waits for) and, once a
    session waits for it, the lock ``then`` (a row that statement holds): a real deadlock. Its victim is the statement
    under test, whose session looks for one after ``deadlock_timeout`` (1 s), where this session's is 60 s. Both
    locks are then held ``hold_for`` seconds more, and rolled back."""

    def __init__(self, url: str, first: str, then: str, params: tuple[Any, ...], hold_for: float = 0.5) -> None:
        self.holder = connect(url)
        if self.holder.execute("SELECT current_setting('is_superuser')").fetchone()[0] != "on":
            self.holder.close()
            pytest.skip("setting deadlock_timeout needs a superuser's session")
        self.holder.execute("SET LOCAL deadlock_timeout = '60s'")
        self.holder.execute(first, params)
        self.url, self.then, self.params, self.hold_for = url, then, params, hold_for
        self.done = threading.Event()
        self.formed = False
        self.thread = threading.Thread(target=self._close_the_cycle, name="deadlock-holder")
        self.thread.start()

    def _waited_for(self) -> bool:
        with connect(self.url, autocommit=True) as watcher:
            return bool(watcher.execute("SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                                        (self.holder.info.backend_pid,)).fetchone()[0])

    def _close_the_cycle(self) -> None:
        try:
            wait_until(self._waited_for, timeout=30, what="a session to wait for the first lock")
            self.holder.execute(self.then, self.params)  # returns once the other session was rolled back
            self.formed = True
            time.sleep(self.hold_for)
        finally:
            self.holder.rollback()
            self.holder.close()
            self.done.set()

    def __enter__(self) -> "Deadlock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(60)


HEAD_RECORD = "SELECT 1 FROM orch_aux WHERE project = %s AND area = 'heads' AND key = %s FOR UPDATE"
JOB_ROW = "SELECT 1 FROM orch_streams WHERE project = %s AND stream = %s FOR UPDATE"
AUDIT_HEAD = "SELECT 1 FROM orch_aux WHERE project = %s AND area = 'audit-head' AND key = 'audit' FOR UPDATE"
AUDIT_ROW = "SELECT 1 FROM orch_streams WHERE project = %s AND stream = '@audit' FOR UPDATE"


@pytest.mark.parametrize("store_tries", [None, 1], ids=["the-store-tries-again", "the-worker-waits-and-tries-again"])
def test_a_claim_the_server_rolls_back_for_a_deadlock_is_made_again_and_the_job_runs_once(
        scratch: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, store_tries: int | None) -> None:
    """The claim's statement waits for the job's head record, which a maintenance session holds while it waits for the
    job's row, which the claim holds: the server rolls the claim back (``deadlock detected``). Until 2026-12-07 that was
    a plain STORAGE_ERROR, and the looping worker exited 10. Now the store makes the call again (nothing of it stayed),
    and a worker whose store gave up waits and tries again, as after a lost connection."""
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    if store_tries is not None:
        orch.store.conflict_tries = store_tries
    job = orch.submit("t.echo", {"message": "hi"})
    worker = Worker(orch, WorkerSettings(worker_id="w1", retry_base_seconds=0.0), rng=random.Random(7))
    caplog.set_level(logging.WARNING)
    with Deadlock(scratch, HEAD_RECORD, JOB_ROW, (PROJECT, job)) as deadlock:
        thread, outcome = run_in_thread(worker)
        thread.join(30)
    assert deadlock.formed and not thread.is_alive()
    assert outcome == {"done": 1}, outcome
    said = "the store rolled back a transaction" if store_tries == 1 else "trying it again"  # the worker's, the store's
    tries = [r.getMessage() for r in caplog.records if "deadlock detected" in r.getMessage()]
    assert tries and all(said in t for t in tries), tries
    assert event_types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


@pytest.mark.parametrize("first, then, victim", [(HEAD_RECORD, JOB_ROW, "its event"),
                                                 (AUDIT_HEAD, AUDIT_ROW, "its audit entry")])
def test_an_audited_action_whose_event_or_entry_is_a_deadlocks_victim_is_applied_once_with_its_entry(
        scratch: str, tmp_path: Path, first: str, then: str, victim: str) -> None:
    """The event's statement rolled back wrote nothing: it is made again (it was STORAGE_ERROR, exit 10). The entry's
    transaction, rolled back after the event committed, is made again under the job's pending lock, which it still
    holds, so no heal writes it meanwhile (it was ``AuditEntryNotWrittenError``: the event durable, the entry left to
    ``audit heal``)."""
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    first_job, job = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(first_job, "the audit log's row and head record are made")
    with Deadlock(scratch, first, then, (PROJECT, job) if victim == "its event" else (PROJECT,)) as deadlock:
        result = orch.cancel(job, f"{victim} is rolled back once")
    assert deadlock.formed
    assert result.applied and result.state == "cancelled"
    assert event_types(orch, job) == ["job_submitted", "job_cancelled"]
    entries = [json.loads(s.raw) for s in orch.store.read("@audit")]
    assert [e["job_id"] for e in entries] == [first_job, job]
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


@contextlib.contextmanager
def updated_then_committed(url: str, statement: str, params: tuple[Any, ...], *, after: float) -> Iterator[None]:
    """A row ``statement`` updates in another session's transaction, committed after ``after`` seconds: a concurrent
    update, which a REPEATABLE READ transaction waiting for the row cannot follow (``could not serialize access``)."""
    holder = connect(url)
    holder.execute(statement, params)
    timer = threading.Timer(after, holder.commit)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        holder.close()


@pytest.mark.parametrize("row", ["the job's", "the audit log's"])
def test_an_audited_action_on_a_database_whose_default_isolation_is_repeatable_read_is_applied_once_with_its_entry(
        scratch: str, tmp_path: Path, row: str) -> None:
    """``default_transaction_isolation`` set to repeatable read or serializable (for the database, the role, the URL's
    options): a statement that waited for a row another session updated met a serialization failure, the event's
    (STORAGE_ERROR, exit 10) or, after the event committed, the entry's (``AuditEntryNotWrittenError``), until
    2026-12-07. The store's sessions now run read committed, which its statements are written for."""
    url = timing_out(scratch, default_transaction_isolation="repeatable\\ read")
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=url)
    first_job, job = orch.submit("t.echo", {}), orch.submit("t.echo", {})
    orch.cancel(first_job, "the audit log's row is made")
    stream = job if row == "the job's" else "@audit"
    touch = "UPDATE orch_streams SET seq = seq WHERE project = %s AND stream = %s"
    with updated_then_committed(scratch, touch, (PROJECT, stream), after=1.0):
        result = orch.cancel(job, f"waits for {row} row")
    assert result.applied and result.state == "cancelled"
    entries = [json.loads(s.raw) for s in orch.store.read("@audit")]
    assert [e["job_id"] for e in entries] == [first_job, job]
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()
