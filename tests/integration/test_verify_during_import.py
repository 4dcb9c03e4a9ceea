"""``verify`` read while an import into the project has not completed judges an audit entry naming an event its job
does not hold yet as ``audit-timeline`` does: the import's doing (``IMPORT_INCOMPLETE``, a warning, exit 0), not
``AUDIT_EVENT_MISSING`` (exit 7), which it said of every such entry until import2 (2026-12-07). Race-free: the import's
record is read only once such an entry is met, after the job's read; with none there, the job is read once more."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import BACKENDS, orchestrator_on
from helpers import imported_with_each_chunk, run_script
from orchestrator import Orchestrator, faults, import_record, transfer
from orchestrator.errors import IntegrityError
from orchestrator.import_record import IMPORT_ABANDONED, IMPORT_INCOMPLETE, IMPORTS_AREA
from orchestrator.integrity import AUDIT_EVENT_MISSING
from orchestrator.signing import Keyring
from orchestrator.transfer import export_project, import_project


@pytest.fixture(params=BACKENDS)
def dest(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base / "dst", keyring) as orch:
        yield orch


def bundle_of(base: Path, project: str, keyring: Keyring, count: int) -> tuple[list[str], bytes]:
    """``count`` jobs, each submitted then cancelled (its audit entry naming the cancel), and their bundle."""
    source = Orchestrator(base_path=base / "src", project_id=project, keyring=keyring)
    jobs = [source.submit("t.echo", i) for i in range(count)]
    for job in jobs:
        source.cancel(job, "not needed")
    buf = io.BytesIO()
    export_project(source, buf)
    return jobs, buf.getvalue()


def codes(found: list) -> list[tuple[str, int]]:
    return [(p.code, p.line) for p in found]


def test_verify_while_an_import_runs_says_the_entries_it_has_not_written_yet_are_its_doing(
        dest: Orchestrator, base: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, bundle = bundle_of(base, dest.project_id, keyring, 2)
    monkeypatch.setattr(transfer, "CHUNK", 1)  # a line at a time: each state between is verified
    seen = []

    def verify_now() -> None:
        report = dest.verify()
        seen.append((report.ok, codes(report.problems), [w.code for w in report.warnings]))

    imported_with_each_chunk(dest, bundle, verify_now)
    # the audit log's two entries (each naming a cancel), then each job's two events
    assert [ok for ok, _, _ in seen] == [True] * 6 and not any(problems for _, problems, _ in seen), seen
    incomplete = [warned.count(IMPORT_INCOMPLETE) for _, _, warned in seen]
    # an entry not written yet names nothing; one warning an entry ahead of its job, and one naming the import
    assert incomplete == [2, 3, 3, 2, 2, 0], seen
    assert dest.verify().ok and dest.store.aux_keys(IMPORTS_AREA) == []


def test_verify_reads_the_job_again_when_the_import_completed_after_its_read(
        dest: Orchestrator, base: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job read without the event, the import completes, the record is read: gone. The import wrote its record
    before the entry, so the event is in the job now: no problem (until import2: ``AUDIT_EVENT_MISSING``, exit 7)."""
    (first, second), bundle = bundle_of(base, dest.project_id, keyring, 2)
    lines = bundle.splitlines(keepends=True)
    with pytest.raises(IntegrityError, match="cut short"):  # the audit log and the first job are in
        import_project(dest, io.BytesIO(b"".join(lines[:-4])))
    read_then = import_record.import_begun
    completed = []

    def completing_first(orch: Orchestrator):  # between the job's read and the record's
        import_project(dest, io.BytesIO(bundle))
        completed.append(True)
        return read_then(orch)

    monkeypatch.setattr(import_record, "import_begun", completing_first)
    report = dest.verify()
    assert completed and report.ok, codes(report.problems)
    assert not [w for w in report.warnings if w.code in (IMPORT_INCOMPLETE, IMPORT_ABANDONED)], report.warnings


def test_verify_of_a_healthy_project_reads_no_import_record(
        dest: Orchestrator, base: Path, keyring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its cost: nothing of ``imports/`` is listed unless an entry names an event its job lacks."""
    _, bundle = bundle_of(base, dest.project_id, keyring, 3)
    import_project(dest, io.BytesIO(bundle))
    listed = []
    keys = dest.store.aux_keys
    monkeypatch.setattr(dest.store, "aux_keys", lambda area: listed.append(area) or keys(area))
    assert dest.verify().ok
    assert IMPORTS_AREA not in listed


def test_the_verify_command_exits_0_with_the_warnings_while_an_import_runs(
        cli_env: dict[str, str], base: Path, keyring: Keyring) -> None:
    dest = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    (job,), bundle = bundle_of(base, "proj", keyring, 1)
    signer = base64.urlsafe_b64encode(keyring.signer or b"").decode()  # the key the bundle's lines are signed with
    runs = []
    faults.arm("import.after_chunk", lambda: runs.append(  # the audit log written, the job not yet
        run_script("verify", env={**cli_env, "ORCH_SIGNING_KEY": signer})))
    try:
        import_project(dest, io.BytesIO(bundle))
    finally:
        faults.disarm_all()
    proc = runs[0]
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert f"{IMPORT_INCOMPLETE}: names event" in proc.stdout and f"of job {job}" in proc.stdout, proc.stdout
    assert "has not completed" in proc.stdout and f": {AUDIT_EVENT_MISSING}:" not in proc.stdout, proc.stdout
