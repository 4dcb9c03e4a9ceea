"""A lost connection to PostgreSQL (a server restart, an administrator, a pooler closing idle
connections) is something a worker lives through: it never exits for it once it has reached the
database, and the run in progress is recorded once, by its own worker. A server that stalls
without closing the connection is cut off at the store's deadline and treated the same way."""
from __future__ import annotations

import contextlib
import json
import os
import random
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator, faults
from orchestrator.store.postgres import PostgresStore, connect
from orchestrator.worker import Worker, WorkerSettings

from backends import TestPostgresStore, drop_project, require_pg, unique_project
from helpers import HIGH_FD, REPO, descriptors_numbered_high, wait_until

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


def test_a_healthy_pooled_connection_numbered_above_1023_is_kept_and_seen_gone_once_cut(named_store) -> None:
    """``select`` refused a descriptor numbered 1024 or more, and the check took its ``ValueError`` for a connection
    gone: a worker with many descriptors closed and opened its pooled connections again at every call."""
    from orchestrator.store.pg_connection import _went_away

    with descriptors_numbered_high():
        assert named_store.has_jobs() is False  # its connection, numbered above 1023, now in the pool
    (conn,) = named_store._idle  # noqa: SLF001 - the pooled connection the next call takes
    assert conn.fileno() >= HIGH_FD
    assert _went_away(conn) is False
    assert named_store.has_jobs() is False
    assert named_store._idle == [conn]  # noqa: SLF001 - kept, not replaced
    assert named_store.cut() == 1
    assert _went_away(conn) is True  # the server's goodbye (and the end of the socket) reads as gone


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


def test_once_waits_out_a_connection_cut_while_its_claim_commits_and_runs_the_job(named_store, tmp_path: Path) -> None:
    orch = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store)
    job = orch.submit("t.echo", {"x": 1})
    worker = Worker(orch, WorkerSettings(worker_id="w1", handler_process="per-run"), rng=random.Random(7))
    faults.arm("pg.append.before_commit", named_store.cut)  # the claim's transaction loses its connection
    result = worker.run_once()
    assert result is not None and result.outcome == "succeeded"
    types = [json.loads(s.raw)["type"] for s in orch.store.read(job)]
    assert types == ["job_submitted", "job_claimed", "job_succeeded"]


def test_once_waits_out_a_connection_cut_while_it_recovers_a_stale_job(named_store, tmp_path: Path) -> None:
    import time

    ahead = [0.0]  # how far this test's clock runs ahead of the real one
    orch = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store,
                        clock=lambda: time.time() + ahead[0])
    job = orch.submit("t.echo", {"x": 1})
    dead = Worker(orch, WorkerSettings(worker_id="dead", lease_seconds=1))
    assert dead.claim() is not None  # and never runs it: its lease expires
    ahead[0] = 60.0
    worker = Worker(orch, WorkerSettings(worker_id="w1", handler_process="per-run", retry_base_seconds=0),
                    rng=random.Random(7))
    faults.arm("pg.append.before_commit", named_store.cut)  # the stale_recovered transaction loses its connection
    result = worker.run_once()
    assert result is not None and result.outcome == "succeeded"
    types = [json.loads(s.raw)["type"] for s in orch.store.read(job)]
    assert types == ["job_submitted", "job_claimed", "stale_recovered", "job_claimed", "job_succeeded"]


def test_once_gives_up_on_a_server_that_stays_away_past_store_wait_seconds(
        named_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store import pg_sessions

    orch = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store)
    job = orch.submit("t.echo", {"x": 1})
    worker = Worker(orch, WorkerSettings(worker_id="w1", store_wait_seconds=0.5))

    def refused(*_a, **_k):
        raise StorageUnavailableError("cannot connect to PostgreSQL: Connection refused")

    def server_down() -> None:
        named_store.cut()
        monkeypatch.setattr(pg_sessions, "connect", refused)  # where the store's sessions look it up

    faults.arm("pg.append.before_commit", server_down)
    started = time.monotonic()
    try:
        with pytest.raises(StorageUnavailableError) as caught:
            worker.run_once()
        waited = time.monotonic() - started
    finally:
        monkeypatch.undo()  # the server is back (the fixture's clean-up connects)
    assert 0.5 <= waited < 5.0
    assert "still out of reach after 0.5s of retries" in caught.value.message
    assert orch.status(job).state == "queued"  # the claim was never committed


def test_once_that_cannot_reach_the_server_at_its_first_call_raises_at_once(tmp_path: Path) -> None:
    """A wrong URL is a setting to fix: no retries, whatever ``store_wait_seconds`` says."""
    import time

    from orchestrator.errors import StorageUnavailableError

    require_pg()
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2", "nowhere")
    orch = Orchestrator(base_path=tmp_path, project_id="nowhere", store=store)
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="cannot connect to PostgreSQL"):
        Worker(orch, WorkerSettings(worker_id="w1", store_wait_seconds=30)).run_once()
    assert time.monotonic() - started < 5.0
    store.close()


