"""A crash between a job event and its audit entry is healed by the next command: once, never twice."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

import jobstates as js
from helpers import run_module, run_script
from orchestrator import Orchestrator, audit
from orchestrator.integrity import verify_project
from orchestrator.key_files import load_keyring
from orchestrator.signing import line_hash
from orchestrator.store.base import AUDIT_STREAM


def entries(orch: Orchestrator, job_id: str, action: str | None = None) -> list[dict]:
    recs = [json.loads(s.raw) for s in orch.store.read(AUDIT_STREAM)]
    return [r for r in recs if r["job_id"] == job_id and (action is None or r["data"]["action"] == action)]


@pytest.fixture
def cli_orch(base: Path, cli_env: dict[str, str]) -> Orchestrator:
    """The API over the same store and key as the scripts run by ``cli_env``."""
    return Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))



def refuse_audit_writes(orch: Orchestrator, monkeypatch, message: str) -> Callable[..., Any]:
    """The store refuses every append to the audit log (a full disk) with ``message``; the jobs' appends go through.
    Returns the store's own ``append``, to put back once the disk is freed."""
    from orchestrator.errors import StorageError

    real_append = orch.store.append

    def full_disk(stream, *args, **kwargs):
        if stream == AUDIT_STREAM:
            raise StorageError(message)
        return real_append(stream, *args, **kwargs)

    monkeypatch.setattr(orch.store, "append", full_disk)
    return real_append

def test_crash_after_the_event_is_healed_once_by_the_next_command(cli_orch: Orchestrator, cli_env) -> None:
    job_id = js.waiting_human(cli_orch)
    crashed = run_script("control", "resume", job_id, "yes", env={**cli_env, "ORCH_CRASH_AT": "append.after_event"})
    assert crashed.returncode == -9
    assert js.event_types(cli_orch, job_id)[-1] == "job_resumed"  # the event is the truth
    assert entries(cli_orch, job_id, "resume") == []
    assert [w.code for w in verify_project(cli_orch).warnings] == ["AUDIT_ENTRY_MISSING"]

    again = run_script("control", "resume", job_id, "yes", env=cli_env)
    assert again.returncode == 0 and "already applied" in again.stdout
    healed = entries(cli_orch, job_id, "resume")
    assert len(healed) == 1 and healed[0]["data"]["healed"] is True
    resumed_line = cli_orch.store.read(job_id)[-1].raw
    assert healed[0]["data"]["event_hash"] == line_hash(resumed_line)
    assert healed[0]["actor"] == json.loads(resumed_line)["actor"]

    for _ in range(2):  # later commands find the entry and write nothing
        assert run_script("control", "resume", job_id, "yes", env=cli_env).returncode == 0
        assert run_script("audit_timeline", "--job-id", job_id, env=cli_env).returncode == 0
    assert len(entries(cli_orch, job_id, "resume")) == 1
    report = verify_project(cli_orch)
    assert report.ok and not report.warnings


def test_crash_after_the_entry_but_before_its_marker_writes_no_second_entry(cli_orch: Orchestrator, cli_env) -> None:
    job_id = js.waiting_human(cli_orch)
    # the resume appends its event (1st pass), then its audit entry (2nd): killed once that entry is durable
    crashed = run_script("control", "resume", job_id, "yes",
                         env={**cli_env, "ORCH_CRASH_AT": "store.append.before_aux:2"})
    assert crashed.returncode == -9 and len(entries(cli_orch, job_id, "resume")) == 1
    assert run_script("control", "cancel", job_id, "stop", env=cli_env).returncode == 0
    assert len(entries(cli_orch, job_id, "resume")) == 1
    assert audit.unmarked(cli_orch, [cli_orch.load(job_id)]) == []  # the marker was restored from the log


def test_a_job_touched_with_every_marker_present_never_reads_the_audit_log(orch: Orchestrator, monkeypatch) -> None:
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")

    def full_scan(_orch):  # the rare path; the normal path must not take it
        raise AssertionError("the audit log was scanned")

    monkeypatch.setattr(audit, "audited_hashes", full_scan)
    assert orch.resume(job_id, "yes").already_applied
    assert orch.cancel(job_id).applied


