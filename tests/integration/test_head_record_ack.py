"""An event that is durable is acknowledged when a record written after it (its head record) is not.

On files a job's head record is written once its events are synced; when that write fails (a full disk, a
`heads/` it may not write) the store raises ``AuxNotWrittenError``, the events durable. Every append of the
orchestrator then goes on with a warning (``HEAD_RECORD_NOT_WRITTEN``), as after a crash between the two: the
record is behind its events, which reads and `verify` accept, and the job's next event writes it anew
(docs/decisions.md, "An event whose head record cannot be written is acknowledged"). The command lines:
tests/acceptance/test_head_record_ack_cli.py.
"""
from __future__ import annotations

import errno
import importlib
import json
import os
from pathlib import Path

import pytest

import jobstates as js
from orchestrator import Orchestrator
from orchestrator.errors import HEAD_RECORD_NOT_WRITTEN, AuxNotWrittenError, StorageError
from orchestrator.signing import canonical, line_hash
from orchestrator.store.base import AUDIT_STREAM, HEADS_AREA
from orchestrator.store.jsonl import JsonlStore

EXPIRED = "2020-01-01T00:00:00.000000Z"  # a lease long past: its worker is gone
importlib.import_module("worker_handlers")  # registers the t.* handlers


def refuse_head_records(monkeypatch: pytest.MonkeyPatch, orch: Orchestrator, count: int | None = 1,
                        area: str = "heads") -> list[int]:
    """The next ``count`` writes (every one, with None) of a job's head record fail as on a full disk: ``os.pwrite``
    of a slot in ``heads/`` raises ``ENOSPC``; the events, the audit log and its head record are written. Returns
    the list of refused writes (one item each), to show the fault fired. ``area="audit-head"``: the audit log's
    head record's writes instead."""
    heads = os.path.realpath(orch.settings.state_dir / area) + os.sep
    real, refused = os.pwrite, []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if (count is None or len(refused) < count) and os.readlink(f"/proc/self/fd/{fd}").startswith(heads):
            refused.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    return refused


def head_seq(orch: Orchestrator, job_id: str) -> int | None:
    """How many events the job's head record says it holds; None when it has none."""
    raw = orch.store.get_aux(HEADS_AREA, job_id)
    return None if raw is None else json.loads(raw)["seq"]


def codes(warnings: object) -> list[str]:
    return [w["code"] for w in warnings]  # type: ignore[attr-defined]


def verified(orch: Orchestrator, job_id: str) -> bool:
    """The job's history verifies (a head record behind its events is no problem), and no audited event of it misses
    its entry (``AUDIT_ENTRY_MISSING`` would be a warning)."""
    report = orch.verify(job_id)
    return report.ok and not report.warnings


# -- control actions ------------------------------------------------------------------------------------------------
class Died(BaseException):
    """The process dies between the event and its entry."""


def approved_without_its_entry(orch: Orchestrator) -> str:
    """A job approved by a process that died between the approval's event and its audit entry: the entry is missing."""
    from orchestrator import faults

    job = js.awaiting_audit(orch)
    faults.arm("append.after_event", lambda: (_ for _ in ()).throw(Died()))
    try:
        with pytest.raises(Died):
            orch.approve(job, "looks good")
    finally:
        faults.disarm_all()
    return job