# ``scripts/worker.py`` as a process whose claim loses its connection: the server is cut mid-transaction
# (pg_terminate_backend, as a restart would), then comes back at once or refuses connections from then on.
CUT_THEN_RUN = r"""
import sys, time
from orchestrator import faults
from orchestrator.errors import StorageUnavailableError
from orchestrator.store import pg_sessions, postgres

admin_url, name, mode = sys.argv[1:4]
GONE = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


def cut():
    admin = postgres.connect(admin_url, autocommit=True)
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,))
    while admin.execute(GONE, (name,)).fetchone()[0]:
        time.sleep(0.01)
    admin.close()
    if mode == "stays-down":
        def refused(*_a, **_k):
            raise StorageUnavailableError("cannot connect to PostgreSQL: Connection refused")
        pg_sessions.connect = refused  # where the store's sessions look it up


faults.arm("pg.append.before_commit", cut)
from orchestrator.cli import main
main(sys.argv[4:])
"""


@pytest.mark.parametrize("mode", ["comes-back", "stays-down"])
def test_worker_once_waits_out_a_connection_lost_in_its_claim_for_store_wait_seconds_then_exits_10(
        mode: str, base: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.signing import new_seed

    seed = new_seed()
    monkeypatch.setenv("ORCH_SIGNING_KEY", seed)
    home = TestPostgresStore()
    try:
        orch = Orchestrator(base_path=base, project_id=home.project, store=home)
        job = orch.submit("t.echo", {"x": 1})
        name = f"orch-test-{uuid.uuid4().hex[:10]}"
        env = {**cli_env, "ORCH_SIGNING_KEY": seed, "ORCH_STORE_URL": f"{require_pg()}?application_name={name}",
               "PROJECT_ID": home.project, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
               "ORCH_HANDLERS": "worker_handlers", "ORCH_STORE_WAIT_SECONDS": "5" if mode == "comes-back" else "1"}
        proc = subprocess.run([sys.executable, "-c", CUT_THEN_RUN, require_pg(), name, mode, "worker", "--once",
                               "--json"], env=env, capture_output=True, text=True, timeout=60, cwd=str(REPO))
        if mode == "comes-back":
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["outcome"] == "succeeded" and orch.status(job).state == "succeeded"
        else:
            assert proc.returncode == 10, proc.stderr
            error = json.loads(proc.stdout)
            assert error["error"] == "STORAGE_ERROR" and "Traceback" not in proc.stderr
            assert "still out of reach after 1s of retries" in error["message"], error
            assert "no job was run" in error["message"] and orch.status(job).state == "queued"
        assert "the store cannot be reached" in proc.stderr  # the retries are not silent
    finally:
        home.close()


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


def test_a_connection_whose_first_statement_fails_is_closed_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """``connect`` opens the session, then sets ``synchronous_commit``: a server that ends the session in between (a
    shutdown) is ``StorageUnavailableError``, and the session it opened is closed then, not whenever the garbage
    collector finds it (psycopg warns of a connection deleted while open)."""
    import psycopg

    from orchestrator.errors import StorageUnavailableError

    url = require_pg()
    opened: list[Any] = []
    real_connect, real_execute = psycopg.connect, psycopg.Connection.execute

    def spied(*args: Any, **kwargs: Any) -> Any:
        opened.append(real_connect(*args, **kwargs))
        return opened[-1]

    def execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if "synchronous_commit" in str(query):  # the session's first statement (``pg_connection._SESSION``)
            raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
        return real_execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", spied)
    monkeypatch.setattr(psycopg.Connection, "execute", execute)
    try:
        with pytest.raises(StorageUnavailableError, match="administrator command"):
            connect(url)
        assert len(opened) == 1 and opened[0].closed
    finally:
        for conn in opened:
            conn.close()


def test_a_job_announced_while_the_listen_connection_was_down_wakes_the_wait_that_listens_again(
        named_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait that could not listen again returned as a wake-up, and the caller rescanned; a job announced after
    that scan, while nothing listened, is never delivered. So the wait that listens again returns at once as a
    wake-up too (the caller rescans, listening), instead of waiting for a notification that already went."""
    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store import pg_queue

    orch = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store)
    index = orch.queue
    index.wait(0)
    named_store.cut()  # the LISTEN connection too

    def refused(*_a, **_k):
        raise StorageUnavailableError("cannot connect to PostgreSQL: Connection refused")

    monkeypatch.setattr(pg_queue, "connect", refused)
    assert index.wait(0.2) is True  # lost: the caller rescans (and finds nothing)
    monkeypatch.undo()  # the server is back...
    orch.submit("t.echo", 1)  # ...and a job is announced before this worker listens again
    t0 = time.monotonic()
    assert index.wait(3.0) is True and time.monotonic() - t0 < 1.0
    index.close()


@pytest.mark.parametrize("error, lost", [
    ("OperationalError", True),  # no SQLSTATE: the socket ("cannot exit pipeline mode while busy")
    ("errors.AdminShutdown", True),  # 57P01: pg_terminate_backend, a restart
    ("errors.ConnectionFailure", True),  # 08006
    ("errors.QueryCanceled", False),  # 57014: the statement (a statement timeout), not the connection
    ("errors.LockNotAvailable", False),  # 55P03: a lock timeout
    ("errors.UniqueViolation", False),
])
def test_a_driver_error_that_says_the_connection_failed_is_storage_unavailable_even_on_a_live_connection(
        error: str, lost: bool) -> None:
    """psycopg does not always mark the connection broken before such an error reaches the store. A statement the
    server cancelled is no lost connection either, but it may pass too (since 2026-12-06; before, a worker exited 10
    for it): ``StatementCancelledError``, a ``StorageUnavailableError`` that says nothing was written."""
    import functools

    import psycopg
    import psycopg.errors  # noqa: F401 - looked up by name below

    from orchestrator.errors import StatementCancelledError, StorageUnavailableError
    from orchestrator.store.postgres import _storage_error

    kind = functools.reduce(getattr, error.split("."), psycopg)
    reported = _storage_error(kind("the driver's message"), write=True)
    assert reported.message.startswith("the connection to PostgreSQL was lost") is lost
    cancelled = error in ("errors.QueryCanceled", "errors.LockNotAvailable")
    assert isinstance(reported, StatementCancelledError) is cancelled
    assert isinstance(reported, StorageUnavailableError) is (lost or cancelled)
    assert reported.message.endswith("nothing was written") is not lost


# -- a server that stalls: the connection stays open, nothing comes back ------------------------
class StallingProxy:
    """A TCP proxy to the test server that can stop forwarding while keeping every socket open, as a
    hung server or pooler does whose kernel still acknowledges the traffic (keepalives see nothing).

    ``stall(seconds)`` stops everything (new connections wait in the listen backlog) until
    ``resume`` or for ``seconds``; ``freeze()`` stops the connections open now for good, while new
    ones flow (a pooler's stuck backend); ``throttle(rate)`` forwards at most ``rate`` bytes a second
    (a slow network: a long read takes long, a short one does not)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        self.url = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.listener.getsockname()[1]}"))
        self._resume_at = 0.0  # monotonic: stalled until then
        self.rate = 0.0  # bytes per second; 0: as fast as it goes
        self._peer: dict[socket.socket, socket.socket] = {}
        self._freeze = threading.Event()
        self._frozen = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="stalling-proxy", daemon=True)
        self._thread.start()

    def stall(self, seconds: float = 3600.0) -> None:
        self._resume_at = time.monotonic() + seconds

    def resume(self) -> None:
        self._resume_at = 0.0

    def throttle(self, rate: float) -> None:
        self.rate = rate

    def freeze(self) -> None:
        self._frozen.clear()
        self._freeze.set()
        assert self._frozen.wait(5)

    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            if time.monotonic() < self._resume_at:
                time.sleep(0.005)
                continue
            if self._freeze.is_set():  # the sockets stay open (in _peer), they are just never read again
                for sock in self._peer:
                    sel.unregister(sock)
                self._freeze.clear()
                self._frozen.set()
            for key, _ in sel.select(0.02):
                sock = key.fileobj
                if sock is self.listener:
                    with contextlib.suppress(BlockingIOError):
                        client, _ = self.listener.accept()
                        server = socket.create_connection(self.target)
                        self._peer[client], self._peer[server] = server, client
                        sel.register(client, selectors.EVENT_READ)
                        sel.register(server, selectors.EVENT_READ)
                    continue
                other = self._peer.get(sock)  # type: ignore[call-overload]
                if other is None:
                    continue
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                    if data:
                        other.sendall(data)
                        if self.rate:
                            time.sleep(len(data) / self.rate)
                        continue
                except OSError:
                    pass
                for end in (sock, other):
                    sel.unregister(end)
                    self._peer.pop(end, None)  # type: ignore[arg-type]
                    end.close()
        sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for sock in [*self._peer, self.listener]:
            sock.close()


@pytest.fixture
def stalling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An orchestrator whose PostgreSQL is reached through a ``StallingProxy``, with a deadline of 0.5 s."""
    url = require_pg()
    proxy = StallingProxy(url)
    project = unique_project()
    monkeypatch.setenv("ORCH_PG_DEADLINE_SECONDS", str(DEADLINE))
    orch = Orchestrator(base_path=tmp_path, project_id=project, store_url=proxy.url)
    orch.proxy = proxy  # type: ignore[attr-defined]
    yield orch
    proxy.resume()
    orch.store.close()
    proxy.close()
    drop_project(url, project)


DEADLINE = 0.5
MARGIN = 1.5  # for a loaded, shared machine


def test_a_call_to_a_stalled_server_is_cut_at_the_deadline_as_storage_unavailable(stalling) -> None:
    from orchestrator.errors import StorageUnavailableError

    assert stalling.store.has_jobs() is False  # a connection is now in the pool, the schema checked
    stalling.proxy.stall(5.0)
    start = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"did not answer within 0\.5s") as caught:
        stalling.store.has_jobs()
    assert DEADLINE <= time.monotonic() - start < DEADLINE + MARGIN
    assert caught.value.exit_code == 10
    stalling.proxy.resume()
    assert stalling.store.has_jobs() is False  # a new connection: the cut one was not put back


def test_calls_within_the_deadline_keep_their_connection_and_the_watchdog_stops_when_quiet(stalling) -> None:
    def backend(conn):
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    first = stalling.store._run(backend)  # noqa: SLF001
    watchdog = stalling.store.deadline
    assert watchdog._watching  # noqa: SLF001 - armed for every call
    stalling.store._run(lambda conn: conn.execute("SELECT pg_sleep(%s)", (DEADLINE * 0.6,)))  # noqa: SLF001
    for _ in range(50):
        assert stalling.store.has_jobs() is False
    assert stalling.store._run(backend) == first  # noqa: SLF001 - never cut, never replaced
    wait_until(lambda: not watchdog._watching, timeout=5 * DEADLINE, what="the idle watchdog to stop")  # noqa: SLF001
    assert stalling.store._run(backend) == first  # noqa: SLF001 - and it starts again with the next call


def test_a_worker_enforces_the_job_timeout_while_the_server_stalls_and_records_the_run_once_it_is_back(
        stalling, monkeypatch: pytest.MonkeyPatch) -> None:
    job = stalling.submit("t.sleep", 30, timeout=1.0, max_attempts=1)
    worker = Worker(stalling, WorkerSettings(worker_id="w1", lease_seconds=1.5, handler_process="per-run"),
                    rng=random.Random(7))
    killed: list[float] = []
    import orchestrator.supervisor

    kill = orchestrator.supervisor.kill_run
    monkeypatch.setattr(orchestrator.supervisor, "kill_run",
                        lambda child, run_id: (killed.append(time.monotonic()), kill(child, run_id))[1])
    claim = worker.claim()
    assert claim is not None
    start = time.monotonic()
    # from the handler's start, over the first heartbeat (0.5 s), until well after the job's timeout (1 s)
    faults.arm("worker.after_start", lambda: stalling.proxy.stall(STALL))
    result = worker.execute(claim)
    # the heartbeat was cut at its deadline, so the timeout was enforced during the stall, not after it
    assert killed and killed[0] - start < 1.0 + DEADLINE + MARGIN < STALL
    assert time.monotonic() - start >= STALL  # the outcome waited for the server, then was written
    assert (result.outcome, result.error_code) == ("failed", "NO_TERMINAL_SIGNAL_TIMEOUT")
    types = [json.loads(s.raw)["type"] for s in stalling.store.read(job)]
    assert types == ["job_submitted", "job_claimed", "job_timeout"]
    worker.close()


STALL = 4.5


def test_a_run_whose_server_goes_away_is_stopped_before_its_lease_expires_and_recorded_once_it_is_back(
        named_store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server goes away right after the first renewal and refuses connections: the run is stopped before
    the lease that renewal stored may expire (stale recovery elsewhere would run the job again), and its
    worker records the stop once the server is back, a second after it."""
    from orchestrator import heartbeat as heartbeat_mod
    from orchestrator import supervisor
    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store import pg_sessions

    orch = Orchestrator(base_path=tmp_path, project_id=named_store.project, store=named_store)
    job = orch.submit("t.sleep", 30)
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=1.5, handler_process="per-run",
                                         retry_base_seconds=0), rng=random.Random(7))
    back, kills, stored = threading.Event(), [], []
    real_connect, real_kill, real_write = pg_sessions.connect, supervisor.kill_run, heartbeat_mod.write_lease

    def connect(*args: Any, **kwargs: Any) -> Any:
        if not back.is_set():
            raise StorageUnavailableError("cannot connect to PostgreSQL: Connection refused")
        return real_connect(*args, **kwargs)

    def server_down() -> None:
        named_store.cut()
        monkeypatch.setattr(pg_sessions, "connect", connect)  # where the store's sessions look it up

    def kill_run(child: Any, run_id: str) -> Any:
        kills.append(orch.clock())
        killed = real_kill(child, run_id)
        threading.Timer(1.0, back.set).start()
        return killed

    def write_lease(store: Any, lease: Any) -> None:
        real_write(store, lease)
        stored.append(lease.expires_at)

    monkeypatch.setattr(supervisor, "kill_run", kill_run)
    monkeypatch.setattr(heartbeat_mod, "write_lease", write_lease)
    faults.arm("lease.after_write", server_down)
    claim = worker.claim()
    assert claim is not None
    result = worker.execute(claim)
    assert len(stored) == 1 and len(kills) == 1
    assert claim.state.lease_expires_at < kills[0] < stored[0]  # it went on while renewed, and stopped in time
    assert (result.outcome, result.error_code) == ("retry", "LEASE_NOT_RENEWED")
    events = [json.loads(s.raw) for s in orch.store.read(job)]
    assert [e["type"] for e in events] == ["job_submitted", "job_claimed", "job_failed"]
    assert "Connection refused" in events[2]["data"]["error"]
    assert orch.store.get_aux("leases", f"{job}.1") is None  # the renewed row dropped with the outcome
    worker.close()


