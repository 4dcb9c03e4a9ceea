"""``status --all --state S`` reads only the jobs in those states: the jobs cache (``projection``) picks them, each
is then read and verified as ``status`` reads it, so a row never decides what is shown."""
from __future__ import annotations

from pathlib import Path

import pytest

import jobstates as js
from orchestrator import Orchestrator, projection
from orchestrator.signing import Keyring

from backends import BACKENDS, orchestrator_on


@pytest.fixture(params=BACKENDS)
def orch(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


def failed_job(orch: Orchestrator) -> str:
    job_id = js.running(orch, kind="t.echo", input={"n": "failing"})
    js.finish(orch, job_id, "job_failed", {"error_code": "HANDLER_ERROR", "error": "boom"})
    return job_id


def every_status(orch: Orchestrator) -> dict[str, str | None]:
    return {job_id: orch.status(job_id).state for job_id in orch.store.job_ids()}


def test_listing_by_state_lists_what_every_jobs_status_says_as_the_jobs_change(orch: Orchestrator) -> None:
    queued = [orch.submit("t.echo", i) for i in range(3)]
    asked, failed = js.waiting_human(orch), failed_job(orch)
    for state in ("queued", "waiting_human", "failed", "succeeded"):
        assert {s.job_id for s in orch.jobs([state])} == {j for j, st in every_status(orch).items() if st == state}
    assert {s.job_id for s in orch.jobs(["queued", "failed"])} == {*queued, failed}
    orch.resume(asked, "yes")  # queued again, after the cache saw it waiting
    orch.cancel(queued[0], "not needed")
    assert {s.job_id for s in orch.jobs(["queued"])} == {queued[1], queued[2], asked}
    assert [s.job_id for s in orch.jobs(["cancelled"])] == [queued[0]]
    assert orch.jobs(["waiting_human"]) == []


def test_listing_by_state_reads_only_the_jobs_in_that_state(orch: Orchestrator, monkeypatch) -> None:
    for i in range(12):
        orch.submit("t.echo", i)
    failed = failed_job(orch)
    assert [s.job_id for s in orch.jobs(["failed"])] == [failed]  # the cache made (every job read once)
    read: list[str] = []
    real = orch.load
    monkeypatch.setattr(orch, "load", lambda job_id, **kw: read.append(job_id) or real(job_id, **kw))
    assert [s.job_id for s in orch.jobs(["failed"])] == [failed]
    assert read == [failed]  # before: all 13


def test_a_warm_jobs_cache_reads_no_jobs_lines_on_any_backend(orch: Orchestrator, monkeypatch) -> None:
    """Its fingerprints come from a listing (files: size and mtime; PostgreSQL: each stream's head), not from the
    jobs: on PostgreSQL the cache read every job whole to count its lines, a round trip per job (2,000 jobs: 0.47 s
    warm; now 8 ms), and ``metrics`` on 100k jobs would have taken ~20 s."""
    jobs = [orch.submit("t.echo", i) for i in range(4)]
    projection.refresh(orch)
    read: list[str] = []
    for name in ("read", "read_with_aux", "first_line"):
        real = getattr(orch.store, name)
        monkeypatch.setattr(orch.store, name, lambda stream, *a, _real=real, **kw: read.append(stream) or _real(
            stream, *a, **kw))
    assert projection.refresh(orch).replayed == 0 and read == []
    orch.cancel(jobs[1], "not needed")
    assert projection.refresh(orch).replayed == 1 and set(read) == {jobs[1]}  # the job that changed, alone


def test_listing_by_kind_reads_only_the_jobs_of_that_kind(orch: Orchestrator, monkeypatch) -> None:
    """``status --all --kind K`` (with or without ``--state``): the cache's kind column picks the jobs, as the state
    column does; before, a listing by kind alone read every job of the project."""
    echoes = [orch.submit("t.echo", i) for i in range(6)]
    reports = [orch.submit("report", i) for i in range(2)]
    failed = failed_job(orch)  # t.echo
    orch.cancel(reports[0], "not needed")
    assert {s.job_id for s in orch.jobs(kinds=["report"])} == set(reports)  # the cache made (every job read once)
    read: list[str] = []
    real = orch.load
    monkeypatch.setattr(orch, "load", lambda job_id, **kw: read.append(job_id) or real(job_id, **kw))
    assert {s.job_id for s in orch.jobs(kinds=["report"])} == set(reports) and sorted(read) == sorted(reports)
    read.clear()
    assert [s.job_id for s in orch.jobs(["failed"], kinds=["t.echo"])] == [failed] and read == [failed]
    read.clear()
    assert [s.job_id for s in orch.jobs(["queued"], kinds=["report"])] == [reports[1]] and read == [reports[1]]
    read.clear()
    assert {s.job_id for s in orch.jobs(kinds=["t.echo", "nothing"])} == {*echoes, failed} and len(read) == 7
    assert orch.jobs(kinds=["nothing"]) == []


def test_a_row_that_names_another_kind_does_not_list_the_job(orch: Orchestrator, monkeypatch) -> None:
    """A row is only a hint: each job listed is read and its kind checked again."""
    jobs = [orch.submit("t.echo", i) for i in range(3)]
    projection.refresh(orch)
    real = projection.Columns.load

    def every_row_says_report(data: bytes):
        cols = real(data)
        cols.kinds[:] = ["report"] * len(cols.kinds)
        return cols

    monkeypatch.setattr(projection.Columns, "load", staticmethod(every_row_says_report))
    assert orch.jobs(kinds=["report"]) == []
    assert {s.job_id for s in orch.jobs(kinds=["t.echo"])} == set()  # the rows hide them: as documented
    monkeypatch.undo()
    assert {s.job_id for s in orch.jobs(kinds=["t.echo"])} == set(jobs)


def test_a_row_that_names_another_state_does_not_list_the_job(orch: Orchestrator, monkeypatch) -> None:
    """The cache is derived and may be edited or stale: what is listed is each job's verified state."""
    jobs = [orch.submit("t.echo", i) for i in range(3)]
    failed = failed_job(orch)
    real = projection.refresh

    def every_row_failed(o, **kw):
        out = real(o, **kw)
        out.columns.state[:] = bytes([projection.STATE_CODE["failed"]]) * len(out.columns.state)
        return out

    monkeypatch.setattr(projection, "refresh", every_row_failed)
    assert [s.job_id for s in orch.jobs(["failed"])] == [failed]
    assert len(jobs) == 3
