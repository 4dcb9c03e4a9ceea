"""An audited action on PostgreSQL commits its events, then their audit entry (``pg_append.append_audited``). Once the
events are durable, whatever fails says so (``AuditEntryNotWrittenError``: the action stands, ``audit heal`` writes
the entry), never "nothing was written" nor "cannot connect"; the server's timeouts cannot be what fails; and a
process stalled past the store's deadline meanwhile is told its entry was not written, not that the log was cut.

Each test that changes the server's settings has a database of its own (``scratch_database``)."""
from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, audit, faults
from orchestrator.errors import (AuditEntryNotWrittenError, AuditEntryUnavailableError, OrchestratorError,
                                 StatementCancelledError, StorageUnavailableError)
from orchestrator.signing import new_seed
from orchestrator.store import pg_append, pg_connection
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.store.postgres import PostgresStore, connect
from orchestrator.worker import Worker, WorkerSettings

from backends import TestPostgresStore, drop_project, require_pg, scratch_database, timing_out, unique_project

pytestmark = pytest.mark.postgres

PROJECT = "p"


@pytest.fixture
def scratch() -> Iterator[str]:
    with scratch_database() as url:
        yield url


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    faults.disarm_all()


def event_types(orch: Orchestrator, job_id: str) -> list[str]:
    return [json.loads(s.raw)["type"] for s in orch.store.read(job_id)]


def entries_of(orch: Orchestrator, job_id: str) -> list[dict[str, Any]]:
    return [e for e in (json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)) if e["job_id"] == job_id]


def as_role(url: str, role: str) -> str:
    """``url`` with ``role`` as its user, and no password (the test server trusts 127.0.0.1)."""
    parts = urlsplit(url)
    host = parts.hostname if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
    netloc = f"{role}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
def role_with_a_3ms_statement_timeout(scratch: str) -> Iterator[str]:
    """The URL of a role of the scratch database whose sessions run with ``statement_timeout = '3ms'``
    (``ALTER ROLE ... SET``), as the bug hunt of 2026-12-07 ran its actions."""
    admin = connect(scratch, autocommit=True)
    if admin.execute("SELECT current_setting('is_superuser')").fetchone()[0] != "on":
        admin.close()
        pytest.skip("making a role needs a superuser's session")
    role = f"orch_r_{uuid.uuid4().hex[:10]}"
    admin.execute(f"CREATE ROLE {role} LOGIN")
    admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
    admin.execute(f"ALTER ROLE {role} SET statement_timeout = '3ms'")
    url = as_role(scratch, role)
    try:
        with connect(url, autocommit=True) as probe:
            if probe.execute("SHOW statement_timeout").fetchone()[0] != "3ms":
                pytest.skip("the role's settings do not apply to its sessions here")
    except OrchestratorError as exc:
        admin.close()
        pytest.skip(f"cannot connect as a new role without a password here: {exc.message}")
    try:
        yield url
    finally:
        admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
        admin.execute(f"DROP OWNED BY {role}")
        admin.execute(f"DROP ROLE {role}")
        admin.close()