def test_deleted_markers_are_rebuilt_from_the_log_without_duplicates(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    orch.cancel(job_id)
    import shutil

    shutil.rmtree(orch.settings.state_dir / audit.MARKERS_AREA)
    assert audit.heal(orch, [orch.load(job_id)]) == []
    assert len(entries(orch, job_id)) == 2 and audit.unmarked(orch, [orch.load(job_id)]) == []


def test_events_a_worker_wrote_without_an_entry_get_one(orch: Orchestrator) -> None:
    job_id = js.running(orch)
    js.finish(orch, job_id, "job_timeout", {"error_code": "NO_TERMINAL_SIGNAL_TIMEOUT", "timeout": 5,
                                            "retry_at": "2030-01-01T00:00:00.000000Z"})
    assert audit.heal(orch, [orch.load(job_id)]) != []
    (entry,) = entries(orch, job_id)
    assert entry["data"]["action"] == "job_timeout" and entry["actor"] == "w1" and entry["run_id"] == "run-1"


def test_a_release_whose_entry_was_lost_is_reported_and_healed_with_the_note_it_had(orch: Orchestrator) -> None:
    job_id = js.running(orch)
    error = "worker w1 stopped; the run was killed after the 10s grace period and handed back"
    js.finish(orch, job_id, "job_released", {"error_code": "WORKER_STOPPED", "worker_id": "w1", "error": error})
    assert [w.code for w in verify_project(orch).warnings] == ["AUDIT_ENTRY_MISSING"]
    assert audit.heal(orch, [orch.load(job_id)]) != []
    (entry,) = entries(orch, job_id)
    assert (entry["data"]["action"], entry["data"]["note"], entry["run_id"]) == ("job_released", error, "run-1")
    assert verify_project(orch).warnings == []


def test_heal_waits_for_a_live_writer_instead_of_writing_its_entry_too(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    view = orch.load(job_id)
    with audit.pending(orch, job_id):  # a writer between its event and its entry
        new = orch.append(view, job_id, [("job_resumed", {"answer": "yes"})])
        healer = threading.Thread(target=lambda: audit.heal(orch, [orch.load(job_id)]))
        healer.start()
        healer.join(timeout=0.3)
        assert healer.is_alive(), "heal must wait for the writer's lock"
        audit.record(orch, job_id=job_id, action="resume", actor="op@host", note="yes",
                     event_line=new.stream.lines[-1].raw)
    healer.join(timeout=10)
    assert len(entries(orch, job_id, "resume")) == 1


def test_verify_detects_a_job_file_cut_back_consistently(orch: Orchestrator) -> None:
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    path = orch.store.path(job_id)
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().split(b"\n")[:3]))
    (orch.settings.state_dir / "heads" / job_id).unlink()  # no head record: the chain alone cannot tell
    assert orch.load(job_id).ok
    report = verify_project(orch)
    assert [p.code for p in report.problems] == ["AUDIT_EVENT_MISSING"]
    assert report.problems[0].stream == AUDIT_STREAM


def test_verify_of_one_job_whose_events_and_head_record_were_deleted_reports_its_audit_entries_not_no_such_job(
        orch: Orchestrator) -> None:
    from orchestrator.errors import JobNotFoundError

    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    orch.store.path(job_id).unlink()
    (orch.settings.state_dir / "heads" / job_id).unlink()
    whole, one = verify_project(orch), verify_project(orch, job_id)  # one: before, JOB_NOT_FOUND (exit 4)
    assert [(p.stream, p.code) for p in one.problems] == [(AUDIT_STREAM, "AUDIT_EVENT_MISSING")] == [
        (p.stream, p.code) for p in whole.problems]
    with pytest.raises(JobNotFoundError):  # a job the audit log does not name either is still no job
        verify_project(orch, "01ARZ3NDEKTSV4RRFFQ69G5FAV")


