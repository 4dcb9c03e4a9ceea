"""``orch_streams``, PostgreSQL's index of streams, is derived from ``orch_events``: a row deleted or edited by hand
loses nothing and hides nothing (docs/postgres.md, "Tables").

Until 2026-12-06 an append took its head from the row: a job whose row was deleted, or set back, got
``CONCURRENT_APPEND`` at every append ("run the command again", for ever: never claimed, never cancelled), and an
audit entry was written after an audit log's last row deleted by hand (``audit.refuse_cut`` compared the log's head
record with the row, which still named that row). And every listing read the row: such a job was out of ``verify``,
``status --all``, ``metrics`` and ``export`` (a move to files lost it).
"""
from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from orchestrator import Orchestrator
from orchestrator.errors import IntegrityError
from orchestrator.handlers import handler
from orchestrator.integrity import STREAM_INDEX_STALE, verify_project
from orchestrator.signing import new_seed
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.store.postgres import connect
from orchestrator.transfer import export_project

from backends import orchestrator_on

pytestmark = pytest.mark.postgres


@handler("t.si.ask")
def ask(ctx: Any) -> dict:
    if ctx.answers:
        return {"status": "done", "summary": f"answered {ctx.answers[-1]}"}
    return {"status": "needs_human", "summary": "a question", "question": "which one?"}


@pytest.fixture
def pg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Orchestrator]:
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    with orchestrator_on("postgres", tmp_path, keyring=None) as orch:
        yield orch


def sql(orch: Orchestrator, statement: str, *args: Any) -> list[Any]:
    """``statement`` run by hand, as an operator with write access to the database would (``%(p)s``: the project)."""
    conn = connect(orch.store.url, autocommit=True)
    try:
        cur = conn.execute(statement, {"p": orch.store.project, **{f"a{i}": a for i, a in enumerate(args)}})
        return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def row(orch: Orchestrator, stream: str) -> tuple[int, int] | None:
    """The stream's row in orch_streams: (seq, fence), or None."""
    rows = sql(orch, "SELECT seq, fence FROM orch_streams WHERE project = %(p)s AND stream = %(a0)s", stream)
    return tuple(rows[0]) if rows else None


def delete_row(orch: Orchestrator, stream: str) -> None:
    sql(orch, "DELETE FROM orch_streams WHERE project = %(p)s AND stream = %(a0)s", stream)


def set_row_back(orch: Orchestrator, stream: str) -> None:
    """The row's head one event back: the seq and last line of the line before the last, as a hand (or a restore of
    that table alone) would leave it."""
    line = orch.store.read(stream)[-2].raw
    sql(orch, "UPDATE orch_streams SET seq = seq - 1, last_line = %(a1)s WHERE project = %(p)s AND stream = %(a0)s",
        stream, line)


def stale(orch: Orchestrator) -> dict[str, str]:
    return {w.stream: w.message for w in verify_project(orch).warnings if w.code == STREAM_INDEX_STALE}


def test_a_job_whose_row_was_deleted_is_verified_listed_counted_exported_and_claimed(pg: Orchestrator) -> None:
    job, other = pg.submit("t.si.ask", 1), pg.submit("t.si.ask", 2)
    delete_row(pg, job)
    report = verify_project(pg)
    assert report.ok and report.streams == 2  # "OK: 1 stream(s)" until 2026-12-06
    assert "has no row in orch_streams" in stale(pg)[job]
    assert {s.job_id for s in pg.jobs()} == {job, other}
    assert {s.job_id for s in pg.jobs(states=["queued"])} == {job, other}  # the jobs cache: by its head record
    assert pg.metrics(rebuild=True).jobs == 2 and pg.metrics().jobs == 2
    out = io.BytesIO()
    assert export_project(pg, out)["streams"] == 2
    assert job.encode() in out.getvalue()
    # claimed (it was left for ever, each claim CONCURRENT_APPEND), and its row is back, the events' head
    assert pg.worker(worker_id="w", lease_seconds=30).run(max_jobs=2, idle_exit=True) == 2
    assert pg.status(job).state == "waiting_human" and row(pg, job) == (len(pg.store.read(job)), 1)
    assert stale(pg) == {} and verify_project(pg).ok
    assert {s.job_id for s in pg.jobs(states=["waiting_human"])} == {job, other}


@pytest.mark.parametrize("edit", ["deleted", "set back"])
def test_verify_of_one_job_compares_its_row_too(pg: Orchestrator, edit: str) -> None:
    job, other = pg.submit("t.si.ask", 1), pg.submit("t.si.ask", 2)
    assert pg.worker(worker_id="w", lease_seconds=30).run(max_jobs=1, idle_exit=True) == 1
    (delete_row if edit == "deleted" else set_row_back)(pg, job)
    [warning] = verify_project(pg, job).warnings  # until 2026-12-06 only a whole project's verify compared the rows
    assert warning.code == STREAM_INDEX_STALE and warning.stream == job
    assert ("has no row" if edit == "deleted" else "its row in orch_streams says 2") in warning.message
    assert verify_project(pg, other).warnings == [] and verify_project(pg, job).ok


