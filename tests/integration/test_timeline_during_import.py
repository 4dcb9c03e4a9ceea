"""``audit-timeline`` read while an import into the project has not completed: the import writes the audit log before
the jobs (docs/postgres.md, "Resumable"), so an entry may name an event its job does not hold yet. That is the
import's doing, said as a warning (``IMPORT_INCOMPLETE``), not an integrity error: until fix-small3 such an entry was
``AUDIT_EVENT_MISSING`` (exit 7), and a job not written yet "had its files deleted: restore them from a backup"."""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import BACKENDS, FileHistory, PgHistory, orchestrator_on
from helpers import imported_with_each_chunk, run_script
from orchestrator import Orchestrator, faults, timeline, transfer
from orchestrator.errors import ImportConflictError, IntegrityError, InvalidInputError, JobNotFoundError
from orchestrator.signing import Keyring
from orchestrator.timeline import AUDIT_EVENT_MISSING, IMPORT_INCOMPLETE
from orchestrator.import_record import IMPORT_ABANDONED, IMPORTS_AREA
from orchestrator.transfer import export_project, import_project


@pytest.fixture(params=BACKENDS)
def dest(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base / "dst", keyring) as orch:
        yield orch


def cancelled_jobs(orch: Orchestrator, count: int) -> tuple[list[str], bytes]:
    """``count`` jobs, each submitted then cancelled (its entry naming the cancel), and the project's bundle."""
    jobs = [orch.submit("t.echo", i) for i in range(count)]
    for job in jobs:
        orch.cancel(job, "not needed")
    buf = io.BytesIO()
    export_project(orch, buf)
    return jobs, buf.getvalue()


def history(orch: Orchestrator):
    return PgHistory(orch) if orch.store.__class__.__name__ != "JsonlStore" else FileHistory(orch)


def statuses(orch: Orchestrator, job: str) -> tuple[bool, list[tuple[str, str]], list[str]] | str:
    """The timeline of ``job``: whether it is ok, each line's (source, status), and its warnings' codes."""
    try:
        result = orch.timeline(job)
    except JobNotFoundError as exc:
        return exc.code
    return result["ok"], [(ln["source"], ln["status"]) for ln in result["lines"]], [w["code"] for w in
                                                                                  result["warnings"]]