@pytest.fixture(params=["jsonl", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_processes(request: pytest.FixtureRequest, base: Path, keyring):
    """Two orchestrators over one project, each with its own store, as two processes have."""
    if request.param == "jsonl":
        yield tuple(Orchestrator(base_path=base, project_id="proj", keyring=keyring) for _ in range(2))
        return
    from backends import TestPostgresStore

    from orchestrator.store.postgres import PostgresStore

    first = TestPostgresStore()
    second = PostgresStore(first.url, first.project)
    yield (Orchestrator(base_path=base, project_id=first.project, keyring=keyring, store=first),
           Orchestrator(base_path=base, project_id=first.project, keyring=keyring, store=second))
    second.close()
    first.close()


def test_another_process_never_heals_an_event_whose_writer_is_between_event_and_entry(two_processes) -> None:
    # on PostgreSQL the event and its entry commit in two transactions: the pending lock must hold
    # between processes there too (it was a lock of one process: a racing resume wrote a second entry)
    from orchestrator import faults

    writer, other = two_processes
    job_id = js.waiting_human(writer)
    healers: list[threading.Thread] = []

    def heal_in_between() -> None:
        healer = threading.Thread(target=lambda: audit.heal(other, [other.load(job_id)]))
        healer.start()
        healer.join(timeout=0.3)
        assert healer.is_alive(), "another process's heal must wait for the writer's lock"
        healers.append(healer)

    faults.arm("append.after_event", heal_in_between)
    try:
        writer.resume(job_id, "yes")
    finally:
        faults.disarm_all()
    healers[0].join(timeout=10)
    assert len(entries(writer, job_id, "resume")) == 1
    assert other.resume(job_id, "yes").already_applied and len(entries(writer, job_id, "resume")) == 1


def test_verify_warns_of_a_second_entry_for_one_event(orch: Orchestrator) -> None:
    # what the race above left behind before the pending lock held between processes on PostgreSQL
    job_id = js.waiting_human(orch)
    orch.resume(job_id, "yes")
    event = orch.load(job_id).stream.lines[-1].raw
    audit.record(orch, job_id=job_id, action="resume", actor="healer", note="yes", event_line=event)
    report = verify_project(orch)
    assert report.ok and [w.code for w in report.warnings] == ["AUDIT_ENTRY_DUPLICATE"]


def test_a_read_command_on_a_full_disk_reports_without_writing_the_missing_entry(orch: Orchestrator,
                                                                                 monkeypatch) -> None:
    """``metrics`` and ``audit-timeline`` heal a missing entry on the way; a store that refuses the write (a full
    disk) must not cost the operator the report: the entry stays missing and the report says why."""
    from orchestrator import timeline
    from orchestrator.projection import refresh

    job_id = js.waiting_human(orch)
    orch.append(orch.load(job_id), job_id, [("job_resumed", {"answer": "yes", "question": "Deploy?"})])  # no entry
    real_append = refuse_audit_writes(orch, monkeypatch, "could not write audit.jsonl: No space left on device")
    figures = refresh(orch)
    assert figures.healed == 0
    assert [(w["code"], "No space left" in w["message"]) for w in figures.warnings] == [("AUDIT_ENTRY_MISSING", True)]
    report = timeline.timeline(orch, job_id=job_id)
    assert [w["code"] for w in report["warnings"]] == ["AUDIT_ENTRY_MISSING"]
    assert "No space left" in report["warnings"][0]["message"]
    assert entries(orch, job_id, "resume") == []

    monkeypatch.setattr(orch.store, "append", real_append)  # the disk freed: the next read heals it, once
    timeline.timeline(orch, job_id=job_id)
    assert len(entries(orch, job_id, "resume")) == 1


class _Crash(Exception):
    """A crash between a control action's event and its audit entry, in this process."""


def _crash_between_event_and_entry(call) -> None:
    from orchestrator import faults

    faults.arm("append.after_event", lambda: (_ for _ in ()).throw(_Crash()))
    try:
        with pytest.raises(_Crash):
            call()
    finally:
        faults.disarm_all()


@pytest.mark.parametrize("make, act", [
    (js.waiting_human, lambda o, j: o.resume(j, "yes", note="called the customer first")),
    (js.awaiting_audit, lambda o, j: o.revise(j, "shorten it", note="ticket OPS-12")),
    (js.waiting_human, lambda o, j: o.resume_from_chat(j, f"job_id: {j}; yes")),
    (js.waiting_human, lambda o, j: o.resume_from_chat(j, f"job_id: {j}; yes", note="from the on-call chat")),
    (js.waiting_human, lambda o, j: o.resume_from_chat(j, f"job_id: {j}; chat")),  # an answer that names the channel
    (js.awaiting_audit, lambda o, j: o.approve(j, "looks right")),
    (js.waiting_human, lambda o, j: o.cancel(j, "not needed")),
])
def test_a_healed_entry_says_what_the_entry_written_at_once_says(orch: Orchestrator, make, act) -> None:
    """The operator's note (and that a resume came from chat) must survive a crash before the entry: the healed
    entry is the one the action would have written, but for its ``healed`` marks."""
    done, crashed = make(orch), make(orch)
    act(orch, done)
    _crash_between_event_and_entry(lambda: act(orch, crashed))
    assert entries(orch, crashed) == []
    assert audit.heal(orch, [orch.load(crashed)]) != []
    (written,), (healed,) = entries(orch, done), entries(orch, crashed)
    assert healed["data"]["healed"] is True
    assert healed["data"]["note"] == written["data"]["note"]


def test_a_healed_stale_recovery_entry_says_where_the_job_went_as_the_workers_own_entry_does(
        orch: Orchestrator) -> None:
    """The worker's entry of a ``stale_recovered`` ends "; to <state>": the one ``audit heal`` writes after a crash
    between the event and the entry must say the same (until 2026-12-07 it lacked that ending)."""
    from helpers import make_worker

    def recovered(crash: bool) -> str:
        job_id = js.running(orch, lease="2001-01-01T00:00:00.000000Z")
        recover = make_worker(orch, worker_id="w2").recover_stale
        if crash:
            _crash_between_event_and_entry(recover)
        else:
            recover()
        assert js.event_types(orch, job_id)[-1] == "stale_recovered"
        return job_id

    done, crashed = recovered(crash=False), recovered(crash=True)
    assert entries(orch, crashed) == []
    assert audit.heal(orch, [orch.load(crashed)]) != []
    (written,), (healed,) = entries(orch, done), entries(orch, crashed)
    assert written["data"]["note"].endswith("; to queued") and healed["data"]["healed"] is True
    assert healed["data"]["note"] == written["data"]["note"]


@pytest.mark.parametrize("refused", [
    lambda o, j: o.approve(j),  # the job is queued again: INVALID_TRANSITION
    lambda o, j: o.resume(j, "no"),  # another answer was applied: ACTION_CONFLICT
    lambda o, j: o.revise(j, "notes"),
])
def test_a_refused_action_writes_nothing_not_even_an_entry_a_crash_left_missing(orch: Orchestrator,
                                                                                 refused) -> None:
    """SPEC: an action that does not fit the job's state is refused and writes nothing. The missing entry is the
    business of a command that goes ahead (or of ``audit heal``), not of a refusal."""
    from orchestrator.errors import InvalidTransitionError

    job_id = js.waiting_human(orch)
    _crash_between_event_and_entry(lambda: orch.resume(job_id, "yes"))
    audit_before = [s.raw for s in orch.store.read(AUDIT_STREAM)]
    with pytest.raises(InvalidTransitionError) as exc:
        refused(orch, job_id)
    assert "nothing was written" in exc.value.message
    assert [s.raw for s in orch.store.read(AUDIT_STREAM)] == audit_before
    assert orch.resume(job_id, "yes").already_applied  # a command that goes ahead heals it, once
    assert len(entries(orch, job_id, "resume")) == 1


def test_audit_heal_of_a_large_project_says_how_far_it_got(cli_orch: Orchestrator, cli_env, monkeypatch) -> None:
    """One progress line per batch of jobs (on stderr, shown on a terminal only: ``Output.progress``), so that a heal
    of 100,000 jobs does not look hung; a project of one batch gets none."""
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from orchestrator.cli_common import Output

    for n in range(5):
        cli_orch.submit("t.echo", {"n": n})
    shown: list[str] = []
    monkeypatch.setattr(Output, "progress", lambda self, message: shown.append(message))
    monkeypatch.setattr(audit, "HEAL_BATCH", 2)
    done = CliRunner().invoke(cli, ["audit", "heal", "--json"], env=cli_env)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["jobs"] == 5
    assert shown == ["checked 2 of 5 jobs...", "checked 4 of 5 jobs...", "checked 5 of 5 jobs..."]
    monkeypatch.setattr(audit, "HEAL_BATCH", 5)
    shown.clear()
    assert CliRunner().invoke(cli, ["audit", "heal"], env=cli_env).exit_code == 0 and shown == []


@pytest.mark.parametrize("healer", ["audit heal", "audit-timeline"])
def test_an_entry_an_audit_log_restored_from_an_older_copy_lacks_is_written_once_though_its_marker_remains(
        cli_orch: Orchestrator, cli_env, healer: str) -> None:
    """Runbook E: the log restored from a backup and its head record moved away. The markers of the entries written
    after the backup are still there, so only a command that reads the log itself finds them missing."""
    import shutil

    kept, lost = js.waiting_human(cli_orch), js.waiting_human(cli_orch)
    cli_orch.resume(kept, "yes")
    log = cli_orch.settings.state_dir / "audit" / "audit_events.jsonl"
    backup = log.read_bytes()
    cli_orch.resume(lost, "yes")
    log.write_bytes(backup)
    shutil.move(cli_orch.settings.state_dir.joinpath(*audit.AUDIT_HEAD), cli_orch.settings.state_dir.parent / "incident")
    assert [(w.code, w.stream) for w in verify_project(cli_orch).warnings] == [("AUDIT_ENTRY_MISSING", lost)]
    assert audit.unmarked(cli_orch, [cli_orch.load(lost)]) == []  # the markers alone say nothing is missing

    if healer == "audit heal":
        proc = run_module("audit", "heal", "--json", env=cli_env)
        assert proc.returncode == 0 and json.loads(proc.stdout)["written"] == 1, proc.stderr
    else:
        proc = run_script("audit_timeline", "--job-id", lost, "--json", env=cli_env)
        assert proc.returncode == 0 and json.loads(proc.stdout)["warnings"] == [], proc.stdout
    (healed,) = entries(cli_orch, lost, "resume")
    assert healed["data"]["healed"] is True and healed["data"]["event_hash"] == line_hash(cli_orch.store.read(lost)[-1].raw)
    report = verify_project(cli_orch)
    assert report.ok and not report.warnings
    assert run_script("audit_timeline", "--job-id", lost, env=cli_env).returncode == 0
    assert len(entries(cli_orch, lost, "resume")) == 1 and len(entries(cli_orch, kept, "resume")) == 1


def test_the_timeline_of_a_job_whose_entry_was_cut_from_the_audit_log_reports_the_cut_and_writes_nothing(
        cli_orch: Orchestrator, cli_env) -> None:
    """It said "OK: every line verified" (exit 0) and told to run `audit heal`, which then refused the cut (exit 7):
    the entry is missing because the log was cut, not because a crash came between the event and its entry."""
    job = js.waiting_human(cli_orch)
    cli_orch.resume(job, "yes")
    log = cli_orch.settings.state_dir / "audit" / "audit_events.jsonl"
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))  # the resume's entry cut off
    proc = run_script("audit_timeline", "--job-id", job, "--json", env=cli_env)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert not result["ok"] and [(p["stream"], p["code"]) for p in result["problems"]] == [("@audit", "TRUNCATED")]
    (warning,) = result["warnings"]
    assert warning["code"] == "AUDIT_ENTRY_MISSING" and "the audit log was cut" in warning["message"]
    assert entries(cli_orch, job, "resume") == []  # nothing written onto the cut log
    text = run_script("audit_timeline", "--job-id", job, env=cli_env)
    assert "PROBLEM the audit log's line 0: TRUNCATED" in text.stdout and "NOT OK" in text.stdout