@pytest.mark.parametrize("edit", ["deleted", "set back"])
def test_a_control_action_on_a_job_whose_row_was_edited_is_applied_and_rebuilds_the_row(
        pg: Orchestrator, edit: str) -> None:
    job = pg.submit("t.si.ask", 1)
    assert pg.worker(worker_id="w", lease_seconds=30).run(max_jobs=1, idle_exit=True) == 1
    (delete_row if edit == "deleted" else set_row_back)(pg, job)
    assert job in stale(pg)
    result = pg.resume(job, "blue")  # CONCURRENT_APPEND (exit 6) at every try until 2026-12-06
    assert result.applied and pg.status(job).state == "queued"
    lines = pg.store.read(job)
    # the fence of a row set back is kept; a row made again starts at 0, until the next claim moves it
    assert row(pg, job) == (len(lines), 0 if edit == "deleted" else 1)
    assert pg.store.indexed_heads()[job] == (len(lines), hashlib.sha256(lines[-1].raw).digest())
    assert pg.worker(worker_id="w", lease_seconds=30).run(max_jobs=1, idle_exit=True) == 1
    assert pg.status(job).state == "succeeded" and row(pg, job)[1] == 2
    assert stale(pg) == {} and verify_project(pg).ok


def test_a_cancel_of_a_queued_job_whose_row_was_deleted_is_applied_with_its_audit_entry(pg: Orchestrator) -> None:
    job = pg.submit("t.si.ask", 1)
    delete_row(pg, job)
    assert pg.cancel(job, "not needed").applied
    assert pg.status(job).state == "cancelled"
    [entry] = [json.loads(line.raw) for line in pg.store.read(AUDIT_STREAM)]
    assert entry["job_id"] == job and entry["data"]["action"] == "cancel"
    assert verify_project(pg).ok and stale(pg) == {}


def test_no_audit_entry_is_written_over_an_audit_log_whose_last_row_alone_was_deleted(pg: Orchestrator) -> None:
    """The row in orch_streams still named the deleted entry, and the entry was checked against it: the log held
    entries 1 and 3 after (SEQUENCE_MISMATCH), its head record rewritten over the cut (docs/format.md: "No entry is
    appended to a log its record says was cut")."""
    from orchestrator import audit as audit_log

    first, second, third = (pg.submit("t.si.ask", i) for i in range(3))
    pg.cancel(first, "one")
    pg.cancel(second, "two")
    sql(pg, "DELETE FROM orch_events WHERE project = %(p)s AND stream = %(a0)s AND seq = 2", AUDIT_STREAM)
    kept = pg.store.read(AUDIT_STREAM)
    assert [p.code for p in verify_project(pg).problems] == ["TRUNCATED"]
    with pytest.raises(IntegrityError, match="TRUNCATED") as refused:
        pg.cancel(third, "three")
    assert refused.value.exit_code == 7
    assert pg.status(third).state == "cancelled"  # the event commits first, on its own (docs/postgres.md)
    with pytest.raises(IntegrityError, match="TRUNCATED"):
        audit_log.record(pg, job_id=third, action="run_refused", actor="w", note="four")
    assert pg.store.read(AUDIT_STREAM) == kept and row(pg, AUDIT_STREAM)[0] == 2  # nothing written, the row as left
    assert [p.code for p in verify_project(pg).problems] == ["TRUNCATED"]


def renumber(orch: Orchestrator, stream: str, seq: int, to: int) -> list[Any]:
    """Row ``seq`` of ``stream`` numbered ``to``, its line untouched (an UPDATE of the ``seq`` column alone); the
    stream's rows (seq, line) after."""
    sql(orch, "UPDATE orch_events SET seq = %(a2)s WHERE project = %(p)s AND stream = %(a0)s AND seq = %(a1)s",
        stream, seq, to)
    return events(orch, stream)


def events(orch: Orchestrator, stream: str) -> list[Any]:
    return sql(orch, "SELECT seq, line FROM orch_events WHERE project = %(p)s AND stream = %(a0)s ORDER BY seq", stream)


