"""An Orchestrator on PostgreSQL lets its sessions go: ``close()``, or the end of a ``with`` block, ends them at once,
and one dropped without it ends them as its last reference goes, with no garbage collector needed (its store is in no
reference cycle), not a watchdog's quiet period later; a closed one refuses every call, ``STORE_CLOSED``, and opens no
session (README, "Python API"; docs/postgres.md, "Connections")."""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, OrchestratorError
from orchestrator.signing import Keyring
from orchestrator.store.postgres import PostgresStore, connect

from backends import TestPostgresStore, require_pg, unique_project
from helpers import wait_until

pytestmark = pytest.mark.postgres

PROMPTLY = 2.0  # seconds for the server to see closed sessions gone; the watchdog's quiet period is 10 s
_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


@pytest.fixture
def named() -> Iterator[SimpleNamespace]:
    """A project, and a URL whose sessions carry an application name of their own, so the test counts exactly them."""
    home = TestPostgresStore()
    name = f"orch-close-{uuid.uuid4().hex[:10]}"
    admin = connect(require_pg(), autocommit=True)
    yield SimpleNamespace(url=f"{home.url}?application_name={name}", project=home.project,
                          sessions=lambda: admin.execute(_SESSIONS, (name,)).fetchone()[0])
    admin.close()
    home.close()


def _orchestrator(named: SimpleNamespace, base: Path, keyring: Keyring) -> Orchestrator:
    return Orchestrator(base_path=base, project_id=named.project, store_url=named.url, keyring=keyring)


def _no_session_left(named: SimpleNamespace, why: str) -> None:
    wait_until(lambda: named.sessions() == 0, PROMPTLY, f"the sessions of {why} to end")


def _watchdog_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "orch-pg-deadline"}


def _watchdogs() -> int:
    return len(_watchdog_threads())


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The garbage collector off: what a dropped object frees then is freed by reference counting alone."""
    was_on = gc.isenabled()
    gc.disable()
    yield
    if was_on:
        gc.enable()


def test_dropped_orchestrators_end_their_sessions_without_the_garbage_collector(
        named, base: Path, keyring: Keyring, no_collector) -> None:
    for _ in range(5):
        orch = _orchestrator(named, base, keyring)
        job_id = orch.submit("t.echo")
        with orch.worker(worker_id="w1") as worker:
            assert worker.run_once().job_id == job_id
        del orch, worker
    _no_session_left(named, "five dropped orchestrators")


def test_dropped_orchestrators_leave_no_deadline_watchdog_behind(named, base: Path, keyring: Keyring,
                                                                  no_collector) -> None:
    before = _watchdog_threads()
    orchestrators = [_orchestrator(named, base, keyring) for _ in range(5)]
    for orch in orchestrators:
        orch.status(orch.submit("t.echo"))
    theirs = _watchdog_threads() - before  # other tests' stores may end theirs meanwhile
    assert len(theirs) == 5
    del orch
    orchestrators.clear()
    wait_until(lambda: not any(t.is_alive() for t in theirs), PROMPTLY,
               "the watchdogs of five dropped orchestrators to end")


def test_a_clock_kept_after_its_store_went_refuses_with_store_closed(no_collector) -> None:
    store = PostgresStore(require_pg(), unique_project())
    clock = store.shared_clock
    del store
    with pytest.raises(OrchestratorError) as caught:
        clock()  # its first read, before any call: it would make one
    assert (caught.value.code, caught.value.exit_code) == ("STORE_CLOSED", 10)


def test_close_ends_every_session_and_the_deadline_watchdog_at_once(named, base: Path, keyring: Keyring) -> None:
    before = _watchdogs()
    orch = _orchestrator(named, base, keyring)
    job_id = orch.submit("t.echo", {"x": 1})
    with orch.worker(worker_id="w1") as worker:
        assert worker.run_once().job_id == job_id
    assert named.sessions() >= 1
    orch.close()
    _no_session_left(named, "a closed orchestrator")
    assert _watchdogs() <= before
    orch.close()  # again: nothing left to close, no error


def test_a_worker_loop_idle_on_another_thread_ends_its_wait_and_its_listen_session_soon_after_close(
        named, base: Path, keyring: Keyring) -> None:
    """Closing under a running loop is the caller's mistake (README: close once the loops returned), but it must not
    hold a session for the loop's whole idle wait (``IDLE_MAX_WAIT``, 30 s: 28.6 s measured before 2026-12-07)."""
    orch = _orchestrator(named, base, keyring)
    worker = orch.worker(worker_id="w1")
    raised: list[BaseException] = []

    def loop() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - what the loop ended with is the test's to check
            raised.append(exc)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    wait_until(lambda: named.sessions() >= 2, PROMPTLY, "the loop's LISTEN session")  # the pool's and the loop's
    orch.close()
    thread.join(PROMPTLY)
    try:
        assert not thread.is_alive(), "the idle loop went on waiting after close()"
        assert [getattr(exc, "code", exc) for exc in raised] == ["STORE_CLOSED"]
        _no_session_left(named, "a loop whose orchestrator was closed")
    finally:
        worker.stop()
        thread.join(60)