def test_a_worker_whose_connections_freeze_for_good_opens_new_ones_and_records_the_outcome_once(stalling) -> None:
    """A pooler's stuck backend: the connections open now never answer again, new ones do. The heartbeat at 1 s
    is cut at 1.5 s, after the run is done (1.2 s) and well before a run still failing to renew would be stopped
    (2.4 s, a fifth of the 3 s lease before it ends)."""
    job = stalling.submit("t.sleep", 1.2)
    worker = Worker(stalling, WorkerSettings(worker_id="w1", lease_seconds=3, handler_process="per-run"),
                    rng=random.Random(7))
    claim = worker.claim()
    assert claim is not None
    faults.arm("worker.after_start", stalling.proxy.freeze)  # once its handler started
    results: list[Any] = []

    def execute() -> None:
        try:
            results.append(worker.execute(claim))
        except BaseException as exc:  # noqa: BLE001 - reported below, not as a thread's crash
            results.append(exc)

    run = threading.Thread(target=execute, daemon=True)
    run.start()
    run.join(30)
    if run.is_alive():  # blocked for good: let it give up, so it does not outlive the test
        worker.stop()
        stalling.proxy.close()
        run.join(30)
        pytest.fail("the worker blocked on a frozen connection")
    assert results[0].outcome == "succeeded"
    types = [json.loads(s.raw)["type"] for s in stalling.store.read(job)]
    assert types == ["job_submitted", "job_claimed", "job_succeeded"]
    worker.close()


