"""``audit-timeline`` of a job an operator or a worker acts on while it reads: the audit log is read first, then the
job, so an entry can never name an event the job read does not hold, and the entries written since (an action between
the two reads, or one waited out between its event and its entry) are read on. Until 2026-12-07 (twenty-eighth
session) the job was read first: an action between the two reads left an entry naming an event the timeline did not
have, ``AUDIT_EVENT_MISSING`` (exit 7, "restore the file from backup"), on a healthy job. A job file really cut back is
still reported (below, and ``test_timeline_and_metrics.py``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

import jobstates as js
from orchestrator import Orchestrator, faults
from orchestrator.signing import new_seed
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.timeline import timeline

from backends import BACKENDS, orchestrator_on, with_raw_access
from helpers import after_first_call, read_while_an_action_is_in_flight


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("ORCH_SIGNING_KEY", new_seed())
    yield request.param
    faults.disarm_all()


@pytest.fixture
def orch(backend: str, base: Path) -> Iterator[Orchestrator]:
    with orchestrator_on(backend, base, keyring=None) as made:
        yield made


def statuses(tl: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(ln["source"], ln["what"], ln["status"]) for ln in tl["lines"]]


def reading_the_audit_log(stream: str, *args: Any, **kwargs: Any) -> bool:
    return stream == AUDIT_STREAM


def test_a_revise_right_after_the_timeline_read_the_job_is_no_missing_event(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race hunt's case: an operator revises the job while its timeline is read. What the timeline shows is
    whole, and verified: no entry naming an event it does not show."""
    job = js.awaiting_audit(orch)
    after_first_call(monkeypatch, orch, "read_job", lambda: orch.revise(job, "notes 1"))
    tl = timeline(orch, job_id=job)
    assert tl["ok"] and tl["problems"] == [] and tl["warnings"] == [], statuses(tl)
    assert {status for _, _, status in statuses(tl)} == {"ok"}
    assert statuses(timeline(orch, job_id=job))[-2:] == [("event", "job_revised", "ok"), ("audit", "revise", "ok")]


def test_a_revise_right_after_the_timeline_read_the_audit_log_shows_with_its_entry(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job read after the log holds an event whose entry the log's first read missed: the log is read on, so
    the event is shown with its entry, not as a crash's missing entry (``AUDIT_ENTRY_MISSING``)."""
    job = js.awaiting_audit(orch)
    after_first_call(monkeypatch, orch.store, "read", lambda: orch.revise(job, "notes 1"), when=reading_the_audit_log)
    tl = timeline(orch, job_id=job)
    assert tl["ok"] and tl["warnings"] == [], tl["warnings"]
    assert statuses(tl)[-2:] == [("event", "job_revised", "ok"), ("audit", "revise", "ok")]


def test_an_action_between_its_event_and_its_entry_is_waited_for_not_reported_missing(orch: Orchestrator) -> None:
    """The writer holds the job's pending lock from before its event until after its entry: the timeline, finding
    the entry missing, waits for that lock (as ``verify`` does), then reads the log on."""
    job = js.awaiting_audit(orch)
    tl, took = read_while_an_action_is_in_flight(lambda: orch.revise(job, "in flight"),
                                                 lambda: timeline(orch, job_id=job, heal=False))
    assert tl["ok"] and tl["warnings"] == [], tl["warnings"]
    assert statuses(tl)[-2:] == [("event", "job_revised", "ok"), ("audit", "revise", "ok")]
    assert took >= 0.5, "it waited for the action"


def test_an_entry_really_missing_is_still_reported(orch: Orchestrator) -> None:
    """An event whose writer died before its entry (its lock gone with it) is a warning, not waited for long."""
    job = js.awaiting_audit(orch)
    faults.arm("append.after_event", lambda: (_ for _ in ()).throw(RuntimeError("the writer dies")))
    with pytest.raises(RuntimeError):
        orch.revise(job, "its writer dies")
    tl = timeline(orch, job_id=job, heal=False)
    assert tl["ok"] and [w["code"] for w in tl["warnings"]] == ["AUDIT_ENTRY_MISSING"]
    assert statuses(tl)[-1] == ("event", "job_revised", "AUDIT_ENTRY_MISSING")
    healed = timeline(orch, job_id=job)  # with the project's key: the entry is written, and shown
    assert healed["ok"] and healed["warnings"] == [] and statuses(healed)[-1] == ("audit", "revise", "ok")


@pytest.mark.parametrize("head_record", ["dropped", "kept"])
def test_a_job_file_cut_back_is_still_an_entry_naming_a_missing_event(backend: str, base: Path,
                                                                      head_record: str) -> None:
    """A rollback of the job's file (its last events removed, with its head record or not): the entries of the
    removed events name events the history does not hold, a problem (exit 7), on every store."""
    with with_raw_access(backend, base, keyring=None) as (orch, raw):
        job = js.awaiting_audit(orch)
        orch.revise(job, "notes 1")
        orch.cancel(job, "stop")
        kept = raw.read_bytes(job).split(b"\n")[:3]  # up to audit_requested: the revise and the cancel cut
        raw.write_bytes(job, b"".join(line + b"\n" for line in kept))
        if head_record == "dropped":
            raw.drop_head_record(job)
        tl = timeline(orch, job_id=job)
    assert not tl["ok"]
    assert [(what, status) for source, what, status in statuses(tl) if source == "audit"] == [
        ("revise", "AUDIT_EVENT_MISSING"), ("cancel", "AUDIT_EVENT_MISSING")]
    assert [ln["what"] for ln in tl["lines"] if ln["source"] == "event"] == [
        "job_submitted", "job_claimed", "audit_requested"]
