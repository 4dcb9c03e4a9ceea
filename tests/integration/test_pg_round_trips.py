"""Round trips to PostgreSQL, counted where they happen: in libpq's trace of each connection.

A round trip is a run of messages the client sends followed by one it receives (it waited for the server).
Counting statements misses the waits psycopg adds itself: a ``transaction()`` inside a pipeline syncs as it starts,
before its COMMIT, at its COMMIT and as the pipeline ends, so the locked append (the audit log's, and a job
event's whose head moved), counted as two, was five until 2026-12-02.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from orchestrator import Orchestrator, audit
from orchestrator.errors import ConcurrencyError, LeaseLostError
from orchestrator.handlers import handler
from orchestrator.signing import line_hash, new_seed
from orchestrator.store.base import AUDIT_STREAM, Head

from backends import TestPostgresStore, orchestrator_on

pytestmark = pytest.mark.postgres


@handler("t.rt.ask")
def ask(ctx: Any) -> dict:
    return {"status": "needs_human", "summary": "a question", "question": "which one?"}


@contextlib.contextmanager
def round_trips(store: Any, tmp: Path) -> Iterator[list[int]]:
    """The round trips of the calls in the block, on the connections ``store`` holds idle when it starts (warm it up
    first, so that the calls find theirs in the pool), summed over them when it ends."""
    from psycopg import pq

    count: list[int] = []
    traces = []
    for i, conn in enumerate(list(store._idle)):  # noqa: SLF001 - the pooled connections the calls will take
        path = tmp / f"trace-{i}"
        f = open(path, "w")
        conn.pgconn.trace(f.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        traces.append((conn, f, path))
    yield count
    total = 0
    for conn, f, path in traces:
        if not conn.closed:
            conn.pgconn.untrace()
        f.close()
        sides = [line[0] for line in path.read_text().splitlines() if line[:2] in ("F\t", "B\t")]
        total += sum(1 for a, b in zip(sides, sides[1:]) if (a, b) == ("F", "B"))
    count.append(total)


@pytest.fixture
def pg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orchestrator]:
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    with orchestrator_on("postgres", tmp_path, keyring=None) as orch:
        yield orch


def waiting_jobs(orch: Orchestrator, n: int) -> list[str]:
    jobs = [orch.submit("t.rt.ask", i) for i in range(n)]
    assert orch.worker(worker_id="w", lease_seconds=30).run(max_jobs=n, idle_exit=True) == n
    return jobs


def test_an_audit_entry_takes_two_round_trips_and_an_audited_resume_three(pg: Orchestrator, tmp_path: Path) -> None:
    """The audit log's append cannot know its head before it locks it (every writer of the project appends there):
    one round trip locks the row and reads the head with the log's head record (``audit.refuse_cut``: no entry is
    written over a cut it shows), the other sends the entry and COMMIT. A resume: the job's read, then its pending
    lock, event, entry and unlock in two (``PostgresStore.append_audited``). Before 2026-12-02: 5 and 9 (the lock, the
    event, the entry's 5, the unlock, one by one); 6 with the entry's two, one by one; 3 and 4 while the head record
    was read on another connection (2026-12-02 to 2026-12-07)."""
    jobs = waiting_jobs(pg, 3)
    pg.resume(jobs[0], "warm up")  # two connections pooled: the pending lock's and the appends'
    with round_trips(pg.store, tmp_path) as entry:
        audit.record(pg, job_id=jobs[1], action="run_refused", actor="me", note="a note")
    with round_trips(pg.store, tmp_path) as resume:
        pg.resume(jobs[2], "blue")
    assert entry == [2]
    assert resume == [3]
    assert [json.loads(line.raw)["data"]["action"] for line in pg.store.read(AUDIT_STREAM)] == [
        "resume", "run_refused", "resume"]


def test_healing_many_jobs_whose_entries_are_there_looks_their_markers_up_in_one_round_trip(
        pg: Orchestrator, tmp_path: Path) -> None:
    """What ``metrics`` and ``audit-timeline`` ask before they read (``audit.heal_quietly``, up to 500 jobs at a time),
    and every control action of its job: one marker look-up per audited event was one round trip each."""
    jobs = waiting_jobs(pg, 6)
    for job in jobs:
        pg.resume(job, "go")
    views = [pg.load(job) for job in jobs]
    assert audit.heal(pg, views) == []  # warm up: the connection pooled
    with round_trips(pg.store, tmp_path) as looked_up:
        assert audit.heal(pg, views) == []
    assert looked_up == [1]
    pg.store.delete_aux(audit.MARKERS_AREA, line_hash(views[2].stream.lines[-1].raw))  # the resume's marker
    assert [u.job_id for u in audit.unmarked(pg, views)] == [jobs[2]]  # the one marker lost is found among them


@pytest.mark.parametrize("refusal", ["concurrent", "fenced", "nothing-to-write", "builder-raises"])
def test_a_locked_append_that_writes_nothing_leaves_its_connection_idle_and_the_next_append_commits(
        refusal: str) -> None:
    """The locked path sends BEGIN and COMMIT itself (psycopg's ``transaction()`` waited for the server four times):
    whatever ends it early, a refusal of ours or the server's (the fence trigger), it must not hand back to the pool
    a connection inside a transaction, where the next append's statement would never commit."""
    store = TestPostgresStore()
    other = TestPostgresStore(store.project)  # another machine, to see what committed
    try:
        first = store.append("job-1", lambda h: [b'{"n":1}'], fence=5)
        attempts = {
            "concurrent": lambda: store.append("job-1", lambda h: [b'{"n":2}'], expected_seq=0),
            "fenced": lambda: store.append("job-1", lambda h: [b'{"n":2}'], fence=4),
            "nothing-to-write": lambda: store.append("job-1", lambda h: []),
            "builder-raises": lambda: store.append("job-1", lambda h: [b"two\nlines"]),
        }
        raised = {"concurrent": ConcurrencyError, "fenced": LeaseLostError, "builder-raises": ValueError}
        if refusal in raised:
            with pytest.raises(raised[refusal]):
                attempts[refusal]()
        else:
            assert attempts[refusal]() == first
        idle = list(store._idle)  # noqa: SLF001
        assert idle and all(conn.info.transaction_status.name == "IDLE" for conn in idle)
        for i in range(len(idle) + 1):  # whichever pooled connection it takes: it commits
            store.append(AUDIT_STREAM, lambda h, i=i: [f'{{"entry":{i}}}'.encode()])
        assert [s.raw for s in other.read("job-1")] == [b'{"n":1}']
        assert len(other.read(AUDIT_STREAM)) == len(idle) + 1, "every append after the refusal committed"
        assert other.append("job-1", lambda h: [b'{"n":2}'], expected_seq=1) == Head(2, b'{"n":2}'), "row not held"
    finally:
        other.close()
        store.close()


# -- the audited append in two round trips keeps the guarantees of the calls one by one ---------------------------
def _lock_is_free(orch: Orchestrator, job_id: str) -> bool:
    """Whether another session can take the job's pending lock now (and lets it go at once)."""
    from orchestrator.store.postgres import connect

    key = orch.store._lock_key(audit.pending_lock(job_id))  # noqa: SLF001
    conn = connect(orch.store.url, autocommit=True)
    try:
        free = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if free:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return free
    finally:
        conn.close()


def _entries(orch: Orchestrator, job_id: str) -> list[dict]:
    return [r for r in (json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)) if r.get("job_id") == job_id]


def _pool_is_idle(orch: Orchestrator) -> bool:
    idle = list(orch.store._idle)  # noqa: SLF001
    return bool(idle) and all(conn.info.transaction_status.name == "IDLE" for conn in idle)


@pytest.mark.parametrize("failure", ["job-changed", "fenced", "between-raises"])
def test_an_audited_append_that_fails_writes_no_entry_without_its_event_and_lets_every_lock_go(
        pg: Orchestrator, failure: str) -> None:
    """The event is refused (the job changed since it was read; a superseded worker's epoch, refused by the server in
    the middle of the pipeline): no event, no entry. Or it committed and what runs between it and its entry failed:
    the event stands alone, and the next command heals it once. Either way the pending lock and the audit log's row are
    free again, and the connection goes back to the pool idle."""
    from orchestrator import faults

    [job] = waiting_jobs(pg, 1)
    view = pg.load(job)
    before = [line.raw for line in pg.store.read(job)]
    if failure == "job-changed":
        pg.store.append(job, lambda h: [b'{"not":"signed"}'], expected_seq=view.head.seq)  # behind the view's back
        with pytest.raises(ConcurrencyError):
            pg.append(view, job, [("job_resumed", {"answer": "x"})], audit=("resume", "x"))
        assert len(pg.store.read(job)) == len(before) + 1 and _entries(pg, job) == []
    elif failure == "fenced":
        with pytest.raises(LeaseLostError):
            pg.append(view, job, [("job_cancelled", {"reason": "late"})], audit=("cancel", "late"), fence=0)
        assert [line.raw for line in pg.store.read(job)] == before and _entries(pg, job) == []
    else:
        faults.arm("append.after_event", lambda: (_ for _ in ()).throw(RuntimeError("between")))
        try:
            with pytest.raises(RuntimeError):
                pg.resume(job, "blue")
        finally:
            faults.disarm_all()
        assert pg.status(job).state == "queued" and _entries(pg, job) == [], "the event alone"
    assert _lock_is_free(pg, job) and _pool_is_idle(pg)
    assert pg.store.append(AUDIT_STREAM, lambda h: [b'{"probe":1}']).seq == len(pg.store.read(AUDIT_STREAM))
    if failure == "between-raises":
        assert pg.resume(job, "blue").already_applied
        [healed] = _entries(pg, job)
        assert healed["data"]["healed"] is True and healed["data"]["action"] == "resume"


@pytest.mark.parametrize("point, entry", [("append.after_event", False), ("append.after_audit_entry", True)])
def test_a_resume_killed_between_its_event_and_its_entry_on_postgres_is_healed_once(
        pg: Orchestrator, cli_env: dict[str, str], point: str, entry: bool) -> None:
    """Killed with its event committed and the entry's transaction open (it holds the audit log's row and the pending
    lock): the server rolls that back and lets both go; the event stands, and the next command writes its entry."""
    import subprocess
    import sys

    from helpers import REPO

    [job] = waiting_jobs(pg, 1)
    env = {**cli_env, "ORCH_SIGNING_KEY": os.environ["ORCH_SIGNING_KEY"], "ORCH_STORE_URL": pg.store.url,
           "PROJECT_ID": pg.project_id, "ORCH_HANDLERS": "", "ORCH_CRASH_AT": point}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "control.py"), "resume", job, "blue"], env=env,
                          capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert proc.returncode == -9, proc.stderr
    assert pg.status(job).state == "queued", "the event is the truth"
    assert len(_entries(pg, job)) == (1 if entry else 0)
    assert pg.resume(job, "blue").already_applied  # the locks were let go with the dead session: no wait
    [written] = _entries(pg, job)
    assert written["data"].get("healed", False) is not entry
    from orchestrator.integrity import verify_project

    report = verify_project(pg)
    assert report.ok and not report.warnings, (report.problems, report.warnings)