def test_a_job_an_import_under_way_has_not_written_yet_or_not_whole_is_a_warning_not_an_integrity_error(
        dest: Orchestrator, base: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    source = Orchestrator(base_path=base / "src", project_id=dest.project_id, keyring=keyring)
    (first, second), bundle = cancelled_jobs(source, 2)
    monkeypatch.setattr(transfer, "CHUNK", 1)  # every stream written a line at a time: each state between is read
    seen: list[tuple] = []

    def read_timelines() -> None:  # after each line the import writes
        seen.append((statuses(dest, first), statuses(dest, second)))

    imported_with_each_chunk(dest, bundle, read_timelines)
    ahead = (True, [("audit", IMPORT_INCOMPLETE)], [IMPORT_INCOMPLETE])  # the cancel's entry, its job not written
    submitted = (True, [("event", "ok"), ("audit", IMPORT_INCOMPLETE)], [IMPORT_INCOMPLETE])  # its submit only
    whole = (True, [("event", "ok"), ("event", "ok"), ("audit", "ok")], [])
    assert seen == [(ahead, "JOB_NOT_FOUND"), (ahead, ahead),  # the audit log's two entries
                    (submitted, ahead), (whole, ahead),  # the first job's two events
                    (whole, submitted), (whole, whole)]  # the second's
    assert statuses(dest, first) == statuses(dest, second) == whole
    assert dest.store.aux_keys(IMPORTS_AREA) == []  # the import read its end record: nothing of it is ahead


def test_an_import_stopped_half_way_is_named_until_it_is_run_again_and_a_job_cut_after_it_is_damage(
        dest: Orchestrator, base: Path, keyring: Keyring) -> None:
    """Stopped by an error, the import is over (its record says so, ``import_record.stopped``): what it did not write
    is ``AUDIT_EVENT_MISSING`` (exit 7), the record named beside it (``IMPORT_ABANDONED``); until import2 (2026-12-07)
    it was ``IMPORT_INCOMPLETE`` (exit 0) for good if nobody ran it again."""
    source = Orchestrator(base_path=base / "src", project_id=dest.project_id, keyring=keyring)
    (first, second), bundle = cancelled_jobs(source, 2)
    lines = bundle.splitlines(keepends=True)
    with pytest.raises(IntegrityError, match="cut short"):  # the audit log and the first job are in
        import_project(dest, io.BytesIO(b"".join(lines[:-4])))
    assert statuses(dest, first) == (True, [("event", "ok"), ("event", "ok"), ("audit", "ok")], [])
    ok, shown, warned = statuses(dest, second)
    assert (ok, shown, warned) == (False, [("audit", AUDIT_EVENT_MISSING)], [IMPORT_ABANDONED])
    message = dest.timeline(second)["warnings"][0]["message"]
    assert "an import into project" in message and "Run the import again with the whole bundle" in message, message
    assert "it stopped at" in message and dest.store.aux_keys(IMPORTS_AREA)[0] in message, message
    import_project(dest, io.BytesIO(bundle))
    assert statuses(dest, second) == (True, [("event", "ok"), ("event", "ok"), ("audit", "ok")], [])
    # the import complete, an entry naming an event its job lacks is damage again: the job rolled back to its submit
    raw = history(dest)
    try:
        raw.write_bytes(second, b"".join(raw.read_bytes(second).splitlines(keepends=True)[:1]))
    finally:
        getattr(raw, "close", lambda: None)()
    ok, shown, _ = statuses(dest, second)
    assert not ok and ("audit", AUDIT_EVENT_MISSING) in shown, shown


def test_the_command_exits_0_with_the_warning_while_an_import_has_not_completed(
        cli_env: dict[str, str], base: Path, keyring: Keyring) -> None:
    dest = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    source = Orchestrator(base_path=base / "src", project_id="proj", keyring=keyring)
    (job,), bundle = cancelled_jobs(source, 1)
    signer = base64.urlsafe_b64encode(keyring.signer or b"").decode()  # the key the bundle's lines are signed with
    runs = []
    faults.arm("import.after_chunk", lambda: runs.append(  # the audit log written, the job not yet: under way
        run_script("audit_timeline", "--job-id", job, env={**cli_env, "ORCH_SIGNING_KEY": signer})))
    try:
        import_project(dest, io.BytesIO(bundle))
    finally:
        faults.disarm_all()
    proc = runs[0]
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert IMPORT_INCOMPLETE in proc.stdout and "OK: every line verified" in proc.stdout, proc.stdout
    assert f"its process (pid {os.getpid()} on host {os.uname().nodename}, this host) is running" in proc.stdout


def test_an_import_that_writes_nothing_leaves_no_record_of_itself(dest: Orchestrator, base: Path,
                                                                   keyring: Keyring) -> None:
    """Refused before its first write (a malformed stream) or at the audit log (another history here): no import is
    half done, and a job here whose file is cut later is damage, not an import's doing."""
    source = Orchestrator(base_path=base / "src", project_id=dest.project_id, keyring=keyring)
    _, bundle = cancelled_jobs(source, 1)
    lines = bundle.splitlines(keepends=True)
    with pytest.raises(InvalidInputError):
        import_project(dest, io.BytesIO(lines[0] + b'{"stream": 5}\n'))
    ours = dest.submit("t.echo", "ours")
    dest.cancel(ours, "ours")  # an audit log of its own: the bundle's conflicts with it
    with pytest.raises(ImportConflictError):
        import_project(dest, io.BytesIO(bundle))
    assert dest.store.aux_keys(IMPORTS_AREA) == [] and statuses(dest, ours)[0] is True


@pytest.mark.parametrize("written", [4, 5], ids=["job-not-written", "job-half-written"])
def test_an_import_completing_between_the_jobs_read_and_its_records_read_leaves_a_healthy_job_ok(
        dest: Orchestrator, base: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch, written: int) -> None:
    """The timeline reads the audit log, the job, then (an entry naming an event the job lacks) the import's record.
    An import completing between the last two: its entry's event is in now, and its record gone. Until 2026-12-07
    (fix-small4) that healthy job was ``AUDIT_EVENT_MISSING`` (exit 7); the job is read once more when there is no
    record, and shown whole."""
    source = Orchestrator(base_path=base / "src", project_id=dest.project_id, keyring=keyring)
    (_, second), bundle = cancelled_jobs(source, 2)
    monkeypatch.setattr(transfer, "CHUNK", 1)
    calls = []

    def stop_after_written() -> None:  # the import stops after its ``written``th line: the second job not whole
        calls.append(1)
        if len(calls) == written:
            raise RuntimeError("stopped")

    # an import under way: its record names this process, alive, and does not say it stopped (``import_record``)
    monkeypatch.setattr(transfer, "stopped", lambda orch, key: None)
    with pytest.raises(RuntimeError, match="stopped"):
        imported_with_each_chunk(dest, bundle, stop_after_written)
    half = [("event", "ok")] if written == 5 else []  # its submit, or nothing of it
    assert statuses(dest, second) == (True, [*half, ("audit", IMPORT_INCOMPLETE)], [IMPORT_INCOMPLETE])
    began = timeline._import_began

    def completed_first(orch: Orchestrator) -> object:  # the import completes just before its record is read
        import_project(dest, io.BytesIO(bundle))
        monkeypatch.setattr(timeline, "_import_began", began)
        return began(orch)

    monkeypatch.setattr(timeline, "_import_began", completed_first)
    assert statuses(dest, second) == (True, [("event", "ok"), ("event", "ok"), ("audit", "ok")], [])
    assert timeline._import_began is began and dest.store.aux_keys(IMPORTS_AREA) == []  # the import did complete
