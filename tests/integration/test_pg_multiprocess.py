"""Several processes writing to one PostgreSQL database never fork a stream.

Each process plays a worker on another machine: it walks the same queued jobs and tries to
claim each one (read, decide, append with the expected sequence), recording an audit entry
for every claim it wins. The database must let exactly one claim per job through, and the
shared audit stream must stay one unbroken chain.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.api import HEADS_AREA
from orchestrator.submitted import key_job_id
from orchestrator.integrity import verify_project
from orchestrator.signing import new_seed
from orchestrator.store.base import AUDIT_STREAM

from backends import TestPostgresStore

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]
PROCESSES = 4
JOBS = 20

RACER = r"""
import json, sys
from orchestrator import Orchestrator
from orchestrator.api import HEADS_AREA
from orchestrator.submitted import key_job_id
from orchestrator.errors import ConcurrencyError
from orchestrator.store.postgres import PostgresStore

url, project, worker, base = sys.argv[1:5]
jobs = sys.argv[5:]
orch = Orchestrator(base_path=base, project_id=project, store=PostgresStore(url, project))
won, lost = [], 0
for job_id in jobs:
    view = orch.load(job_id)
    if view.state.state != "queued":
        lost += 1
        continue
    try:
        orch.append(view, job_id, [("job_claimed", {"worker_id": worker, "epoch": 1, "attempt": 1,
                                                    "lease_expires_at": "2030-01-01T00:00:00.000000Z"})],
                    run_id=f"run-{worker}", actor=worker, audit=("claim", f"claimed by {worker}"))
        won.append(job_id)
    except ConcurrencyError:
        lost += 1