def test_a_with_block_closes_the_orchestrator_even_when_its_body_raises(named, base: Path, keyring: Keyring) -> None:
    with pytest.raises(RuntimeError, match="the caller's own"):
        with _orchestrator(named, base, keyring) as orch:
            orch.status(orch.submit("t.echo"))
            raise RuntimeError("the caller's own error")
    _no_session_left(named, "a with block")


def test_a_closed_orchestrator_refuses_every_call_with_store_closed_and_loses_nothing(
        named, base: Path, keyring: Keyring) -> None:
    orch = _orchestrator(named, base, keyring)
    job_id = orch.submit("t.echo")
    orch.close()
    for call in (lambda: orch.status(job_id), lambda: orch.submit("t.echo"), lambda: orch.cancel(job_id),
                 lambda: orch.worker().run_once(), lambda: list(orch.job_ids())):
        with pytest.raises(OrchestratorError) as caught:
            call()
        assert (caught.value.code, caught.value.exit_code) == ("STORE_CLOSED", 10)
        assert "closed" in caught.value.message
    _no_session_left(named, "a closed orchestrator called again")
    with _orchestrator(named, base, keyring) as again:
        assert again.status(job_id).state == "queued"


_FORKS_AND_EXITS = """
import json, os, sys
from orchestrator.store.postgres import PostgresStore, connect
store = PostgresStore(sys.argv[1], sys.argv[2])
store.has_jobs()
pooled = lambda: sorted(conn.info.backend_pid for conn in store._idle)
before = pooled()
if os.fork() == 0:
    store.has_jobs()  # on a session of the child's own
    sys.exit(0)  # a normal exit: the interpreter runs the store's finalizer (atexit)
os.wait()
with connect(sys.argv[1], autocommit=True) as admin:
    alive = {pid for pid, in admin.execute("SELECT pid FROM pg_stat_activity")}
store.has_jobs()
print(json.dumps({"before": before, "alive": [pid in alive for pid in before], "after": pooled()}))
"""


def test_a_forked_child_that_exits_normally_leaves_its_parents_pooled_sessions_open(named) -> None:
    """The child's copy of the store has the finalizer too, run at its exit: it closes the child's own sessions,
    never the parent's it inherited (``_after_fork_in_child`` empties the pooled list the finalizer holds in place;
    a new list would leave the parent's connections in the finalizer's, and their Terminate would end the parent's
    sessions on the server). A real process, whose interpreter exits as a program's does."""
    ran = subprocess.run([sys.executable, "-c", _FORKS_AND_EXITS, named.url, named.project], capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout)
    assert seen["before"] and seen["alive"] == [True] * len(seen["before"]), seen  # the server still has them
    assert seen["after"] == seen["before"], seen  # and the parent goes on on them