# -- a run a stopping worker ended, counted as a failed attempt: a job_failed audited as a release -------------------
STOPPED = "worker w1 stopped; the run was killed after the 10s grace period"
# the text of the worker's own counted stop (``OutcomeRecorder.release``), as its histories since 2026-12-02 hold it
COUNTED = (f"{STOPPED}: 4 runs in a row of this job ended with their worker stopping, so this one counts as a failed "
           "attempt (a run that stops its own worker would stop every worker that picks the job up)")


def _stops(orch: Orchestrator, job_id: str, times: int) -> None:
    """``times`` runs in a row a stopping worker ended and handed back, each with its entry, as a worker writes them."""
    for n in range(times):
        js.claim(orch, job_id, f"run-{n}")
        view = orch.load(job_id)
        orch.append(view, job_id, [("job_released", {"error_code": "WORKER_STOPPED", "worker_id": "w1",
                                                     "error": f"{STOPPED} and handed back", "output_tail": ""})],
                    run_id=view.state.run_id, actor="w1", audit=("job_released", f"{STOPPED} and handed back"))


@pytest.mark.parametrize("stops_before", [0, 1, 3, 4])
@pytest.mark.parametrize("summary, audited", [("", True), ("down", False), (COUNTED, False)],
                         ids=["workers", "handlers", "imitation"])