def test_an_audit_row_renumbered_by_hand_fails_verify_and_no_entry_is_written_after_it(pg: Orchestrator) -> None:
    """Its line stood in its place, so verify passed (lines were numbered by position), and the next entry was sealed
    after the row's number: seq 5 written as line 3, the log failed verify for good, and every later action appended
    to it (docs/format.md: "No entry or event is appended over that evidence")."""
    from orchestrator import audit as audit_log

    first, second, third = (pg.submit("t.si.ask", i) for i in range(3))
    pg.cancel(first, "one")
    pg.cancel(second, "two")
    rows = renumber(pg, AUDIT_STREAM, 2, 4)
    [problem] = verify_project(pg).problems
    assert (problem.stream, problem.line, problem.code) == (AUDIT_STREAM, 2, "SEQUENCE_MISMATCH")
    assert "stored as number 4" in problem.message
    with pytest.raises(IntegrityError, match="renumbered by hand") as refused:
        pg.cancel(third, "three")
    assert refused.value.exit_code == 7 and refused.value.details["problems"][0]["code"] == "SEQUENCE_MISMATCH"
    assert pg.status(third).state == "cancelled"  # the event commits first, on its own (docs/postgres.md)
    with pytest.raises(IntegrityError, match="renumbered by hand"):
        audit_log.record(pg, job_id=third, action="run_refused", actor="w", note="four")
    assert events(pg, AUDIT_STREAM) == rows  # nothing written
    assert [p.code for p in verify_project(pg).problems] == ["SEQUENCE_MISMATCH"]


@pytest.mark.parametrize("to", [2, 9])
def test_a_job_row_renumbered_by_hand_fails_verify_and_the_job_is_neither_run_nor_changed(
        pg: Orchestrator, to: int) -> None:
    """Line 1 in its place, its row numbered 2 (where the next event goes: every append was CONCURRENT_APPEND, exit 6,
    the job queued for ever) or 9 (a worker ran it, writing rows 2 and 3 before it, and the job was lost)."""
    job = pg.submit("t.si.ask", 1)
    rows = renumber(pg, job, 1, to)
    [problem] = verify_project(pg).problems
    assert (problem.stream, problem.line, problem.code) == (job, 1, "SEQUENCE_MISMATCH")
    assert pg.status(job).integrity_error is not None
    assert pg.worker(worker_id="w", lease_seconds=30).run(max_jobs=1, idle_exit=True) == 0
    with pytest.raises(IntegrityError, match=f"stored as number {to}"):
        pg.cancel(job, "stop")
    assert events(pg, job) == rows


def test_a_locked_append_after_a_last_row_renumbered_by_hand_writes_nothing(pg: Orchestrator) -> None:
    """The store's own check, for an intruder who renumbered the row in orch_streams too (so the two agree): an append
    that finds its head under the lock (``pg_append._locked_head``) is refused, whoever calls it."""
    job = pg.submit("t.si.ask", 1)
    rows = renumber(pg, job, 1, 3)
    sql(pg, "UPDATE orch_streams SET seq = 3 WHERE project = %(p)s AND stream = %(a0)s", job)
    with pytest.raises(IntegrityError, match="numbered 3, its line says 1"):
        pg.store.append(job, lambda head: [b"{}"])
    assert events(pg, job) == rows and row(pg, job)[0] == 3


@pytest.mark.parametrize("edit", ["deleted", "rewritten", "renumbered"])
def test_metrics_and_a_state_listing_see_an_event_row_edited_by_hand_that_left_the_jobs_head_as_it_was(
        pg: Orchestrator, edit: str) -> None:
    """The jobs cache re-reads a job whose fingerprint changed; on PostgreSQL that was the head in orch_streams alone,
    which a hand edit of orch_events leaves as it was: metrics said 0 integrity errors (``--fail-on critical`` exit 0)
    where files say 1, until a ``--rebuild``. Migration 0006's triggers count such edits in the stream's row."""
    job, other = pg.submit("t.si.ask", 1), pg.submit("t.si.ask", 2)
    assert pg.worker(worker_id="w", lease_seconds=30).run(max_jobs=2, idle_exit=True) == 2
    assert pg.metrics().integrity_errors == 0 and len(pg.jobs(states=["waiting_human"])) == 2  # the cache is warm
    assert not any(pg.store.fingerprints()[2])  # nothing the orchestrator does is counted
    last = len(pg.store.read(job))
    if edit == "deleted":
        sql(pg, "DELETE FROM orch_events WHERE project = %(p)s AND stream = %(a0)s AND seq = %(a1)s", job, last)
    elif edit == "rewritten":
        sql(pg, "UPDATE orch_events SET line = convert_to(replace(convert_from(line, 'UTF8'), 'a question', "
            "'A question'), 'UTF8') WHERE project = %(p)s AND stream = %(a0)s AND seq = %(a1)s", job, last)
    else:
        renumber(pg, job, last, last + 1)
    assert row(pg, job)[0] == last  # the head the cache compared with, as it was
    assert pg.metrics().integrity_errors == 1
    assert [s.job_id for s in pg.jobs(states=["waiting_human"]) if s.integrity_error is None] == [other]
