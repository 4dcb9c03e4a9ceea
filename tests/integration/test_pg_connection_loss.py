"""A lost connection to PostgreSQL (a server restart, an administrator, a pooler closing idle
connections) is something a worker lives through: it never exits for it once it has reached the
database, and the run in progress is recorded once, by its own worker."""
from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, faults
from orchestrator.store.postgres import PostgresStore, connect
from orchestrator.worker import Worker, WorkerSettings

from backends import TestPostgresStore, require_pg
from helpers import wait_until

pytestmark = pytest.mark.postgres


@pytest.fixture
def named_store():
    """A store whose connections carry an application name of their own, so a test can cut exactly them."""
    home = TestPostgresStore()
    name = f"orch-test-{uuid.uuid4().hex[:10]}"
    store = PostgresStore(f"{require_pg()}?application_name={name}", home.project)
    admin = connect(require_pg(), autocommit=True)

    def cut() -> int:
        """Terminate every connection of the store, as a server restart would."""
        gone = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                             (name,)).fetchall()
        wait_until(lambda: admin.execute(gone, (name,)).fetchone()[0] == 0, what="the backends to exit")
        return len(rows)

    store.cut = cut  # type: ignore[attr-defined]
    yield store
    faults.disarm_all()
    store.close()
    admin.close()
    home.close()


def test_connections_cut_while_idle_are_replaced_before_the_next_statement(named_store) -> None:
    assert named_store.has_jobs() is False  # a connection is now in the pool
    assert named_store.cut() >= 1
    assert named_store.has_jobs() is False  # not the cut connection's error


def test_a_connection_cut_while_the_outcome_commits_is_retried_and_the_job_succeeds_once(
        named_store, tmp_path: Path) -> None:
    orch = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store)
    job = orch.submit("t.echo", {"x": 1})
    worker = Worker(orch, WorkerSettings(worker_id="w1", handler_process="per-run"), rng=random.Random(7))
    claim = worker.claim()
    assert claim is not None
    faults.arm("pg.append.before_commit", named_store.cut)  # the outcome's transaction loses its connection
    result = worker.execute(claim)
    assert result.outcome == "succeeded"
    types = [json.loads(s.raw)["type"] for s in orch.store.read(job)]
    assert types == ["job_submitted", "job_claimed", "job_succeeded"]


def test_a_listen_connection_that_cannot_be_reopened_is_a_wake_up_not_a_worker_exit(
        named_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store import pg_queue

    index = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store).queue
    index.wait(0)
    named_store.cut()  # the LISTEN connection too

    def refused(*_a, **_k):
        raise StorageUnavailableError("cannot connect to PostgreSQL: Connection refused")

    monkeypatch.setattr(pg_queue, "connect", refused)  # the server is still restarting
    assert index.wait(0.2) is True  # the caller rescans; the next wait tries to listen again
    assert index.wait(0.2) is True
    monkeypatch.undo()
    index.wait(0)  # the server is back: listening again
    assert index._listener is not None and not index._listener.closed  # noqa: SLF001
    index.close()


@pytest.mark.parametrize("error, lost", [
    ("OperationalError", True),  # no SQLSTATE: the socket ("cannot exit pipeline mode while busy")
    ("errors.AdminShutdown", True),  # 57P01: pg_terminate_backend, a restart
    ("errors.ConnectionFailure", True),  # 08006
    ("errors.QueryCanceled", False),  # 57014: the statement (a statement timeout), not the connection
    ("errors.UniqueViolation", False),
])
def test_a_driver_error_that_says_the_connection_failed_is_storage_unavailable_even_on_a_live_connection(
        error: str, lost: bool) -> None:
    """psycopg does not always mark the connection broken before such an error reaches the store."""
    import functools

    import psycopg
    import psycopg.errors  # noqa: F401 - looked up by name below

    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store.postgres import _storage_error

    kind = functools.reduce(getattr, error.split("."), psycopg)
    assert isinstance(_storage_error(kind("the driver's message")), StorageUnavailableError) is lost