def test_a_worker_stopped_failure_needs_an_entry_only_as_the_workers_counted_stop(
        stops_before: int, summary: str, audited: bool) -> None:
    """The reducer's rule (``state.counted_stop``): the worker's ``job_failed`` from the fourth stop in a row on (no
    payload, its words) is written with its release's entry; a handler's own failure with ``WORKER_STOPPED`` (a
    history from before 2026-12-06: its summary is its error, in the worker's words or not) has none, after any
    number of stops (until 2026-12-07 one after three stops in a row needed one, as if it were the fourth)."""
    stop = {"type": "job_released", "data": {"error_code": "WORKER_STOPPED"}}
    claim = {"type": "job_claimed", "data": {}}
    failed = {"type": "job_failed", "data": {"error_code": "WORKER_STOPPED", "error": summary or COUNTED,
                                             "summary": summary}}
    records = [{"type": "job_submitted", "data": {}}, *[claim, stop] * stops_before, claim, failed, claim, failed]
    expected = [(i, "job_released") for i in range(1, len(records)) if records[i] is stop]
    if audited:
        expected += [(len(records) - 3, "job_released"), (len(records) - 1, "job_released")]
    assert sorted(audit.audited(records)) == expected


def test_a_fourth_stop_in_a_row_whose_entry_a_crash_lost_is_reported_and_healed_as_a_release(
        orch: Orchestrator, tmp_path: Path) -> None:
    """Real worker passes: three runs a stop ended (handed back, forgiven), then the fourth, a failed attempt written
    with the entry of a release, killed between the two. ``verify`` said nothing and ``audit heal`` wrote nothing."""
    import worker_handlers  # noqa: F401  (registers t.* handlers)
    from helpers import events, make_worker
    from orchestrator import faults, timeline

    job = orch.submit("t.wait", {"started": str(tmp_path / "started"), "release": str(tmp_path / "never")},
                      max_attempts=3)
    for n in range(4):
        w = make_worker(orch, stop_grace_seconds=0.0)
        die = (lambda: faults.arm("append.after_event", lambda: (_ for _ in ()).throw(_Crash()))) if n == 3 else None
        faults.arm("worker.after_start", lambda: (w.stop(), die and die()))
        try:
            if n < 3:
                assert w.run_once().error_code == "WORKER_STOPPED"
            else:
                with pytest.raises(_Crash):
                    w.run_once()
        finally:
            faults.disarm_all()
            w.close()
    failed = events(orch, job)[-1]
    assert (failed["type"], failed["data"]["error_code"]) == ("job_failed", "WORKER_STOPPED")
    assert len(entries(orch, job, "job_released")) == 3
    assert [(w.code, w.line) for w in verify_project(orch).warnings] == [("AUDIT_ENTRY_MISSING", failed["seq"])]
    shown = timeline.timeline(orch, job_id=job, action="job_released", heal=False)
    assert [(ln["what"], ln["status"]) for ln in shown["lines"]][-1] == ("job_failed", "AUDIT_ENTRY_MISSING")
    assert len(audit.heal(orch, [orch.load(job)])) == 1
    healed = entries(orch, job, "job_released")[-1]
    assert healed["data"]["healed"] is True and healed["data"]["event_seq"] == failed["seq"]
    assert (healed["data"]["note"], healed["run_id"], healed["actor"]) == (failed["data"]["error"], failed["run_id"],
                                                                          failed["actor"])
    assert verify_project(orch).warnings == [] and audit.heal(orch, [orch.load(job)]) == []
    shown = timeline.timeline(orch, job_id=job, action="job_released")  # the event and its entry, under one name
    assert [(ln["source"], ln["what"], ln["status"]) for ln in shown["lines"]][-2:] == [
        ("event", "job_failed", "ok"), ("audit", "job_released", "ok")]