print(json.dumps({"worker": worker, "won": won, "lost": lost}))
"""


@pytest.fixture
def shared(base: Path, monkeypatch: pytest.MonkeyPatch):
    """A project in the test database and a signing key every process shares."""
    seed = new_seed()
    monkeypatch.setenv("ORCH_SIGNING_KEY", seed)
    store = TestPostgresStore()
    orch = Orchestrator(base_path=base, project_id=store.project, store=store)
    yield orch, seed
    store.close()


def test_workers_in_separate_processes_claim_each_job_exactly_once(shared, base: Path, cli_env) -> None:
    orch, seed = shared
    jobs = [orch.submit("echo", {"n": i}) for i in range(JOBS)]
    env = {**cli_env, "ORCH_SIGNING_KEY": seed}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, orch.store.url, orch.project_id, f"w{i}", str(base),
                               *jobs], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
             for i in range(PROCESSES)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        results.append(json.loads(out))
    won = [job for r in results for job in r["won"]]
    assert sorted(won) == sorted(jobs), "every job claimed once, by exactly one process"
    for job_id in jobs:
        events = [e.type for e in orch.load(job_id).events]
        assert events == ["job_submitted", "job_claimed"]
    audit = orch.store.read(AUDIT_STREAM)
    assert len(audit) == JOBS and [json.loads(s.raw)["seq"] for s in audit] == list(range(1, JOBS + 1))
    report = verify_project(orch)
    assert report.ok, report.problems


@pytest.mark.parametrize("point, visible", [("pg.append.before_commit", False), ("pg.append.after_commit", True)])
def test_a_writer_killed_around_the_commit_leaves_all_or_nothing(shared, cli_env, point: str, visible: bool) -> None:
    """The event and its head record commit in one transaction: a writer killed just before
    the commit leaves neither, one killed just after leaves both (on files it may leave the event alone)."""
    orch, seed = shared
    env = {**cli_env, "ORCH_SIGNING_KEY": seed, "ORCH_STORE_URL": orch.store.url, "PROJECT_ID": orch.project_id,
           "ORCH_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-c", "import sys; from orchestrator.cli import main; main(sys.argv[1:])",
                           "submit", "--kind", "echo", "--key", "k1"], env=env, capture_output=True, timeout=60,
                          cwd=str(REPO))
    assert proc.returncode == -9  # SIGKILL at the crash point
    assert len(list(orch.store.job_ids())) == (1 if visible else 0)
    key_job = key_job_id(orch.project_id, "k1")
    assert (orch.store.get_aux(HEADS_AREA, key_job) is not None) is visible, "event and head record: both or neither"
    # the next writer is not blocked by the dead one's lock, and the same key finds the same job
    job_id = orch.submit_job("echo", None, key="k1")
    assert job_id.created is not visible
    assert verify_project(orch).ok and orch.status(job_id.job_id).state == "queued"


@pytest.mark.parametrize("decided", [True, False], ids=["one-statement", "locked"])
def test_before_commit_fires_with_nothing_of_the_append_committed(decided: bool) -> None:
    """``pg.append.before_commit``: nothing of the append is visible yet, and it commits after the point. In the
    locked path (the audit log, a head that moved) the statement has run and holds the stream's row, which a
    writer killed there leaves to the server to release (the crash test above); in the one-statement path (a
    job's append, its head known) nothing has been sent yet, and once sent it commits on its own or not at all."""
    import time

    import psycopg

    from orchestrator import faults
    from orchestrator.store.base import Head
    from orchestrator.store.postgres import connect

    store = TestPostgresStore()
    admin = connect(store.url, autocommit=True)
    seen: list[tuple[bool, int]] = []

    def row_taken() -> bool:
        try:
            admin.execute("SELECT 1 FROM orch_streams WHERE project = %s AND stream = 'job-1' FOR UPDATE NOWAIT",
                          (store.project,))
            return False
        except psycopg.errors.LockNotAvailable:
            return True

    def look() -> None:
        until = time.monotonic() + (0 if decided else 5)
        while not row_taken() and time.monotonic() < until:
            time.sleep(0.01)
        visible = admin.execute("SELECT count(*) FROM orch_events WHERE project = %s AND stream = 'job-1'",
                                (store.project,)).fetchone()[0]
        seen.append((row_taken(), visible))

    try:
        first = store.append("job-1", lambda h: [b'{"n":1}'])
        faults.arm("pg.append.before_commit", look)
        expected = {"expected_seq": first.seq, "expected_last": first.last_line} if decided else {}
        head = store.append("job-1", lambda h: [b'{"n":2}'], **expected)
        faults.disarm_all()
        assert seen == [(not decided, 1)], "at the point: its line not yet committed (and the row held if locked)"
        assert head == Head(2, b'{"n":2}') and [s.raw for s in store.read("job-1")] == [b'{"n":1}', b'{"n":2}']
    finally:
        faults.disarm_all()
        admin.close()
        store.close()


@pytest.mark.parametrize("decided", [True, False], ids=["one-statement", "locked"])
def test_an_error_raised_at_before_commit_commits_nothing(decided: bool) -> None:
    """An error at the point (an interrupt, a fault armed to raise) commits nothing in either path (the locked
    path's transaction rolls back; the one statement is not sent), and the next append is not blocked. (A
    pipelined one statement, tried on 2026-12-02, would have committed here: leaving a pipeline syncs.)"""
    from orchestrator import faults

    store = TestPostgresStore()

    def interrupted() -> None:
        raise KeyboardInterrupt

    try:
        first = store.append("job-1", lambda h: [b'{"n":1}'])
        faults.arm("pg.append.before_commit", interrupted)
        expected = {"expected_seq": first.seq, "expected_last": first.last_line} if decided else {}
        with pytest.raises(KeyboardInterrupt):
            store.append("job-1", lambda h: [b'{"n":2}'], **expected)
        faults.disarm_all()
        assert [s.raw for s in store.read("job-1")] == [b'{"n":1}']
        assert store.append("job-1", lambda h: [b'{"n":3}'], expected_seq=1, expected_last=first.last_line).seq == 2
    finally:
        faults.disarm_all()
        store.close()


def test_worker_processes_on_one_database_run_each_job_exactly_once(shared, tmp_path: Path, cli_env) -> None:
    """Real ``scripts/worker.py`` processes, each with its own base path (its own "machine")."""
    orch, seed = shared
    jobs = [orch.submit("t.echo", i) for i in range(JOBS * 2)]
    procs = []
    for i in range(PROCESSES):
        machine = tmp_path / f"machine{i}"
        machine.mkdir()
        env = {**cli_env, "ORCH_SIGNING_KEY": seed, "ORCH_STORE_URL": orch.store.url, "PROJECT_ID": orch.project_id,
               "BASE_PATH": str(machine), "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
               "ORCH_HANDLERS": "worker_handlers"}
        procs.append(subprocess.Popen([sys.executable, str(REPO / "scripts" / "worker.py"), "--idle-exit", "--json",
                                       "--worker-id", f"proc{i}"], env=env, cwd=str(REPO),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    ran: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines[-1]["event"] == "worker_stopped"
        ran += [line["job_id"] for line in lines[:-1]]
    assert sorted(ran) == sorted(jobs), "each job ran once, in exactly one process"
    for job_id in jobs:
        assert [e.type for e in orch.load(job_id).events] == ["job_submitted", "job_claimed", "job_succeeded"]
    assert orch.queue.ready() == [] and orch.queue.running() == []
    assert verify_project(orch).ok