# -- the server's statement_timeout cannot leave the events without their entry -----------------------------------
def test_actions_of_a_role_with_a_3ms_statement_timeout_never_leave_an_event_without_its_entry_nor_say_otherwise(
        scratch: str, role_with_a_3ms_statement_timeout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug hunt's probe: ~1 action in 60-180 left its event without its entry, and said "nothing was written" or
    "cannot connect" of it (the statements the role's timeout cancelled came after the events' COMMIT: the one that
    turned the timeouts off, a new connection's first, the unlock). Each action here is a command's: a store of its
    own. Cancelled before its event, an action says so and wrote nothing; once its event is written, it has its entry,
    whatever the action says."""
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    admin = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    jobs = [admin.submit("t.echo", {"n": i}) for i in range(400)]
    said: dict[str, str] = {}
    for job in jobs:
        orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=role_with_a_3ms_statement_timeout)
        try:
            orch.cancel(job, "by a role whose statements may take 3 ms")
            said[job] = "applied"
        except OrchestratorError as exc:
            said[job] = f"{type(exc).__name__}: {exc.message}"
        finally:
            orch.store.close()
    cancelled = [job for job in jobs if event_types(admin, job)[-1] == "job_cancelled"]
    without_entry = {job: said[job] for job in cancelled if len(entries_of(admin, job)) != 1}
    assert not without_entry, without_entry
    untrue = {job: said[job] for job in cancelled if said[job] != "applied" and (
        "nothing was written" in said[job] or "cannot connect" in said[job])}
    assert not untrue, untrue
    unsaid = {job: said[job] for job in jobs if job not in cancelled and "nothing was written" not in said[job]}
    assert not unsaid, unsaid
    report = admin.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings[:5])
    admin.store.close()


def test_a_statement_of_the_entry_slower_than_the_servers_statement_timeout_is_not_cancelled(
        scratch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The entry's first statement (which set the timeouts off for its transaction) ran under the session's
    statement_timeout itself, after the events' COMMIT: one slower than it (a loaded server; here ``pg_sleep``) was
    cancelled, and the event stood without its entry (until 2026-12-07). The events' own statement now sets it off
    for the session, so nothing after them is timed."""
    monkeypatch.setattr(pg_append, "_NO_SERVER_TIMEOUTS", "SELECT pg_sleep(0.4), set_config('lock_timeout', '0', true)")
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=timing_out(scratch, statement_timeout="150"))
    job = orch.submit("t.echo", {})
    result = orch.cancel(job, "its entry's first statement takes 0.4 s")
    assert result.applied and [e["data"]["action"] for e in entries_of(orch, job)] == ["cancel"]
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


def test_the_unlock_after_the_entry_is_not_cancelled_and_the_session_has_its_statement_timeout_back_after_it(
        scratch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unlock comes after the entry's COMMIT: cancelled there, the action was reported as not written though it
    was. It runs without the timeout too, and gives the session back the one its role, database or URL sets."""
    slow_unlock = "SELECT pg_advisory_unlock(%s), set_config('statement_timeout', NULL, false), pg_sleep(0.4)"
    monkeypatch.setattr(pg_append, "_UNLOCK", slow_unlock)
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=timing_out(scratch, statement_timeout="150"))
    job = orch.submit("t.echo", {})
    assert orch.cancel(job, "its unlock takes 0.4 s").applied
    assert len(entries_of(orch, job)) == 1
    idle = list(orch.store._idle)  # noqa: SLF001 - the connection the action used is back in the pool
    assert idle and all(conn.execute("SHOW statement_timeout").fetchone()[0] == "150ms" for conn in idle)
    orch.store.close()


def test_an_entry_whose_transaction_is_cancelled_once_after_the_events_is_appended_again_under_the_jobs_lock(
        scratch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that comes after the events' COMMIT (an administrator's ``pg_cancel_backend``, or the events' own
    statement_timeout firing as it ended, which the server reports on the next statement, "due to user request")
    rolls back the entry's transaction whole: it is appended again, as after a deadlock, before the pending lock goes
    (it was ``AuditEntryNotWrittenError``, the entry left to ``audit heal``)."""
    with connect(scratch, autocommit=True) as admin:
        admin.execute("CREATE SEQUENCE cancel_once")
    monkeypatch.setattr(pg_append, "_NO_SERVER_TIMEOUTS", (
        "SELECT set_config('lock_timeout', '0', true), "
        "CASE WHEN nextval('cancel_once') = 1 THEN pg_cancel_backend(pg_backend_pid()) END, pg_sleep(0.05)"))
    orch = Orchestrator(base_path=tmp_path, project_id=PROJECT, store_url=scratch)
    job = orch.submit("t.echo", {})
    assert orch.cancel(job, "its entry is cancelled once").applied
    assert event_types(orch, job) == ["job_submitted", "job_cancelled"]
    assert len(entries_of(orch, job)) == 1
    report = orch.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    orch.store.close()


def test_a_new_connection_whose_first_statement_the_server_cancels_is_a_cancelled_statement_not_cannot_connect(
        scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its session's first statement (``synchronous_commit`` and the isolation, ``pg_connection._SESSION``) cancelled
    by a role's statement_timeout said "cannot connect to PostgreSQL at ... (canceling statement due to user
    request)", of a server that had just accepted the connection."""
    monkeypatch.setattr(pg_connection, "_SESSION", "SELECT pg_sleep(0.4), 'on', 'off', 'origin'")
    with pytest.raises(StatementCancelledError) as caught:
        connect(timing_out(scratch, statement_timeout="150"), autocommit=True)
    assert "PostgreSQL cancelled the statement: canceling statement due to statement timeout" in caught.value.message
    assert "cannot connect" not in caught.value.message


# -- whatever fails once the events are written says they stand -----------------------------------------------------
def test_an_error_between_the_events_and_their_entry_says_the_events_stand_not_that_nothing_was_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What runs between the events and their entry (the queue index's step) may reach the store, and fail as a call
    does: "PostgreSQL cancelled the statement: ...; nothing was written", exit 10, of a resume that was written."""
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    store = TestPostgresStore()
    orch = Orchestrator(base_path=tmp_path, project_id=store.project, store=store)
    job = orch.submit("t.echo", {})
    cancelled = StatementCancelledError("PostgreSQL cancelled the statement: canceling statement due to statement "
                                        "timeout (...); nothing was written")
    faults.arm("append.after_event", lambda: (_ for _ in ()).throw(cancelled))
    try:
        with pytest.raises(AuditEntryUnavailableError) as caught:
            orch.cancel(job, "between fails")
        assert isinstance(caught.value, StorageUnavailableError), "a worker waits it out, as the error it was"
        assert "is durable" in caught.value.message and "audit heal" in caught.value.message
        assert "nothing was written" not in caught.value.message
        assert event_types(orch, job)[-1] == "job_cancelled" and entries_of(orch, job) == []
        assert orch.cancel(job, "between fails").already_applied  # the next command heals it
        assert len(entries_of(orch, job)) == 1
    finally:
        store.close()


@pytest.mark.parametrize("path", ["pipelined", "one-by-one"])
def test_an_entry_builder_that_fails_as_a_store_call_leaves_the_events_and_says_so(path: str) -> None:
    """The entry's ``build`` (``audit.refuse_cut``'s read of the log's head record, until 2026-12-07 on another
    connection) raising a store's error after the events committed: ``AuditEntryNotWrittenError``, of the same kind
    (it may pass), the lock let go. One by one: the events' head not the one given (here none is), as when the job's
    row in ``orch_streams`` was changed by hand."""
    store = TestPostgresStore()

    def failing(_head: Any) -> list[bytes]:
        raise StatementCancelledError("PostgreSQL cancelled the statement: (...); nothing was written")

    given = {"expected_seq": 0, "expected_last": b""} if path == "pipelined" else {}
    try:
        with pytest.raises(AuditEntryUnavailableError) as caught:
            store.append_audited("job-1", lambda h: [b'{"n":1}'], failing, lock="audit-01", **given)
        assert "nothing was written" not in caught.value.message
        assert [s.raw for s in store.read("job-1")] == [b'{"n":1}'] and store.read(AUDIT_STREAM) == []
        with store.exclusive("audit-01"):  # free again
            pass
        assert store.append(AUDIT_STREAM, lambda h: [b'{"entry":1}']).seq == 1
    finally:
        store.close()


# -- a process stalled past the deadline after its events is not told that the log was cut ------------------------
@pytest.fixture
def two_machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Orchestrator, Orchestrator]]:
    """One project seen from a machine whose calls are cut after 1 s (``ORCH_PG_DEADLINE_SECONDS=1``) and from
    another one, with the default deadline."""
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    url, project = require_pg(), unique_project()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    slow = Orchestrator(base_path=tmp_path / "a", project_id=project,
                        store=PostgresStore(url, project, deadline_seconds=1.0))
    other = Orchestrator(base_path=tmp_path / "b", project_id=project, store=PostgresStore(url, project))
    try:
        yield slow, other
    finally:
        slow.store.close()
        other.store.close()
        drop_project(url, project)


def stalled_after_its_events(other_action: Any) -> threading.Thread:
    """Arm ``pg.append.after_commit`` (an audited append's events committed, its entry's transaction holding the
    audit log's row) to stall this process 2.5 s, past its deadline: the watchdog cuts its connection and the server
    lets the row go; meanwhile ``other_action`` (another machine's) appends its entry. Returns the thread running it."""
    stalled = threading.Event()
    faults.arm("pg.append.after_commit", lambda: (stalled.set(), time.sleep(2.5)))

    def other() -> None:
        stalled.wait(30)
        other_action()

    thread = threading.Thread(target=other, name="another-machine")
    thread.start()
    return thread


def test_an_action_stalled_past_the_deadline_after_its_event_is_told_its_entry_was_not_written_not_that_the_log_was_cut(
        two_machines: tuple[Orchestrator, Orchestrator]) -> None:
    """The bug hunt's repro_c: the stalled action built its entry on the head read under the lock it had lost, and
    ``audit.refuse_cut`` compared it with the newer head record another machine had written since: INTEGRITY_ERROR,
    exit 7, "restore the audit log from a backup", of a log ``verify`` found whole."""
    slow, other = two_machines
    first, second = slow.submit("t.echo", {"n": 1}), slow.submit("t.echo", {"n": 2})
    done: dict[str, Any] = {}
    thread = stalled_after_its_events(lambda: done.update(other=other.cancel(second, "from another machine")))
    try:
        with pytest.raises(AuditEntryNotWrittenError) as caught:
            slow.cancel(first, "stalled")
    finally:
        thread.join(30)
    assert isinstance(caught.value, AuditEntryUnavailableError), caught.value
    assert caught.value.exit_code == 10 and "ORCH_PG_DEADLINE_SECONDS" in caught.value.message
    assert "is durable" in caught.value.message and "audit heal" in caught.value.message
    assert "head record" not in caught.value.message
    assert done["other"].applied
    report = other.verify()
    assert report.ok and [(w.stream, w.code) for w in report.warnings] == [(first, "AUDIT_ENTRY_MISSING")]
    audit.heal(other, [other.load(first)])
    report = other.verify()
    assert report.ok and not report.warnings, (report.problems, report.warnings)


def test_a_stale_recovery_stalled_past_the_deadline_is_waited_out_by_the_worker_not_a_cut_log_that_stops_it(
        two_machines: tuple[Orchestrator, Orchestrator]) -> None:
    """The bug hunt's repro_c2: the same for a worker's stale recovery, where the false INTEGRITY_ERROR stopped the
    worker. The recovery stands; its entry not written may pass (the worker waits, as for a lost connection, and goes
    on: it runs the job); the entry is left to ``audit heal``."""
    slow, other = two_machines
    job, unrelated = slow.submit("t.echo", {"n": 1}), slow.submit("t.echo", {"n": 2})
    assert Worker(slow, WorkerSettings(worker_id="dead", lease_seconds=1)).claim() is not None  # and dies
    time.sleep(1.2)
    worker = Worker(slow, WorkerSettings(worker_id="w1", handler_process="per-run", retry_base_seconds=0),
                    rng=random.Random(7))
    thread = stalled_after_its_events(lambda: other.cancel(unrelated, "from another machine"))
    try:
        result = worker.run_once()
    finally:
        thread.join(30)
    assert result is not None and result.job_id == job and result.outcome == "succeeded", result
    assert event_types(slow, job) == ["job_submitted", "job_claimed", "stale_recovered", "job_claimed",
                                      "job_succeeded"]
    report = other.verify()
    assert report.ok and [(w.stream, w.code) for w in report.warnings] == [(job, "AUDIT_ENTRY_MISSING")]