@pytest.mark.parametrize("value, seconds", [("", 10.0), ("2.5", 2.5), ("0", None)])
def test_the_deadline_is_ten_seconds_unless_orch_pg_deadline_seconds_says_otherwise(value, seconds) -> None:
    from orchestrator.config import Settings
    from orchestrator.store.postgres import PostgresStore as Store

    settings = Settings.load(env={"ORCH_PG_DEADLINE_SECONDS": value})
    assert Store("postgresql://localhost/x", deadline_seconds=settings.pg_deadline_seconds).deadline.seconds == seconds


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_deadline_that_is_not_a_number_of_seconds_is_a_config_error(value) -> None:
    from orchestrator.config import Settings
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError, match="ORCH_PG_DEADLINE_SECONDS"):
        Settings.load(env={"ORCH_PG_DEADLINE_SECONDS": value})


# -- the watchdog's thread: one per store while it is open, and one in a forked child too --------
def _watchdogs() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "orch-pg-deadline")


def test_closing_a_store_stops_its_deadline_watchdog_so_fifty_stores_leave_no_thread() -> None:
    url, before = require_pg(), _watchdogs()
    for _ in range(50):
        store = PostgresStore(url, unique_project(), deadline_seconds=10)
        assert store.has_jobs() is False  # the watchdog runs
        store.close()
    assert _watchdogs() == before