def test_an_approve_whose_head_record_cannot_be_written_is_done_with_a_warning_and_its_entry_written(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Before: STORAGE_ERROR (exit 10, "nothing acknowledged"), the approval durable, and its audit entry not written
    (``append_audited`` stopped at the event's head record)."""
    job = js.awaiting_audit(orch)
    refused = refuse_head_records(monkeypatch, orch)
    result = orch.approve(job, "looks good")
    assert refused and result.applied and (result.event_seq, result.state) == (4, "succeeded")
    assert codes(result.warnings) == [HEAD_RECORD_NOT_WRITTEN] and codes(result.to_dict()["warnings"]) == codes(
        result.warnings)
    message = result.warnings[0]["message"]
    assert f"event 4 (job_approved) of job {job} and its audit entry are durable" in message
    assert f"heads/{job}: No space left on device" in message and message in caplog.text
    assert "Nothing is to be done again: such records are derived" in message and "symbolic link" not in message
    assert orch.status(job).state == "succeeded" and js.event_types(orch, job)[-1] == "job_approved"
    assert head_seq(orch, job) == 3  # behind its events, as after a crash between the two
    assert verified(orch, job) and orch.verify().ok  # its entry was written, and the audit log's head record
    again = orch.approve(job)  # an operator who repeats it writes nothing
    assert again.already_applied and not again.warnings and len(orch.load(job).events) == 4


def test_a_resume_whose_head_record_cannot_be_written_is_done_and_the_jobs_next_event_writes_its_record(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    job = js.waiting_human(orch, job_id=orch.submit("t.ask", {}))
    refuse_head_records(monkeypatch, orch)
    result = orch.resume(job, "blue")
    assert result.applied and result.state == "queued" and codes(result.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    assert head_seq(orch, job) == 3 and orch.status(job).state == "queued" and verified(orch, job)
    ran = orch.worker(worker_id="w").run_once()  # the claim, its next event, writes the record again
    assert ran is not None and (ran.job_id, ran.state, ran.warnings) == (job, "succeeded", [])
    assert head_seq(orch, job) == len(orch.load(job).events) == 6 and verified(orch, job)


def test_resume_from_chat_whose_head_record_cannot_be_written_is_done_with_the_warning(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    job = js.waiting_human(orch)
    refuse_head_records(monkeypatch, orch)
    result = orch.resume_from_chat(job, f"job_id: {job}; go ahead")
    assert result.applied and result.state == "queued" and codes(result.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    assert orch.resume_from_chat(job, f"job_id: {job}; go ahead").already_applied and verified(orch, job)


@pytest.mark.parametrize("planted", ["heads", "audit-head"])
def test_a_link_planted_in_a_head_records_place_after_the_read_leaves_the_action_done_with_the_warning(
        orch: Orchestrator, tmp_path: Path, planted: str) -> None:
    """A symbolic link put in the place of the job's head record (or the audit log's) between the action's read and
    its write: the event and its entry are durable, the record is never written through the link. Before: PATH_ESCAPE
    (exit 3, "nothing was written") with the approval durable; run again, it said ``already applied``."""
    from orchestrator import faults

    job = js.awaiting_audit(orch)
    place = orch.settings.state_dir / planted / (job if planted == "heads" else "audit")
    outside = tmp_path / "outside"
    outside.write_bytes(b"")

    def plant() -> None:
        place.parent.mkdir(exist_ok=True)  # the audit log's first entry makes its folder
        place.unlink(missing_ok=True)
        place.symlink_to(outside)

    nth = 1 if planted == "heads" else 2  # the job's append passes the point first, then its audit entry's
    faults.arm("store.append.before_aux", plant, nth=nth)
    try:
        result = orch.approve(job, "looks good")
    finally:
        faults.disarm_all()
    assert result.applied and result.state == "succeeded" and codes(result.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    message = result.warnings[0]["message"]
    assert f"{place} is a symbolic link" in message and "Nothing is to be done again: remove the symbolic link" in message
    assert outside.read_bytes() == b"" and place.is_symlink()  # never written through
    assert json.loads(orch.store.read(job)[-1].raw)["type"] == "job_approved"  # read raw: the link is a problem
    entries = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    assert [e["data"]["event_type"] for e in entries if e["job_id"] == job][-1] == "job_approved"
    # verify lists the link (with a job's, that job's entries name events it cannot read past the link)
    codes_found = [p.code for p in orch.verify().problems]
    assert codes_found[0] == "PATH_ESCAPE" and set(codes_found) <= {"PATH_ESCAPE", "AUDIT_EVENT_MISSING"}
    place.unlink()  # as the warning says: the record behind its events then, which reads accept
    assert orch.verify().ok and orch.status(job).state == "succeeded"


# -- the worker -----------------------------------------------------------------------------------------------------
def test_a_claim_whose_head_record_cannot_be_written_is_run_under_the_lease_its_event_holds(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim is durable: the job is claimed. Its lease is in the claim event (a run shorter than a heartbeat
    writes no lease record), so no other worker's stale recovery takes it before that expiry. Before: the claim
    raised STORAGE_ERROR (``worker --once`` exited 10) and the job, claimed, waited for its lease to expire, an
    attempt spent."""
    job = orch.submit("t.echo", {"x": 1})
    t = orch.clock()
    worker, other = orch.worker(worker_id="w", lease_seconds=30), orch.worker(worker_id="other")
    refuse_head_records(monkeypatch, orch)
    claim = worker.claim(now=t)
    assert claim is not None and codes(claim.view.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    assert orch.status(job).state == "running" and head_seq(orch, job) == 1 and verified(orch, job)
    assert other.recover_stale(now=t + 29) == []  # the claim's lease holds
    result = worker.execute(claim)
    assert (result.outcome, codes(result.warnings)) == ("succeeded", [HEAD_RECORD_NOT_WRITTEN])  # the claim's
    assert js.event_types(orch, job) == ["job_submitted", "job_claimed", "job_succeeded"]
    assert head_seq(orch, job) == 3 and verified(orch, job)  # the outcome wrote the record again


def test_an_outcome_whose_head_record_cannot_be_written_is_recorded_once_and_the_worker_goes_on(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: STORAGE_ERROR out of the outcome's append, which stopped the worker (exit 10) with the outcome
    durable."""
    asking, after = orch.submit("t.ask", {}), orch.submit("t.echo", {"x": 2})
    worker = orch.worker(worker_id="w")
    claim = worker.claim()
    assert claim is not None and claim.job_id == asking
    refuse_head_records(monkeypatch, orch)
    result = worker.execute(claim)
    assert (result.outcome, codes(result.warnings)) == ("waiting_human", [HEAD_RECORD_NOT_WRITTEN])
    assert js.event_types(orch, asking) == ["job_submitted", "job_claimed", "human_input_requested"]  # once
    assert orch.status(asking).question == "blue or green?" and head_seq(orch, asking) == 2 and verified(orch, asking)
    ran = worker.run_once()  # it goes on claiming
    assert ran is not None and (ran.job_id, ran.state) == (after, "succeeded")
    resumed = orch.resume(asking, "green")  # the job's next event writes its record again
    assert not resumed.warnings and head_seq(orch, asking) == 4 and verified(orch, asking)


def test_a_looping_worker_whose_head_records_cannot_be_written_runs_every_job(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A head record is derived: a worker that cannot write them still writes the truth, each append with its
    warning; a store that refuses the events themselves stops it (STORAGE_ERROR) as before."""
    jobs = [orch.submit("t.echo", {"x": n}) for n in range(2)]
    refused = refuse_head_records(monkeypatch, orch, count=None)
    results: list = []
    assert orch.worker(worker_id="w").run(idle_exit=True, on_result=results.append) == 2
    assert len(refused) == 4 and [r.state for r in results] == ["succeeded", "succeeded"]
    assert [codes(r.warnings) for r in results] == [[HEAD_RECORD_NOT_WRITTEN] * 2] * 2
    assert all(head_seq(orch, job) == 1 and verified(orch, job) for job in jobs)


def test_a_stale_recovery_whose_head_record_cannot_be_written_is_recorded_with_its_entry(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    job = orch.submit("t.echo", {"x": 1})
    js.claim(orch, job, "run-dead", worker="dead", lease=EXPIRED)
    refuse_head_records(monkeypatch, orch)
    worker = orch.worker(worker_id="w")
    assert worker.recover_stale() == [job]
    assert [(r["job_id"], r["to"], codes(r["warnings"])) for r in worker.recovered] == [
        (job, "queued", [HEAD_RECORD_NOT_WRITTEN])]
    assert orch.status(job).state == "queued" and head_seq(orch, job) == 2 and verified(orch, job)


# -- healed audit entries ----------------------------------------------------------------------------------------------
def test_an_action_whose_healed_entrys_records_cannot_be_written_goes_on_with_the_warning(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash left an approval without its entry; the operator approves again: the heal writes the entry, and the
    log's head record after it fails (a full disk). Before: STORAGE_ERROR, exit 10, the entry durable all the same.
    Now the entry's warning comes with the action's answer (``already applied``), and the next heal writes only the
    entry's marker: the entry is never written twice."""
    from orchestrator import audit

    job = approved_without_its_entry(orch)
    assert audit.unmarked(orch, [orch.load(job)])  # the approval has no entry
    refused = refuse_head_records(monkeypatch, orch, area="audit-head")
    again = orch.approve(job, "looks good")
    assert refused and again.already_applied and codes(again.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    message = again.warnings[0]["message"]
    assert f"the healed audit entry of event 4 (job_approved) of job {job} is durable" in message
    assert "audit-head/audit: No space left on device" in message
    monkeypatch.undo()
    assert audit.unmarked(orch, [orch.load(job)])  # its marker was not written (it comes after the log's record)
    healed: list = []
    assert audit.heal(orch, [orch.load(job)], warnings=healed) == [] and healed == []  # only the marker, now
    assert not audit.unmarked(orch, [orch.load(job)])
    entries = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    assert [e["data"]["event_type"] for e in entries if e["job_id"] == job].count("job_approved") == 1
    assert verified(orch, job) and orch.verify().ok


def test_a_healed_entry_whose_log_record_meets_a_planted_link_says_to_remove_the_link(
        orch: Orchestrator, tmp_path: Path) -> None:
    """As above, with a symbolic link planted in the log's head record's place after the heal's check: the warning
    says to remove the link (the next action is refused until then), not that the next heal mends it alone."""
    from orchestrator import audit, faults

    job = approved_without_its_entry(orch)
    place, outside = orch.settings.state_dir / "audit-head" / "audit", tmp_path / "outside"
    outside.write_bytes(b"")

    def plant() -> None:
        place.parent.mkdir(exist_ok=True)
        place.unlink(missing_ok=True)
        place.symlink_to(outside)

    faults.arm("store.append.before_aux", plant)  # the heal's entry is the only append of an action already applied
    try:
        again = orch.approve(job, "looks good")
    finally:
        faults.disarm_all()
    assert again.already_applied and codes(again.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    message = again.warnings[0]["message"]
    assert "the healed audit entry of event 4 (job_approved)" in message and f"{place} is a symbolic link" in message
    assert "Nothing is to be done again: remove the symbolic link it names" in message
    assert outside.read_bytes() == b""  # never written through
    place.unlink()  # as the warning says; then the next heal writes only the marker
    assert audit.heal(orch, [orch.load(job)]) == [] and not audit.unmarked(orch, [orch.load(job)])
    assert orch.verify().ok


def test_an_action_whose_heal_cannot_write_a_lost_marker_goes_on_with_the_warning(orch: Orchestrator) -> None:
    """The entry is in the log and only its marker was lost (a crash after the entry): the heal writes the marker. When
    that write fails (a file in ``audited/``'s place), it is a warning, not STORAGE_ERROR: the marker is derived, and
    the next heal writes it."""
    import shutil

    from orchestrator import audit

    job = js.awaiting_audit(orch)
    assert orch.approve(job, "looks good").applied
    markers = orch.settings.state_dir / audit.MARKERS_AREA
    shutil.rmtree(markers)  # every marker lost, as a crash can lose one
    markers.write_text("an operator's file")
    again = orch.approve(job, "looks good")
    assert again.already_applied and codes(again.warnings) == [HEAD_RECORD_NOT_WRITTEN]
    message = again.warnings[0]["message"]
    assert f"the audit entry of event 4 (job_approved) of job {job} is in the log, but its marker" in message
    assert f"{markers} is a file where a folder belongs" in message
    markers.unlink()
    assert audit.heal(orch, [orch.load(job)]) == [] and not audit.unmarked(orch, [orch.load(job)])
    entries = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    assert [e["data"]["event_type"] for e in entries if e["job_id"] == job].count("job_approved") == 1


# -- catching a record up (audit heal) -------------------------------------------------------------------------------
def test_a_finished_jobs_record_left_behind_is_caught_up_and_one_ahead_of_the_view_is_left(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``head_records.catch_up_jobs`` (what `audit heal` runs, tests/acceptance/test_head_record_ack_cli.py): a record
    behind the events a verified read found is written at their head; one that names as many is left, and so is a
    missing one once the job has grown past the read (the write happens under the append lock, only at that head)."""
    from orchestrator.head_records import catch_up_jobs

    job = js.awaiting_audit(orch)
    refuse_head_records(monkeypatch, orch)
    assert codes(orch.approve(job, "ok").warnings) == [HEAD_RECORD_NOT_WRITTEN]
    monkeypatch.undo()
    assert head_seq(orch, job) == 3
    assert catch_up_jobs(orch.store, [orch.load(job)]) == [job] and head_seq(orch, job) == 4 and verified(orch, job)
    assert catch_up_jobs(orch.store, [orch.load(job)]) == []  # up to date: nothing written

    queued = orch.submit("t.echo", {})
    read_before = orch.load(queued)
    orch.cancel(queued, "no")  # event 2 and its record, after the read
    orch.store.delete_aux(HEADS_AREA, queued)  # and the record lost since
    assert catch_up_jobs(orch.store, [read_before]) == [] and head_seq(orch, queued) is None  # never at a past head
    assert catch_up_jobs(orch.store, [orch.load(queued)]) == [queued] and head_seq(orch, queued) == 2


def audit_head_seq(orch: Orchestrator) -> int | None:
    raw = orch.store.get_aux("audit-head", "audit")
    return None if raw is None else json.loads(raw)["seq"]


def test_the_audit_logs_record_left_behind_is_caught_up_only_over_entries_that_verify(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``head_records.catch_up_audit_log`` (`audit heal`): the log's record, behind its last entry after a refused
    write, is written at the log's end; not when up to date; and never over an entry that does not verify (a line
    appended by hand), since a read takes the entries a record names on its word."""
    from orchestrator.head_records import catch_up_audit_log

    job = js.awaiting_audit(orch)
    orch.cancel(orch.submit("t.echo", {}), "the log's first entry, and its record")
    refuse_head_records(monkeypatch, orch, area="audit-head")
    assert codes(orch.approve(job, "ok").warnings) == [HEAD_RECORD_NOT_WRITTEN]
    monkeypatch.undo()
    entries = len(orch.store.read(AUDIT_STREAM))
    assert audit_head_seq(orch) == entries - 1  # behind the approval's entry
    assert catch_up_audit_log(orch) and audit_head_seq(orch) == entries
    assert orch.verify().ok
    assert not catch_up_audit_log(orch)  # up to date: nothing written

    # an entry forged after the record (chained, but signed by no trusted key): the record stays where it was
    last = json.loads(orch.store.read(AUDIT_STREAM)[-1].raw)
    forged = {**last, "seq": entries + 1, "prev": line_hash(orch.store.read(AUDIT_STREAM)[-1].raw),
              "sig": "A" * 86}
    with open(orch.store.audit_path, "ab") as fh:
        fh.write(canonical(forged) + b"\n")
    assert len(orch.store.read(AUDIT_STREAM)) == entries + 1
    assert not catch_up_audit_log(orch) and audit_head_seq(orch) == entries
    assert not orch.verify().ok  # and verify names the forged entry


# -- the store --------------------------------------------------------------------------------------------------------
def test_append_audited_writes_the_entry_of_events_whose_records_could_not_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The events are durable: without their entry they would stand unexplained until a heal. ``between`` (the
    queue index) runs too, and the error is raised once both are durable."""
    store = JsonlStore(tmp_path)
    real_put = store.put_aux

    def put_aux(area: str, key: str, data: bytes) -> None:
        if area == HEADS_AREA:
            raise StorageError(f"could not write heads/{key}: No space left on device", area=area)
        real_put(area, key, data)

    monkeypatch.setattr(store, "put_aux", put_aux)
    between: list[str] = []
    with pytest.raises(AuxNotWrittenError) as info:
        store.append_audited("job-1", lambda head: [b'{"seq":1}'], lambda head: [b'{"entry":1}'], lock="l",
                             between=lambda: between.append("index"), aux=lambda head: {(HEADS_AREA, "job-1"): b"1"},
                             entry_aux=lambda head: {("audit-head", "audit"): b"1"})
    assert info.value.exit_code == 10 and "heads/job-1: No space left" in info.value.message
    assert between == ["index"] and [s.raw for s in store.read(AUDIT_STREAM)] == [b'{"entry":1}']
    assert [s.raw for s in store.read("job-1")] == [b'{"seq":1}'] and store.get_aux("audit-head", "audit") == b"1"


def test_an_append_whose_records_are_written_has_no_warning_on_every_store(any_orch: Orchestrator) -> None:
    job = js.awaiting_audit(any_orch, job_id=any_orch.submit_job("t.ask", {}, audit=True).job_id)
    assert any_orch.submit_job("t.echo", {}).warnings == ()
    result = any_orch.approve(job)
    assert result.applied and result.warnings == () and result.to_dict()["warnings"] == ()
    assert head_seq(any_orch, job) == 4
    from orchestrator.head_records import catch_up_jobs

    assert catch_up_jobs(any_orch.store, [any_orch.load(job)]) == []  # up to date (PostgreSQL: never behind)
    ran = any_orch.worker(worker_id="w").run_once()
    assert ran is not None and ran.state == "succeeded" and ran.warnings == []