@pytest.mark.parametrize("stops_before, event", [(0, "job_released"), (3, "job_failed")],
                         ids=["hand-back", "fourth-stop"])
def test_a_release_whose_entry_the_disk_refused_is_written_by_audit_heal_as_its_error_says(
        orch: Orchestrator, monkeypatch, stops_before: int, event: str) -> None:
    """``Orchestrator.append``'s error for an entry the audit log refused says `orchestrator audit heal` writes it:
    true of a hand-back since job_released is audited, of the fourth stop in a row only since it is too."""
    from orchestrator.errors import AuditEntryNotWrittenError

    job = orch.submit("echo", {"text": "hi"})
    _stops(orch, job, stops_before)
    js.claim(orch, job, "run-last")
    real_append = refuse_audit_writes(orch, monkeypatch,
                                      "could not write audit.jsonl: No space left on device; nothing was written")
    view = orch.load(job)
    data = {"error_code": "WORKER_STOPPED", "error": COUNTED, "output_tail": ""}
    data.update({"worker_id": "w1"} if event == "job_released" else {"summary": ""})
    with pytest.raises(AuditEntryNotWrittenError, match="`orchestrator audit heal` writes it once that is fixed"):
        orch.append(view, job, [(event, data)], run_id="run-last", actor="w1", audit=("job_released", data["error"]))
    monkeypatch.setattr(orch.store, "append", real_append)
    assert [w.code for w in verify_project(orch).warnings] == ["AUDIT_ENTRY_MISSING"]
    assert len(audit.heal(orch, [orch.load(job)])) == 1
    assert entries(orch, job, "job_released")[-1]["data"]["note"] == data["error"]
    assert verify_project(orch).warnings == []