def test_a_call_in_flight_when_its_store_is_closed_is_still_cut_at_the_deadline(stalling) -> None:
    """``close`` on one thread while a call to a stalled server is in flight on another: the watchdog keeps
    watching it (it stopped at once, and the call waited for the server as long as it stalled)."""
    from orchestrator.errors import StorageUnavailableError

    assert stalling.store.has_jobs() is False  # the watchdog runs, a connection is pooled
    stalling.proxy.stall(8.0)
    caught: list[BaseException] = []

    def call() -> None:
        try:
            stalling.store.has_jobs()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            caught.append(exc)

    start = time.monotonic()
    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(DEADLINE / 5)
    stalling.store.close()
    caller.join(timeout=10)
    assert DEADLINE <= time.monotonic() - start < DEADLINE + MARGIN
    assert len(caught) == 1 and isinstance(caught[0], StorageUnavailableError)
    assert not stalling.store.deadline._watching  # noqa: SLF001 - and the closed store leaves no thread


def test_in_a_forked_child_a_stalled_call_is_still_cut_at_the_deadline(stalling) -> None:
    """The child inherits the parent's "watching" state but not its thread; it starts its own."""
    import warnings

    assert stalling.store.has_jobs() is False  # the parent's watchdog runs, a connection is pooled
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    with warnings.catch_warnings():  # Python 3.12 warns about fork() with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report how the stalled call ended, on the pipe
        code = 1
        try:
            stalling.store.has_jobs()  # its own connection (the parent's stay the parent's)
            os.write(ready_w, b"r")
            os.read(go_r, 1)  # the parent stalls the proxy
            start = time.monotonic()
            try:
                stalling.store.has_jobs()
                outcome = "returned"
            except Exception as exc:  # noqa: BLE001 - reported to the parent
                outcome = type(exc).__name__
            os.write(ready_w, json.dumps([outcome, time.monotonic() - start]).encode())
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"r"
        stalling.proxy.stall(STALL)
        os.write(go_w, b"g")
        readable, _, _ = select_readable(ready_r, timeout=STALL + 10)
        outcome, took = json.loads(os.read(ready_r, 1000)) if readable else ("no answer", None)
    finally:
        stalling.proxy.resume()
        _, status = os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    assert outcome == "StorageUnavailableError" and took < DEADLINE + MARGIN < STALL, (outcome, took)