@pytest.mark.parametrize("said", ["the service it calls is shutting down", COUNTED], ids=["own-words", "imitation"])
def test_a_handlers_own_worker_stopped_after_three_stops_is_no_stop_of_its_worker(
        orch: Orchestrator, tmp_path: Path, said: str) -> None:
    """A history from before 2026-12-06, when a payload could give ``WORKER_STOPPED``: three real stops in a row,
    then the handler's own failure with that code (its ``summary`` its ``error``, as the worker wrote every payload's
    failure; even one copying the worker's words). It was read as the worker's fourth stop: ``verify`` warned
    ``AUDIT_ENTRY_MISSING``, ``audit heal`` and the timeline wrote a release that never was, and the next real stop
    counted as the fifth in a row, an attempt used instead of a stop forgiven."""
    import worker_handlers  # noqa: F401  (registers t.* handlers)
    from helpers import make_worker
    from orchestrator import clock, faults, timeline

    job = orch.submit("t.wait", {"started": str(tmp_path / "started"), "release": str(tmp_path / "never")},
                      max_attempts=5)
    _stops(orch, job, 3)
    js.claim(orch, job, "run-3")
    js.finish(orch, job, "job_failed", {"error_code": "WORKER_STOPPED", "error": said, "summary": said,
                                        "retry_at": clock.to_iso(orch.clock()), "output_tail": ""})
    assert orch.load(job).state.stops == 0  # the handler's failure ended the series, as any failure does
    assert verify_project(orch).warnings == []
    shown = timeline.timeline(orch, job_id=job, heal=False)
    assert "AUDIT_ENTRY_MISSING" not in {ln["status"] for ln in shown["lines"]}
    assert audit.heal(orch, [orch.load(job)]) == []
    timeline.timeline(orch, job_id=job)  # heals as it shows
    assert len(entries(orch, job, "job_released")) == 3  # no healed release of a stop that never was

    w = make_worker(orch, worker_id="w2", stop_grace_seconds=0.0)
    faults.arm("worker.after_start", w.stop)
    try:
        result = w.run_once()  # a new worker's real stop: the first in a row, forgiven
    finally:
        faults.disarm_all()
        w.close()
    assert (result.outcome, result.error_code) == ("released", "WORKER_STOPPED")
    assert (orch.load(job).state.failures, orch.load(job).state.stops) == (1, 1)