def select_readable(fd: int, timeout: float) -> tuple[list[int], list[int], list[int]]:
    import select

    return select.select([fd], [], [], timeout)


# -- what a cut call's message says ----------------------------------------------------------------
def test_a_read_cut_at_the_deadline_says_it_was_cut_off_not_that_a_write_may_have_committed(stalling) -> None:
    from orchestrator.errors import StorageUnavailableError

    assert stalling.store.has_jobs() is False
    stalling.proxy.stall(5.0)
    with pytest.raises(StorageUnavailableError) as caught:
        stalling.store.has_jobs()
    assert "the read was cut off; nothing was written" in caught.value.message
    assert "may or may not" not in caught.value.message


def test_an_append_cut_at_the_deadline_says_the_write_may_have_committed_and_psycopg_logs_no_pipeline_noise(
        stalling, caplog: pytest.LogCaptureFixture) -> None:
    from orchestrator.errors import StorageUnavailableError

    stalling.submit("t.echo", {"x": 1})
    faults.arm("pg.append.before_commit", lambda: stalling.proxy.stall(5.0))  # the pipelined COMMIT stalls
    with caplog.at_level("WARNING"), pytest.raises(StorageUnavailableError) as caught:
        stalling.submit("t.echo", {"x": 2})
    faults.disarm_all()
    assert "a write in flight may or may not have been committed" in caught.value.message
    assert "cutting the connection" in caplog.text  # the store's own warning stays
    assert "error ignored terminating" not in caplog.text, caplog.text


_RETURNING = "DELETE FROM orch_running WHERE project = %s RETURNING job_id"


@pytest.mark.parametrize("call, write", [
    (lambda index: index._sql(_RETURNING, (index.project,), write=True, fetch=True), True),  # noqa: SLF001
    (lambda index: index.candidates(time.time()), True),  # the reservation: a write that returns rows
    (lambda index: index.running_entries(), False),
    (lambda index: index.put_running("job1", 1), True),
], ids=["write-returning", "candidates", "running_entries", "put_running"])
def test_a_queue_index_statement_cut_off_is_reported_as_a_write_whenever_it_writes_even_if_it_returns_rows(
        stalling, call: Any, write: bool) -> None:
    from orchestrator.errors import StorageUnavailableError

    assert stalling.store.has_jobs() is False  # a connection is pooled: the stall hits the statement itself
    stalling.proxy.stall(5.0)
    with pytest.raises(StorageUnavailableError) as caught:
        call(stalling.queue)
    assert ("may or may not have been committed" in caught.value.message) is write, caught.value.message
    assert ("the read was cut off" in caught.value.message) is not write


@pytest.mark.parametrize("write", [False, True])
def test_a_lost_connection_says_a_write_may_have_committed_only_for_a_write(write: bool) -> None:
    import psycopg

    from orchestrator.store.postgres import _storage_error

    message = _storage_error(psycopg.OperationalError("server closed the connection"), write=write).message
    assert ("may or may not have been committed" in message) is write
    assert ("the read was cut off" in message) is not write


# -- long reads: one round trip per chunk, each within the deadline ------------------------------
def _raw_audit_lines(url: str, project: str, count: int, size: int = 490) -> None:
    """``count`` audit-sized lines written as an intruder would (reads do not verify them)."""
    conn = connect(url, autocommit=True)
    try:
        conn.execute("INSERT INTO orch_streams (project, stream, seq, last_line) VALUES (%s, '@audit', %s, '')",
                     (project, count))
        conn.execute("INSERT INTO orch_events (project, stream, seq, line) SELECT %s, '@audit', n, "
                     "convert_to(rpad(n::text || ':', %s, 'x'), 'UTF8') FROM generate_series(1, %s) AS n",
                     (project, size, count))
    finally:
        conn.close()


@pytest.mark.parametrize("bound, lines, size, rate", [
    (("READ_CHUNK_ROWS", 50), 600, 490, 400_000),  # many small lines: ~50 KB on the wire per chunk, 0.13 s
    # far fewer lines than READ_CHUNK_ROWS, but large ones (a job's input may be a MiB): bounded by rows only,
    # the read was one call, longer than the deadline
    (("READ_CHUNK_BYTES", 25_000), 120, 5_000, 800_000),
], ids=["rows", "bytes"])
def test_an_audit_read_longer_than_the_deadline_completes_in_chunks_each_within_it(
        stalling, monkeypatch: pytest.MonkeyPatch, bound: tuple[str, int], lines: int, size: int,
        rate: int) -> None:
    """The whole log takes ~1.5 s on the throttled wire, 3x the deadline: it comes in chunks, each within it."""
    from orchestrator.store import postgres
    from orchestrator.store.base import AUDIT_STREAM

    monkeypatch.setattr(postgres, bound[0], bound[1], raising=False)
    _raw_audit_lines(require_pg(), stalling.project_id, lines, size)
    stalling.proxy.throttle(rate)
    start = time.monotonic()
    read = stalling.store.read(AUDIT_STREAM)
    assert time.monotonic() - start > DEADLINE  # longer than one call may take: it was not one call
    assert [line.seq for line in read] == list(range(1, lines + 1))
    assert [line.raw.split(b":")[0] for line in read] == [str(n).encode() for n in range(1, lines + 1)]


def test_lines_of_any_sizes_come_at_most_read_chunk_bytes_per_round_trip_and_none_is_missed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A line longer than a chunk's share is not sent in it (its length is): the next chunk starts at it with
    fewer rows, and small lines after it come many per round trip again. A line longer than a whole chunk
    comes in slices of ``READ_CHUNK_BYTES`` (until 2026-12-02 it was one round trip, however long)."""
    from orchestrator.store import postgres
    from orchestrator.store.base import AUDIT_STREAM

    store = TestPostgresStore()
    try:
        sizes = ([100] * 30 + [4_000] * 3 + [100] * 300 + [25_000] + [100] * 5  # one longer than the budget
                 + [10_000, 10_001, 100])  # one of exactly the budget, one a byte over it
        conn = connect(store.url, autocommit=True)
        conn.execute("INSERT INTO orch_events (project, stream, seq, line) SELECT %s, '@audit', n, "
                     "convert_to(rpad(n::text || ':', (%s::int[])[n], 'x'), 'UTF8') "
                     "FROM generate_series(1, %s) AS n", (store.project, sizes, len(sizes)))
        conn.close()
        monkeypatch.setattr(postgres, "READ_CHUNK_BYTES", 10_000, raising=False)
        sent: list[list[int]] = []  # per round trip, the length of each line sent
        run = store._run  # noqa: SLF001

        def counting(*args: Any, **kwargs: Any) -> Any:
            rows = run(*args, **kwargs)
            sent.append([len(value) for row in rows for value in row if isinstance(value, bytes)])
            return rows

        monkeypatch.setattr(store, "_run", counting)
        for read in (lambda: store.read(AUDIT_STREAM),
                     lambda: store.read_with_aux(AUDIT_STREAM, "audit-head", "audit")[1]):
            sent.clear()
            lines = read()
            assert [len(line.raw) for line in lines] == sizes
            assert [line.raw.split(b":")[0] for line in lines] == [str(n).encode() for n in range(1, len(sizes) + 1)]
            assert all(sum(chunk) <= 10_000 for chunk in sent), sent  # never more, even for one line
            assert [[10_000], [10_000], [5_000]] in [sent[i:i + 3] for i in range(len(sent))], sent  # 25,000 in slices
            assert [[10_000], [1]] in [sent[i:i + 2] for i in range(len(sent))], sent  # 10,001: a slice and a byte
            assert len(sent) <= 20, sent  # not a round trip per line: 100-byte lines come ~100 at a time
    finally:
        store.close()


def test_a_line_rewritten_between_two_of_its_slices_is_a_storage_error_not_a_line_spliced_from_two(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.errors import StorageError
    from orchestrator.store import postgres
    from orchestrator.store.base import AUDIT_STREAM

    store = TestPostgresStore()
    conn = connect(store.url, autocommit=True)
    try:
        conn.execute("INSERT INTO orch_events (project, stream, seq, line) VALUES (%s, '@audit', 1, %s)",
                     (store.project, b"a" * 25_000))
        monkeypatch.setattr(postgres, "READ_CHUNK_BYTES", 10_000, raising=False)
        run = store._run  # noqa: SLF001
        calls: list[int] = []

        def rewriting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 3:  # after the first slice: someone rewrites the line by hand
                conn.execute("UPDATE orch_events SET line = %s WHERE project = %s AND stream = '@audit' AND seq = 1",
                             (b"b" * 30_000, store.project))
            return run(*args, **kwargs)

        monkeypatch.setattr(store, "_run", rewriting)
        with pytest.raises(StorageError, match="changed while it was read in slices"):
            store.read(AUDIT_STREAM)
    finally:
        conn.close()
        store.close()


def test_a_job_with_a_line_too_long_for_the_first_chunk_is_read_whole_in_two_round_trips(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store import postgres

    store = TestPostgresStore()
    try:
        orch = Orchestrator(base_path=tmp_path, project_id=store.project, store=store)
        small = orch.submit("t.echo", {"x": 1})
        big = orch.submit("t.echo", {"x": "y" * 100_000})  # past the first chunk's share (32 KiB a line)
        calls: list[int] = []
        run = store._run  # noqa: SLF001
        monkeypatch.setattr(store, "_run", lambda *args, **kwargs: (calls.append(1), run(*args, **kwargs))[1])
        for job, round_trips in ((small, 1), (big, 2)):
            calls.clear()
            record, lines = store.read_with_aux(job, "heads", job)
            assert record is not None and len(calls) == round_trips
            assert [line.raw for line in lines] == [line.raw for line in store.read(job)]
        assert orch.status(big).state == "queued"  # and it verifies
        assert postgres.READ_FIRST_ROWS * 32 * 1024 == postgres.READ_CHUNK_BYTES
    finally:
        store.close()


def test_long_listings_come_in_chunks_and_miss_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store import postgres
    from orchestrator.store.base import AUDIT_STREAM

    store = TestPostgresStore()
    try:
        orch = Orchestrator(base_path=tmp_path, project_id=store.project, store=store)
        jobs = sorted(orch.submit("t.echo", {"x": n}) for n in range(10))
        _raw_audit_lines(store.url, store.project, 7)
        monkeypatch.setattr(postgres, "READ_CHUNK_ROWS", 3, raising=False)
        calls = []
        run = store._run  # noqa: SLF001
        monkeypatch.setattr(store, "_run", lambda *args, **kwargs: (calls.append(1), run(*args, **kwargs))[1])
        assert list(store.job_ids()) == jobs and len(calls) == 4  # 3 + 3 + 3 + 1
        assert store.aux_keys("heads") == jobs
        assert [line.seq for line in store.read(AUDIT_STREAM)] == list(range(1, 8))
        assert [line.raw for line in store.read(AUDIT_STREAM, from_seq=3)] == \
               [line.raw for line in store.read(AUDIT_STREAM)][2:]
        record, lines = store.read_with_aux(AUDIT_STREAM, "audit-head", "audit")
        assert record is None and [line.seq for line in lines] == list(range(1, 8))
        record, lines = store.read_with_aux(jobs[0], "heads", jobs[0])
        assert record is not None and len(lines) == 1
    finally:
        store.close()


# -- worker --once: the time it waits for the store is the time it said --------------------------
@pytest.mark.parametrize("pooled", [True, False], ids=["pooled-connection", "new-connection"])
def test_worker_once_gives_up_within_store_wait_seconds_though_one_call_may_take_the_whole_deadline(
        pooled: bool, tmp_path: Path) -> None:
    """A stalled statement is cut when the wait is over (not at the 10 s deadline); a new connection's
    connect_timeout is the time left, at least libpq's 2 s."""
    from orchestrator.errors import StorageUnavailableError
    from orchestrator.store.pg_deadline import MIN_CONNECT_TIMEOUT

    proxy, wait = StallingProxy(require_pg()), 1.5
    store = PostgresStore(proxy.url, unique_project(), deadline_seconds=10)
    try:
        orch = Orchestrator(base_path=tmp_path, project_id=store.project, store=store)
        worker = Worker(orch, WorkerSettings(worker_id="w1", store_wait_seconds=wait))
        assert worker.run_once() is None  # the store was reached: from now on a loss is waited for
        if not pooled:
            for conn in store._idle:  # noqa: SLF001 - the next call must open a connection
                conn.close()
        proxy.stall(30)
        start = time.monotonic()
        with pytest.raises(StorageUnavailableError, match=r"still out of reach after 1\.5s of retries"):
            worker.run_once()
        took = time.monotonic() - start
    finally:
        proxy.resume()
        store.close()
        proxy.close()
        drop_project(require_pg(), store.project)
    assert wait <= took < wait + MIN_CONNECT_TIMEOUT + MARGIN, took
