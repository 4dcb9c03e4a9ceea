"""Moving a project between the file backend and PostgreSQL keeps every byte, both ways."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Orchestrator, head_records
from orchestrator.api import HEADS_AREA
from orchestrator.audit import AUDIT_HEAD
from orchestrator.errors import ImportConflictError, IntegrityError, InvalidInputError, StorageError
from orchestrator.integrity import check_anchor, export_anchor, verify_project
from orchestrator.signing import Keyring
from orchestrator.store.base import AUDIT_STREAM
from orchestrator.store.pg_queue import BUILT_KEY, INDEX_AREA
from orchestrator.transfer import export_project, import_project

import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import TestPostgresStore, unique_project
from helpers import make_worker, submitted_as_before

pytestmark = pytest.mark.postgres
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project() -> str:
    return unique_project("mv")


@pytest.fixture
def file_orch(base: Path, keyring: Keyring, project: str) -> Orchestrator:
    return Orchestrator(base_path=base, project_id=project, keyring=keyring)


@pytest.fixture
def pg_orch(base: Path, keyring: Keyring, project: str):
    store = TestPostgresStore(project)
    yield Orchestrator(base_path=base, project_id=project, keyring=keyring, store=store)
    store.close()


def fill(orch: Orchestrator, jobs: int = 5) -> list[str]:
    """Jobs with a few events each, and audit entries."""
    ids = []
    for i in range(jobs):
        job_id = orch.submit("echo", {"i": i})
        view = orch.load(job_id)
        if i % 2:
            orch.append(view, job_id, [("job_cancelled", {"reason": f"r{i}"})], audit=("cancel", f"note {i}"))
        ids.append(job_id)
    return ids


def every_byte(orch: Orchestrator) -> dict[str, tuple[list[bytes], bytes | None]]:
    out = {s: ([line.raw for line in orch.store.read(s)], orch.store.get_aux(HEADS_AREA, s))
           for s in orch.store.job_ids()}
    out[AUDIT_STREAM] = ([line.raw for line in orch.store.read(AUDIT_STREAM)], None)
    return out


def move(src: Orchestrator, dst: Orchestrator) -> dict:
    buf = io.BytesIO()
    export_project(src, buf)
    buf.seek(0)
    return import_project(dst, buf)


@pytest.mark.parametrize("direction", ["file_to_pg", "pg_to_file"])
def test_a_moved_project_keeps_every_byte_and_verifies_on_both_sides(file_orch, pg_orch, direction, tmp_path) -> None:
    src, dst = (file_orch, pg_orch) if direction == "file_to_pg" else (pg_orch, file_orch)
    fill(src)
    anchor = tmp_path / "anchor.json"
    export_anchor(src, anchor)
    result = move(src, dst)
    assert result["streams"] == 6 and result["events"] == 5 + 2 + 2  # 5 submits, 2 cancels, 2 audit entries
    assert every_byte(dst) == every_byte(src)
    assert verify_project(src).ok and verify_project(dst).ok
    assert check_anchor(dst, anchor) == []  # an anchor taken before the move still holds after it
    job = sorted(dst.store.job_ids())[0]
    assert dst.status(job).state == src.status(job).state


def test_the_moved_project_keeps_working_on_its_new_backend(file_orch, pg_orch) -> None:
    ids = fill(file_orch, 2)
    move(file_orch, pg_orch)
    view = pg_orch.load(ids[0])
    pg_orch.append(view, ids[0], [("job_cancelled", {"reason": "after the move"})])
    assert pg_orch.status(ids[0]).state == "cancelled" and verify_project(pg_orch).ok


def test_export_refuses_a_tampered_source(file_orch) -> None:
    job_id = fill(file_orch, 1)[0]
    path = file_orch.store.path(job_id)
    path.write_bytes(path.read_bytes().replace(b'"i":0', b'"i":9'))
    with pytest.raises(IntegrityError, match=job_id):
        export_project(file_orch, io.BytesIO())


def test_import_refuses_a_damaged_stream_carried_as_evidence(file_orch, pg_orch) -> None:
    good, bad = fill(file_orch, 2)
    path = file_orch.store.path(bad)
    path.write_bytes(path.read_bytes().replace(b'"i":1', b'"i":7'))
    buf = io.BytesIO()
    result = export_project(file_orch, buf, allow_damaged=True)
    assert result["damaged"] and {p["stream"] for p in result["damaged"]} == {bad}
    buf.seek(0)
    with pytest.raises(IntegrityError, match=bad) as refused:
        import_project(pg_orch, buf)
    assert pg_orch.store.read(bad) == []
    # this project holds nothing of it to verify (until 2026-12-06 the message said "run `orchestrator verify`")
    assert "run `orchestrator verify` on the project the bundle was exported from" in refused.value.message


def test_an_interrupted_import_is_completed_by_running_it_again(file_orch, pg_orch) -> None:
    fill(file_orch, 4)
    buf = io.BytesIO()
    export_project(file_orch, buf)
    whole = buf.getvalue()
    cut = whole[: whole.index(b"\n", len(whole) // 2) + 1]
    with pytest.raises(IntegrityError, match="cut short"):
        import_project(pg_orch, io.BytesIO(cut))
    assert 0 < len(list(pg_orch.store.job_ids())) < 4
    result = import_project(pg_orch, io.BytesIO(whole))
    assert every_byte(pg_orch) == every_byte(file_orch)
    assert 0 < result["written"] < result["events"]


@pytest.mark.parametrize("where, ends", [("mid-line", "in the middle of its line"), ("in a stream", "inside stream"),
                                         ("before the end record", "at its line")])
def test_a_bundle_cut_short_anywhere_says_so_in_one_wording(
        base: Path, keyring: Keyring, where: str, ends: str) -> None:
    """Until 2026-12-07 the three places a bundle may end said it three ways ("it was cut short (export again)", "the
    bundle was cut short inside stream ..." with no advice, "the bundle has no end record: ..."); postgres.md quotes
    one of them."""
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    source.submit("t.echo", "one")
    source.submit("t.echo", "two")
    lines = bundle_of(source).splitlines(keepends=True)
    cut = {"mid-line": b"".join(lines[:-2]) + lines[-2][:10], "in a stream": b"".join(lines[:-2]),
           "before the end record": b"".join(lines[:-1])}[where]
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    with pytest.raises(IntegrityError) as cut_short:
        import_project(dest, io.BytesIO(cut))
    message = cut_short.value.message
    assert message.startswith("the bundle was cut short: it ends " + ends), message
    assert ", before its end record (export it again); " in message, message
    # the streams before the cut were written, and stay: the message says so, as an import stopped by the store does
    kept = len(list(dest.store.job_ids())) + bool(dest.store.read(AUDIT_STREAM))
    events = len(dest.store.read(AUDIT_STREAM)) + sum(len(dest.store.read(j)) for j in dest.store.job_ids())
    assert kept and message.endswith(f"; the {kept} stream(s) before the cut were imported ({events} event(s)) and "
                                     "stay: importing the whole bundle completes it"), message


def test_a_bundle_cut_short_after_a_stream_left_for_its_other_history_says_it_was_left(base, keyring) -> None:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    first = source.submit("t.echo", "one")
    source.submit("t.echo", "two")
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    dest.append(None, first, [("job_submitted", {"kind": "other", "input": None, "options": {},
                                                 "context_digest": "x"})])
    lines = bundle_of(source).splitlines(keepends=True)
    with pytest.raises(IntegrityError) as cut_short:
        import_project(dest, io.BytesIO(b"".join(lines[:-2])))  # inside the second job, after the first
    assert cut_short.value.message.endswith("; no stream of it was imported, 1 holding another history here left as "
                                            "they are: importing the whole bundle completes the others"), \
        cut_short.value.message


@pytest.mark.parametrize("cut", [False, True])
def test_imported_queued_jobs_are_claimed_by_a_worker_whose_index_was_already_built(
        base: Path, keyring: Keyring, cut: bool) -> None:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    queued = [source.submit("t.echo", i) for i in range(4)]
    buf = io.BytesIO()
    export_project(source, buf)
    whole = buf.getvalue()
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    dest.submit("t.echo", "local")
    assert dest.worker().run_once() is not None  # the destination's index is built now
    if cut:  # an import cut short still wrote some jobs: they must not be left out of the index
        with pytest.raises(IntegrityError, match="cut short"):
            import_project(dest, io.BytesIO(whole[: whole.index(b"\n", len(whole) // 2) + 1]))
        written = set(dest.store.job_ids()) & set(queued)
    else:
        import_project(dest, io.BytesIO(whole))
        written = set(queued)
    ran = {r.job_id for r in iter(dest.worker().run_once, None)}
    assert written and ran == written


def test_a_worker_that_rebuilt_its_index_during_an_import_still_claims_every_imported_job(
        base: Path, keyring: Keyring) -> None:
    from orchestrator import faults

    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    queued = [source.submit("t.echo", i) for i in range(4)]
    buf = io.BytesIO()
    export_project(source, buf)
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    worker = dest.worker()
    # a worker scans the project after the first imported job landed, before the others
    faults.arm("import.after_chunk", lambda: worker.queue.ensure_built(dest))
    try:
        import_project(dest, io.BytesIO(buf.getvalue()))
    finally:
        faults.disarm_all()
    ran = {r.job_id for r in iter(worker.run_once, None)}
    assert ran == set(queued)


def test_an_imported_running_job_whose_worker_is_gone_is_recovered(base: Path, keyring: Keyring) -> None:
    import jobstates as js

    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    job = js.running(source, kind="t.echo", lease="2020-01-01T00:00:00.000000Z")  # its worker is long gone
    buf = io.BytesIO()
    export_project(source, buf)
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    worker = dest.worker()
    assert worker.run_once() is None  # the destination's index is built (empty) before the import
    import_project(dest, io.BytesIO(buf.getvalue()))
    # met at the worker's next listing of the running index, at most list_every after its last (StaleWatch)
    assert worker.recover_stale(dest.clock() + worker.stale_watch.list_every) == [job]


def test_import_never_overwrites_a_different_history(file_orch, pg_orch) -> None:
    fill(file_orch, 1)
    buf = io.BytesIO()
    export_project(file_orch, buf)
    job_id = next(file_orch.store.job_ids())
    pg_orch.append(None, job_id, [("job_submitted", {"kind": "other", "input": None, "options": {},
                                                     "context_digest": "x"})])
    before = pg_orch.store.read(job_id)
    buf.seek(0)
    with pytest.raises(ImportConflictError):
        import_project(pg_orch, buf)
    assert pg_orch.store.read(job_id) == before


def test_a_refused_import_files_no_entry_for_the_history_it_refused(base: Path, keyring: Keyring) -> None:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    job_id = source.submit("t.echo", "theirs")
    buf = io.BytesIO()
    export_project(source, buf)
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring, clock=lambda: source.clock() + 60)
    dest.append(None, job_id, [("job_submitted", {"kind": "t.echo", "input": "ours", "options": {},
                                                  "context_digest": "x"})])
    before = dest.queue.ready()
    with pytest.raises(ImportConflictError):
        import_project(dest, io.BytesIO(buf.getvalue()))
    assert dest.queue.ready() == before  # no entry filed under the bundle's (refused) submit time


def test_a_bundle_of_another_project_is_refused(file_orch, pg_orch, base, keyring) -> None:
    fill(file_orch, 1)
    buf = io.BytesIO()
    export_project(file_orch, buf)
    other = Orchestrator(base_path=base, project_id="elsewhere", keyring=keyring)
    buf.seek(0)
    with pytest.raises(InvalidInputError, match="--project-id"):
        import_project(other, buf)


def test_an_import_signed_by_a_key_this_machine_does_not_trust_says_which_key_to_trust_and_writes_nothing(
        base: Path, keyring: Keyring) -> None:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    source.submit("t.echo", "x")
    buf = io.BytesIO()
    export_project(source, buf)
    other_machine = Keyring.generate()
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=other_machine)
    with pytest.raises(IntegrityError) as refused:
        import_project(dest, io.BytesIO(buf.getvalue()))
    message = refused.value.message
    assert keyring.signer_id in message and f"{keyring.signer_id}.pub" in message, message
    assert "ORCH_TRUSTED_KEYS_DIR" in message and "run `orchestrator verify`" not in message, message
    assert not list(dest.store.job_ids()) and not dest.store.read(AUDIT_STREAM)
    other_machine.trusted[keyring.signer_id] = keyring.trusted[keyring.signer_id]  # its .pub copied over
    assert import_project(dest, io.BytesIO(buf.getvalue()))["written"] == 1


def _cli(*args: str, env: dict[str, str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from orchestrator.cli import main; main(sys.argv[1:])",
                           *args], env=env, input=stdin, capture_output=True, timeout=60, cwd=str(REPO))


def test_cli_pipes_a_project_from_files_into_postgres_and_back(cli_env, project, pg_orch, tmp_path) -> None:
    env = {**cli_env, "PROJECT_ID": project}
    for i in range(3):
        assert _cli("submit", "--kind", "echo", "--input", f'{{"n": {i}}}', env=env).returncode == 0
    exported = _cli("export", "-o", "-", env=env)
    assert exported.returncode == 0 and b"exported 3 stream(s)" in exported.stderr
    pg_env = {**env, "ORCH_STORE_URL": pg_orch.store.url}
    imported = _cli("import", "-", "--json", env=pg_env, stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert _cli("verify", env=pg_env).returncode == 0
    back = tmp_path / "back.bundle"
    assert _cli("export", "-o", str(back), env=pg_env).returncode == 0
    assert back.read_bytes().split(b"\n", 1)[1] == exported.stdout.split(b"\n", 1)[1]  # all but the timestamp


def test_cli_export_of_a_tampered_project_exits_7_and_writes_no_file(cli_env, base, project, tmp_path) -> None:
    env = {**cli_env, "PROJECT_ID": project}
    job_id = _cli("submit", "--kind", "echo", "--input", '{"i": 0}', env=env).stdout.decode().strip()
    target = tmp_path / "out.bundle"
    assert _cli("export", "-o", str(target), env=env).returncode == 0
    target.unlink()
    path = base / project / ".orchestrator" / "queue" / "jobs" / f"{job_id}.events.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"i":0', b'"i":9'))
    proc = _cli("export", "-o", str(target), env=env)
    assert proc.returncode == 7 and b"INTEGRITY_ERROR" in proc.stderr and job_id.encode() in proc.stderr
    assert not target.exists() and not list(tmp_path.glob(".out.bundle*"))


def test_export_to_stdout_with_json_keeps_stdout_for_the_bundle_its_summary_and_errors_go_to_stderr(
        cli_env, base, project) -> None:
    env = {**cli_env, "PROJECT_ID": project}
    job_ids = [_cli("submit", "--kind", "echo", "--input", f'{{"i": {i}}}', env=env).stdout.decode().strip()
               for i in range(2)]
    done = _cli("export", "-o", "-", "--json", env=env)
    assert done.returncode == 0 and json.loads(done.stderr)["streams"] == 2
    assert json.loads(done.stdout.splitlines()[-1])["end"] is True  # the bundle alone, to its end record
    path = base / project / ".orchestrator" / "queue" / "jobs" / f"{max(job_ids)}.events.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"i":1', b'"i":9'))
    failed = _cli("export", "-o", "-", "--json", env=env)
    assert failed.returncode == 7 and json.loads(failed.stderr.splitlines()[-1])["error"] == "INTEGRITY_ERROR"
    assert b'"error"' not in failed.stdout  # whatever of the bundle was written is not followed by JSON


def test_export_refuses_a_job_whose_events_were_removed_and_lists_it_when_allowed(file_orch: Orchestrator) -> None:
    ids = fill(file_orch)
    file_orch.store.path(ids[0]).unlink()  # its head record says it had events
    with pytest.raises(IntegrityError, match="TRUNCATED"):
        export_project(file_orch, io.BytesIO())
    done = export_project(file_orch, io.BytesIO(), allow_damaged=True)
    assert [(p["stream"], p["code"]) for p in done["damaged"]] == [(ids[0], "TRUNCATED")]


def test_export_and_the_anchor_never_follow_a_symbolic_link_in_a_job_files_place(file_orch: Orchestrator,
                                                                              tmp_path: Path) -> None:
    ids = fill(file_orch)
    outside = tmp_path / "outside.jsonl"
    path = file_orch.store.path(ids[0])
    outside.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(outside)
    done = export_project(file_orch, io.BytesIO(), allow_damaged=True)
    assert (ids[0], "PATH_ESCAPE") in [(p["stream"], p["code"]) for p in done["damaged"]]
    anchor = export_anchor(file_orch, tmp_path / "anchor.json")  # the linked job is left out, not a crash
    assert anchor["streams"] == len(ids)  # the other jobs and the audit log


# -- the audit log's head record travels with it (a cut of its last entries is caught) -------


def parse_bundle(data: bytes) -> tuple[dict, list[tuple[dict, list[bytes]]]]:
    """(header, [(stream header, its lines)]) of a well-formed bundle."""
    rows = data.split(b"\n")[:-1]
    header, i, streams = json.loads(rows[0]), 1, []
    while "end" not in (rec := json.loads(rows[i])):
        streams.append((rec, rows[i + 1:i + 1 + rec["lines"]]))
        i += 1 + rec["lines"]
    return header, streams


def make_bundle(header: dict, streams: list[tuple[dict, list[bytes]]]) -> bytes:
    """A bundle of these streams, its end record counting them (as an editor of a bundle would write it)."""
    out = [json.dumps(header).encode()]
    for rec, lines in streams:
        out += [json.dumps(rec).encode(), *lines]
    out.append(json.dumps({"end": True, "streams": len(streams), "events": sum(len(ls) for _, ls in streams)}).encode())
    return b"\n".join(out) + b"\n"


def bundle_of(orch: Orchestrator) -> bytes:
    buf = io.BytesIO()
    export_project(orch, buf)
    return buf.getvalue()


def history(orch: Orchestrator):
    from backends import FileHistory, PgHistory

    return PgHistory(orch) if orch.store.__class__.__name__ != "JsonlStore" else FileHistory(orch)


@pytest.mark.parametrize("direction", ["file_to_pg", "pg_to_file"])
def test_the_audit_logs_head_record_moves_with_it_and_a_cut_of_its_last_entry_is_caught_on_the_other_side(
        file_orch, pg_orch, direction) -> None:
    src, dst = (file_orch, pg_orch) if direction == "file_to_pg" else (pg_orch, file_orch)
    fill(src)
    move(src, dst)
    assert dst.store.get_aux(*AUDIT_HEAD) == src.store.get_aux(*AUDIT_HEAD) is not None
    assert verify_project(dst).ok
    raw = history(dst)
    try:
        data = raw.read_bytes(AUDIT_STREAM)
        raw.write_bytes(AUDIT_STREAM, data[:data.rindex(b"\n", 0, -1) + 1])  # its last entry, cut at a line boundary
    finally:
        raw.close()
    report = verify_project(dst)
    assert [(p.stream, p.code) for p in report.problems] == [(AUDIT_STREAM, "TRUNCATED")]  # as in the source


def test_a_bundle_whose_audit_log_was_cut_is_refused_and_nothing_is_written(file_orch, base, keyring) -> None:
    fill(file_orch)
    header, streams = parse_bundle(bundle_of(file_orch))
    rec, lines = streams[0]
    assert rec["stream"] == AUDIT_STREAM and rec["head"]  # first, with its head record
    streams[0] = ({**rec, "lines": len(lines) - 1}, lines[:-1])
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    with pytest.raises(IntegrityError, match="TRUNCATED"):
        import_project(dest, io.BytesIO(make_bundle(header, streams)))
    assert dest.store.read(AUDIT_STREAM) == [] and list(dest.store.job_ids()) == []


def test_export_refuses_a_project_whose_audit_log_was_cut_and_carries_it_when_allowed(file_orch) -> None:
    fill(file_orch)
    path = file_orch.store.path(AUDIT_STREAM)
    data = path.read_bytes()
    path.write_bytes(data[:data.rindex(b"\n", 0, -1) + 1])
    with pytest.raises(IntegrityError, match="TRUNCATED"):
        export_project(file_orch, io.BytesIO())
    done = export_project(file_orch, io.BytesIO(), allow_damaged=True)
    assert [(p["stream"], p["code"]) for p in done["damaged"]] == [(AUDIT_STREAM, "TRUNCATED")]


def test_a_bundle_of_format_v1_without_the_audit_head_record_still_imports(file_orch, base, keyring) -> None:
    fill(file_orch)
    header, streams = parse_bundle(bundle_of(file_orch))
    (audit_rec, audit_lines), jobs = streams[0], streams[1:]
    v1 = make_bundle({**header, "format": "jsonl-orchestrator/export/v1"},
                     [*jobs, ({**audit_rec, "head": None}, audit_lines)])  # as v1 wrote it: the audit log last
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    result = import_project(dest, io.BytesIO(v1))
    assert result["audit_head"] is False and result["format"] == "jsonl-orchestrator/export/v1"
    assert every_byte(dest) == every_byte(file_orch) and verify_project(dest).ok
    assert dest.store.get_aux(*AUDIT_HEAD) is None  # nothing to carry; the next audit entry writes one


def test_cli_a_moved_audit_log_cut_by_its_last_entry_fails_verify_and_a_cut_bundle_is_refused_with_exit_7(
        cli_env, tmp_path) -> None:
    env = {**cli_env, "PROJECT_ID": "p"}
    for n in range(2):
        job = _cli("submit", "--kind", "echo", "--input", f'{{"n": {n}}}', env=env).stdout.decode().strip()
        assert _cli("control", "cancel", job, "no longer needed", env=env).returncode == 0
    bundle = tmp_path / "b.bundle"
    assert _cli("export", "-o", str(bundle), env=env).returncode == 0
    moved = {**env, "BASE_PATH": str(tmp_path / "moved")}
    assert _cli("import", str(bundle), env=moved).returncode == 0
    log = tmp_path / "moved" / "p" / ".orchestrator" / "audit" / "audit_events.jsonl"
    log.write_bytes(log.read_bytes().split(b"\n", 1)[0] + b"\n")  # its second entry, cut at a line boundary
    proc = _cli("verify", env=moved)
    assert proc.returncode == 7 and b"TRUNCATED" in proc.stdout + proc.stderr
    header, streams = parse_bundle(bundle.read_bytes())
    rec, lines = streams[0]
    assert rec["stream"] == AUDIT_STREAM and len(lines) == 2
    bundle.write_bytes(make_bundle(header, [({**rec, "lines": 1}, lines[:1]), *streams[1:]]))
    proc = _cli("import", str(bundle), env={**env, "BASE_PATH": str(tmp_path / "other")})
    assert proc.returncode == 7 and b"TRUNCATED" in proc.stderr, proc.stderr
    assert not [p for p in (tmp_path / "other").rglob("*") if p.is_file()]  # nothing written


# -- an import cut short is completed by running it again, whatever healed the audit log in between --


def heal_everything(orch: Orchestrator) -> list[int]:
    """What `metrics` and `audit heal` do on the half-imported project: write the missing audit entries."""
    from orchestrator import audit

    return audit.heal(orch, [v for v in (orch.load(j) for j in orch.store.job_ids()) if v.ok])


def source_with_audited_jobs(base: Path, keyring: Keyring, *, one_entry_lost: bool) -> Orchestrator:
    source = Orchestrator(base_path=base / "src", project_id="p", keyring=keyring)
    fill(source, 4)
    if one_entry_lost:  # a crash between a cancel and its audit entry, in the source, never healed there
        job = source.submit("echo", {"lost": True})
        source.append(source.load(job), job, [("job_cancelled", {"reason": "entry lost"})])
    return source


@pytest.mark.parametrize("one_entry_lost", [False, True])
def test_an_import_cut_at_any_line_then_healed_is_completed_by_running_it_again(base, keyring, one_entry_lost) -> None:
    source = source_with_audited_jobs(base, keyring, one_entry_lost=one_entry_lost)
    whole = bundle_of(source)
    rows = whole.count(b"\n")
    for cut in range(1, rows):  # after every line but the end record's
        dest = Orchestrator(base_path=base / f"dst{cut}", project_id="p", keyring=keyring)
        with pytest.raises(IntegrityError, match="cut short|no end record"):
            import_project(dest, io.BytesIO(b"".join(whole.splitlines(keepends=True)[:cut])))
        heal_everything(dest)
        import_project(dest, io.BytesIO(whole))
        heal_everything(dest)
        report = verify_project(dest)
        assert report.ok and not report.warnings, (cut, report.problems, report.warnings)
        theirs, ours = every_byte(source), every_byte(dest)
        healed = ours[AUDIT_STREAM][0][len(theirs[AUDIT_STREAM][0]):]
        assert ours[AUDIT_STREAM][0][:len(theirs[AUDIT_STREAM][0])] == theirs[AUDIT_STREAM][0]  # the bundle's, then
        assert len(healed) == one_entry_lost  # the entry the source lacked, written once
        assert {s: v for s, v in ours.items() if s != AUDIT_STREAM} == {s: v for s, v in theirs.items()
                                                                        if s != AUDIT_STREAM}


@pytest.mark.parametrize("one_entry_lost", [False, True])
def test_an_import_that_crashed_after_any_write_then_healed_is_completed_by_running_it_again(
        base, keyring, one_entry_lost) -> None:
    from orchestrator import faults

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash

    source = source_with_audited_jobs(base, keyring, one_entry_lost=one_entry_lost)
    whole = bundle_of(source)
    streams = len(parse_bundle(whole)[1])
    for nth in range(1, streams + 1):  # each stream is one chunk: the crash falls before its head record
        dest = Orchestrator(base_path=base / f"dst{nth}", project_id="p", keyring=keyring)
        faults.arm("import.after_chunk", crash, nth=nth)
        try:
            with pytest.raises(Crash):
                import_project(dest, io.BytesIO(whole))
        finally:
            faults.disarm_all()
        heal_everything(dest)
        import_project(dest, io.BytesIO(whole))
        heal_everything(dest)
        report = verify_project(dest)
        assert report.ok and not report.warnings, (nth, report.problems, report.warnings)
        assert len(dest.store.read(AUDIT_STREAM)) == len(source.store.read(AUDIT_STREAM)) + one_entry_lost


def test_a_stream_that_holds_the_bundles_lines_and_more_since_is_complete_and_keeps_its_newer_head(
        file_orch, base, keyring) -> None:
    ids = fill(file_orch, 2)
    whole = bundle_of(file_orch)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    import_project(dest, io.BytesIO(whole))
    dest.append(dest.load(ids[0]), ids[0], [("job_cancelled", {"reason": "acted on after the import"})],
                audit=("cancel", "after the import"))
    def heads() -> dict[str, bytes | None]:
        return {s: dest.store.get_aux(HEADS_AREA, s) for s in ids} | {AUDIT_STREAM: dest.store.get_aux(*AUDIT_HEAD)}

    newer = heads()
    result = import_project(dest, io.BytesIO(whole))  # again: nothing to write, nothing overwritten
    assert result["written"] == 0 and heads() == newer
    assert verify_project(dest).ok and dest.status(ids[0]).state == "cancelled"


def test_cli_an_import_cut_short_then_metrics_then_the_import_again_completes(cli_env, tmp_path) -> None:
    env = {**cli_env, "PROJECT_ID": "p"}
    for n in range(3):
        job = _cli("submit", "--kind", "echo", "--input", f'{{"n": {n}}}', env=env).stdout.decode().strip()
        assert _cli("control", "cancel", job, "no longer needed", env=env).returncode == 0
    bundle, cut = tmp_path / "b.bundle", tmp_path / "cut.bundle"
    assert _cli("export", "-o", str(bundle), env=env).returncode == 0
    rows = bundle.read_bytes().splitlines(keepends=True)
    cut.write_bytes(b"".join(rows[:-2]))  # the end record and the last line lost on the way
    dest = {**env, "BASE_PATH": str(tmp_path / "dest")}
    proc = _cli("import", str(cut), env=dest)
    assert proc.returncode == 7 and b"cut short" in proc.stderr
    assert _cli("metrics", env=dest).returncode == 0  # it heals the audit entries it finds missing
    proc = _cli("import", str(bundle), env=dest)
    assert proc.returncode == 0, proc.stderr
    said = re.fullmatch(rb"imported 4 stream\(s\), (\d+) event\(s\) into project p "
                        rb"\((\d+) written, (\d+) already there\)\n", proc.stdout)  # what the cut import wrote
    assert said and int(said[2]) > 0 and int(said[3]) > 0 and int(said[2]) + int(said[3]) == int(said[1]), proc.stdout
    assert _cli("import", str(bundle), env=dest).stdout.endswith(b"(all already there, nothing written)\n")
    assert _cli("verify", env=dest).returncode == 0


# -- a malformed bundle is INVALID_INPUT naming its line, never a crash, and nothing of it is written --

BAD_HEADER_FIELDS = [
    ("head", "abc"), ("head", "a!bc"), ("head", 123), ("head", True), ("head", []), ("head", {}), ("head", ""),
    ("head", "é"), ("lines", "3"), ("lines", 2.0), ("lines", True), ("lines", -1), ("lines", None),
    ("lines", [2]), ("stream", 5), ("stream", None), ("stream", ["@audit"]), ("stream", {}),
]


@pytest.mark.parametrize("field,value", BAD_HEADER_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_HEADER_FIELDS])
def test_a_stream_header_field_of_the_wrong_type_is_invalid_input_naming_its_line_and_nothing_is_written(
        file_orch, base, keyring, field, value) -> None:
    fill(file_orch, 2)
    header, streams = parse_bundle(bundle_of(file_orch))
    streams[0] = ({**streams[0][0], field: value}, streams[0][1])
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    with pytest.raises(InvalidInputError, match=r"^not a bundle: line 2: "):
        import_project(dest, io.BytesIO(make_bundle(header, streams)))
    assert dest.store.read(AUDIT_STREAM) == [] and list(dest.store.job_ids()) == []


@pytest.mark.parametrize("field,value", [("end", "yes"), ("end", 1), ("streams", "3"), ("events", True),
                                         ("events", None)])
def test_an_end_record_field_of_the_wrong_type_is_invalid_input_naming_its_line(file_orch, base, keyring,
                                                                                field, value) -> None:
    fill(file_orch, 2)
    rows = bundle_of(file_orch).splitlines()
    rows[-1] = json.dumps({**json.loads(rows[-1]), field: value}).encode()
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    with pytest.raises(InvalidInputError, match=rf"^not a bundle: line {len(rows)}: "):
        import_project(dest, io.BytesIO(b"\n".join(rows) + b"\n"))


@pytest.mark.parametrize("after", [b"\n", b"{}\n", b"partial"])
def test_anything_after_the_end_record_is_invalid_input_naming_its_line(file_orch, base, keyring, after) -> None:
    fill(file_orch, 2)
    bundle = bundle_of(file_orch)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    line = bundle.count(b"\n") + 1
    with pytest.raises((InvalidInputError, IntegrityError), match=rf"line {line}"):
        import_project(dest, io.BytesIO(bundle + after))
    assert import_project(dest, io.BytesIO(bundle))["written"] == 0  # what came before was imported whole


def test_two_bundles_joined_are_refused_at_the_second_header(file_orch, base, keyring) -> None:
    fill(file_orch, 2)
    bundle = bundle_of(file_orch)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    line = bundle.count(b"\n") + 1
    with pytest.raises(InvalidInputError, match=rf"^not a bundle: line {line}: a line after the end record"):
        import_project(dest, io.BytesIO(bundle + bundle))


def test_a_malformed_head_on_a_later_stream_writes_nothing_of_that_stream(file_orch, base, keyring) -> None:
    fill(file_orch, 3)
    header, streams = parse_bundle(bundle_of(file_orch))
    rec, lines = streams[2]
    streams[2] = ({**rec, "head": "not base64!"}, lines)
    line = 2 + len(streams[0][1]) + 1 + len(streams[1][1]) + 1
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    with pytest.raises(InvalidInputError, match=rf"^not a bundle: line {line}: the head of stream {rec['stream']}"):
        import_project(dest, io.BytesIO(make_bundle(header, streams)))
    assert dest.store.read(rec["stream"]) == [] and dest.store.get_aux(HEADS_AREA, rec["stream"]) is None


def test_a_head_record_padded_past_what_a_store_holds_is_invalid_input_and_nothing_of_its_stream_is_written(
        file_orch, base, keyring) -> None:
    """Whitespace after the JSON keeps a head record's signature valid (it signs the canonical encoding), but the
    file store holds at most 511 bytes of it: it must be refused before its stream is written, not crash after."""
    import base64

    fill(file_orch, 2)
    header, streams = parse_bundle(bundle_of(file_orch))
    rec, lines = streams[1]
    streams[1] = ({**rec, "head": base64.b64encode(base64.b64decode(rec["head"]) + b" " * 600).decode()}, lines)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    line = 2 + len(streams[0][1]) + 1
    with pytest.raises(InvalidInputError, match=rf"^not a bundle: line {line}: the head of stream {rec['stream']}"):
        import_project(dest, io.BytesIO(make_bundle(header, streams)))
    assert dest.store.read(rec["stream"]) == [] and dest.store.get_aux(HEADS_AREA, rec["stream"]) is None


def test_a_bundle_header_of_the_wrong_type_is_invalid_input(base, keyring) -> None:
    dest = Orchestrator(base_path=base / "dst", project_id="p", keyring=keyring)
    for first in (b"[1,2]", b'{"format": 2, "project_id": "p"}', b'{"format": "jsonl-orchestrator/export/v2", '
                  b'"project_id": ["p"]}', b"",
                  b'{"format": ["jsonl-orchestrator/export/v2"], "project_id": "p"}',  # unhashable: was a TypeError
                  b'{"format": {"jsonl-orchestrator/export/v1": 1}, "project_id": "p"}'):
        with pytest.raises(InvalidInputError):
            import_project(dest, io.BytesIO(first + b"\n"))


@pytest.mark.parametrize("head", ["abc", 123])
def test_cli_a_malformed_head_in_a_bundle_exits_3_invalid_input_naming_the_line_no_traceback(
        cli_env, tmp_path, head) -> None:
    env = {**cli_env, "PROJECT_ID": "p"}
    assert _cli("submit", "--kind", "echo", "--input", "{}", env=env).returncode == 0
    bundle = tmp_path / "b.bundle"
    assert _cli("export", "-o", str(bundle), env=env).returncode == 0
    header, streams = parse_bundle(bundle.read_bytes())
    streams[0] = ({**streams[0][0], "head": head}, streams[0][1])
    bundle.write_bytes(make_bundle(header, streams))
    proc = _cli("import", str(bundle), env={**env, "BASE_PATH": str(tmp_path / "dest")})
    assert proc.returncode == 3 and b"INVALID_INPUT" in proc.stderr and b"line 2" in proc.stderr, proc.stderr
    assert b"Traceback" not in proc.stderr
    assert not [p for p in (tmp_path / "dest").rglob("*") if p.is_file()]


def test_a_line_after_the_end_record_is_shown_sanitized_before_it_is_cut(file_orch, base, keyring) -> None:
    """The line is quoted in the error; cut to 60 bytes first, a token it went through kept too few characters
    to be recognised (``sk-`` and 15), and sanitizing the message afterwards (the CLI does) let it through."""
    from orchestrator.security import sanitize_text

    fill(file_orch, 1)
    bundle = bundle_of(file_orch)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    secret = "sk-proj-" + "Q7xZ9kLmN2pR4sT6vW8yB1cD3fG5hJ"
    after = b'{"note": "rotated 2026-12-01, the new one: ' + secret.encode() + b'"}\n'
    assert after.index(b"sk-") + 3 < 60 < after.index(b"sk-") + 23  # the first 60 bytes hold sk- and fewer than 20 characters
    with pytest.raises(InvalidInputError, match="a line after the end record") as caught:
        import_project(dest, io.BytesIO(bundle + after))
    message = sanitize_text(caught.value.message)
    assert secret[:12] not in message and "Q7xZ9kLmN" not in message, message


@pytest.mark.parametrize("where", ["the bundle header", "a stream header"])
def test_a_malformed_line_is_shown_sanitized_before_it_is_cut(file_orch, base, keyring, where) -> None:
    """As the line after the end record: a quote cut at 60 bytes before it is sanitized keeps the start of a token
    (``sk-proj-`` and a few characters), which sanitizing the message afterwards no longer recognises."""
    from orchestrator.security import sanitize_text

    fill(file_orch, 1)
    rows = bundle_of(file_orch).split(b"\n")
    secret = "sk-proj-" + "Q7xZ9kLmN2pR4sT6vW8yB1cD3fG5hJ"
    line = b'note: rotated 2026-12-01, the new one is ' + secret.encode()
    assert line.index(b"sk-") + 3 < 60 < line.index(b"sk-") + 23  # the first 60 bytes hold sk- and fewer than 20 characters
    rows[0 if where == "the bundle header" else 1] = line
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    with pytest.raises(InvalidInputError, match="^not a bundle: line") as caught:
        import_project(dest, io.BytesIO(b"\n".join(rows)))
    message = sanitize_text(caught.value.message)
    assert secret[:12] not in message and "Q7xZ9kLmN" not in message, message


# -- a bundle line is bounded: a corrupt or hostile bundle costs at most that much memory ----------

class EndlessLine(io.RawIOBase):
    """``start``, then ``x`` without end (no newline ever comes); fails the test if read past ``ceiling`` bytes."""

    def __init__(self, start: bytes, ceiling: int) -> None:
        self.start, self.ceiling, self.served = start, ceiling, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.start[self.served:self.served + len(buf)]
        data += b"x" * (len(buf) - len(data))
        if self.served + len(data) > self.ceiling:
            raise AssertionError(f"read {self.served + len(data)} bytes: past the longest line a bundle may hold")
        buf[:len(data)] = data
        self.served += len(data)
        return len(data)


@pytest.mark.parametrize("line", [1, 2, 3], ids=["the bundle header", "a stream header", "a stream's line"])
def test_a_line_longer_than_any_export_writes_is_invalid_input_naming_it_and_its_rest_is_never_read(
        file_orch, base, keyring, line) -> None:
    from orchestrator.limits import MAX_BUNDLE_LINE_BYTES

    job_id = fill(file_orch, 1)[0]  # header, the job's stream header, its line, the end record
    start = b"".join(bundle_of(file_orch).splitlines(keepends=True)[:line - 1])
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    endless = io.BufferedReader(EndlessLine(start, len(start) + MAX_BUNDLE_LINE_BYTES + (1 << 20)))
    with pytest.raises(InvalidInputError, match=rf"^not a bundle: line {line}: the line is longer than "
                                                rf"{MAX_BUNDLE_LINE_BYTES} bytes"):
        import_project(dest, endless)
    assert dest.store.read(job_id) == [] and dest.store.get_aux(HEADS_AREA, job_id) is None


def test_cli_import_of_dev_zero_given_by_mistake_exits_3_naming_line_1_within_bounded_memory(cli_env, tmp_path) -> None:
    import resource

    limit = 1 << 30  # the command's address space: reading the endless line whole would fail here, not fill the machine
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "import", "/dev/zero", "--json"],
                          env={**cli_env, "BASE_PATH": str(tmp_path / "dest")}, capture_output=True, timeout=60,
                          cwd=str(REPO), preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    assert proc.returncode == 3, proc.stderr[-2000:]
    error = json.loads(proc.stdout)
    assert error["error"] == "INVALID_INPUT" and error["message"].startswith("not a bundle: line 1: the line is longer")


def test_export_never_writes_a_line_import_would_refuse_for_its_length(file_orch, monkeypatch) -> None:
    import orchestrator.transfer as transfer

    job_id = fill(file_orch, 1)[0]
    longest = len(file_orch.store.read(job_id)[0].raw)
    monkeypatch.setattr(transfer, "MAX_BUNDLE_LINE_BYTES", longest - 1)  # a line of this store past the bound
    out = io.BytesIO()
    with pytest.raises(InvalidInputError, match=rf"export refused: stream {job_id} line 1 is {longest} bytes"):
        export_project(file_orch, out)
    assert job_id.encode() not in out.getvalue()
    monkeypatch.setattr(transfer, "MAX_BUNDLE_LINE_BYTES", longest)  # a line as long as the bound is written
    assert export_project(file_orch, io.BytesIO())["events"] == 1


# -- the import's head record never replaces a newer one -------------------------------------------

@pytest.mark.parametrize("backend", ["file", "pg"])
def test_an_import_keeps_the_newer_head_record_of_an_event_appended_while_it_ran(
        file_orch, base, keyring, backend, request) -> None:
    """The destination already holds the bundle's lines (a second run); a worker appends just before the import
    writes the bundle's head record: the worker's record, naming its newer event, must stay."""
    from orchestrator import faults

    job_id = fill(file_orch, 1)[0]
    whole = bundle_of(file_orch)
    dest = (request.getfixturevalue("pg_orch") if backend == "pg"
            else Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring))
    import_project(dest, io.BytesIO(whole))

    def worker_appends() -> None:
        dest.append(dest.load(job_id), job_id, [("job_cancelled", {"reason": "while the import ran"})],
                    audit=("cancel", "while the import ran"))

    faults.arm("import.before_head", worker_appends)
    try:
        import_project(dest, io.BytesIO(whole))
    finally:
        faults.disarm_all()
    head = json.loads(dest.store.get_aux(HEADS_AREA, job_id))
    assert head["seq"] == 2 == len(dest.store.read(job_id))  # the worker's record, not the bundle's (seq 1)
    assert dest.status(job_id).state == "cancelled" and verify_project(dest).ok


@pytest.mark.parametrize("refusal", ["lock held", "lease lost"])
def test_an_append_refused_for_another_reason_than_a_race_stops_the_import_and_is_not_tried_again(
        file_orch, base, keyring, monkeypatch, refusal) -> None:
    """Only another writer's append first (``ConcurrencyError`` itself) makes the import read the stream again and
    decide again; its subclasses (a lock still held past a bounded wait, a fenced append) would be met again at every
    try: raised at once, not a loop without end."""
    from orchestrator.errors import LeaseLostError, LockHeldError

    fill(file_orch, 1)
    whole = bundle_of(file_orch)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    error = {"lock held": LockHeldError, "lease lost": LeaseLostError}[refusal]
    tries = []

    def refused(*_a, **_k) -> None:
        tries.append(1)
        if len(tries) > 20:
            raise RuntimeError("the import tried the same append again and again")
        raise error("refused")

    monkeypatch.setattr(dest.store, "append", refused)
    with pytest.raises(error):
        import_project(dest, io.BytesIO(whole))
    assert len(tries) == 1


def test_an_import_never_writes_its_head_record_over_a_newer_one_that_shows_a_cut(file_orch, base, keyring) -> None:
    """The destination's job went on after an import, then lost its last event (a cut at a line boundary): its head
    record shows it. Importing the old bundle again must not replace that evidence with the bundle's older record."""
    job_id = fill(file_orch, 1)[0]
    whole = bundle_of(file_orch)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    import_project(dest, io.BytesIO(whole))
    dest.append(dest.load(job_id), job_id, [("job_cancelled", {"reason": "after the import"})])
    path = dest.store.path(job_id)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:1]))  # its last event cut away
    assert [p.code for p in verify_project(dest).problems] == ["TRUNCATED"]
    assert import_project(dest, io.BytesIO(whole))["written"] == 0
    assert [(p.stream, p.code) for p in verify_project(dest).problems] == [(job_id, "TRUNCATED")]


# -- export never leaves out a job silently --------------------------------------------------------

@pytest.mark.parametrize("head_record", [True, False], ids=["with its head record", "head record removed too"])
def test_a_job_emptied_between_the_listing_and_its_read_is_refused_and_carried_when_allowed(
        file_orch, monkeypatch, head_record) -> None:
    ids = fill(file_orch, 3)
    emptied = ids[1]
    listed = list(file_orch.store.job_ids())

    def listed_then_emptied():
        file_orch.store.path(emptied).write_bytes(b"")  # just after the export listed it
        if not head_record:
            file_orch.store.delete_aux(HEADS_AREA, emptied)
        return iter(listed)

    monkeypatch.setattr(file_orch.store, "job_ids", listed_then_emptied)
    with pytest.raises(IntegrityError, match=rf"stream {emptied} .*TRUNCATED"):
        export_project(file_orch, io.BytesIO())
    done = export_project(file_orch, io.BytesIO(), allow_damaged=True)
    assert [(p["stream"], p["code"]) for p in done["damaged"]] == [(emptied, "TRUNCATED")]
    assert done["streams"] == 4  # the audit log, the two other jobs, and the emptied one carried with no line


def _damage(orch: Orchestrator, stream: str, how: str, tmp_path: Path) -> None:
    import os

    path = orch.store.path(stream)
    if how == "emptied":
        path.write_bytes(b"")
    elif how == "deleted":  # its head record left: only ``removed_jobs`` can name it
        path.unlink()
    elif how == "symbolic link":
        (tmp_path / "outside.jsonl").write_bytes(path.read_bytes())
        path.unlink()
        path.symlink_to(tmp_path / "outside.jsonl")
    else:
        path.unlink()
        os.mkfifo(path)


DAMAGE = [("job", "emptied"), ("job", "deleted"), ("job", "symbolic link"), ("job", "FIFO"),
          ("audit log", "emptied"), ("audit log", "FIFO")]


@pytest.mark.parametrize("which,how", DAMAGE, ids=[f"{w} {h}" for w, h in DAMAGE])
def test_a_stream_damaged_so_that_no_line_can_be_read_is_carried_with_its_head_record_and_the_import_refuses_it(
        file_orch, base, keyring, tmp_path, which, how) -> None:
    """``--allow-damaged`` once wrote nothing of such a stream: the import passed (exit 0) and the damage was gone on
    the other side, the audit log's check with it (docs/postgres.md: "never left out silently")."""
    ids = fill(file_orch, 3)
    stream = ids[1] if which == "job" else AUDIT_STREAM
    head = file_orch.store.get_aux(HEADS_AREA, stream) if which == "job" else file_orch.store.get_aux(*AUDIT_HEAD)
    _damage(file_orch, stream, how, tmp_path)
    with pytest.raises(IntegrityError, match=f"stream {stream} "):
        export_project(file_orch, io.BytesIO())
    buf = io.BytesIO()
    done = export_project(file_orch, buf, allow_damaged=True)
    assert stream in {p["stream"] for p in done["damaged"]}
    _, streams = parse_bundle(buf.getvalue())
    carried = [rec for rec, _ in streams if rec["stream"] == stream]
    assert carried and carried[0]["lines"] == 0 and carried[0]["head"] is not None
    assert base64.b64decode(carried[0]["head"]) == head  # the record that shows the cut
    assert done["streams"] == len(streams) == 4 and done["events"] == sum(rec["lines"] for rec, _ in streams)
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    buf.seek(0)
    with pytest.raises(IntegrityError, match=rf"stream {stream} fails verification at line 0: TRUNCATED"):
        import_project(dest, buf)
    assert dest.store.read(stream) == []


def test_a_stream_carried_with_no_line_and_no_head_record_is_refused_all_the_same(file_orch, base, keyring) -> None:
    fill(file_orch, 2)
    header, streams = parse_bundle(bundle_of(file_orch))
    job = streams[1][0]["stream"]
    streams[1] = ({**streams[1][0], "lines": 0, "head": None}, [])  # as an export carries a FIFO without a record
    dest = Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring)
    with pytest.raises(IntegrityError, match=rf"stream {job} fails .* TRUNCATED \(the bundle carries no line of it"):
        import_project(dest, io.BytesIO(make_bundle(header, streams)))
    assert dest.store.read(job) == [] and dest.store.get_aux(HEADS_AREA, job) is None


def test_cli_export_allow_damaged_of_an_emptied_job_exits_7_and_so_does_the_import(cli_env, tmp_path) -> None:
    ids = [_cli("submit", "--kind", "echo", "--input", "{}", env=cli_env).stdout.decode().strip() for _ in range(2)]
    (Path(cli_env["BASE_PATH"]) / "proj/.orchestrator/queue/jobs" / f"{ids[0]}.events.jsonl").write_bytes(b"")
    bundle = tmp_path / "b.bundle"
    assert _cli("export", "-o", str(bundle), env=cli_env).returncode == 7 and not bundle.exists()
    exported = _cli("export", "-o", str(bundle), "--allow-damaged", env=cli_env)
    assert exported.returncode == 7 and b"1 problem(s) carried as they are" in exported.stdout
    imported = _cli("import", str(bundle), env={**cli_env, "BASE_PATH": str(tmp_path / "dst")})
    assert imported.returncode == 7 and f"stream {ids[0]} fails verification".encode() in imported.stderr


# -- artifact files do not travel: export says so -----------------------------------------------

def test_export_warns_that_artifact_files_stay_behind_for_jobs_whose_events_name_some_or_that_left_some(
        file_orch) -> None:
    import shutil

    empty = fill(file_orch, 2)
    folder = file_orch.settings.state_dir / "artifacts"
    (folder / empty[0]).mkdir(parents=True)  # as a worker leaves every command job's, which wrote none
    (folder / empty[1] / "sub").mkdir(parents=True)
    assert export_project(file_orch, io.BytesIO())["warnings"] == []  # no file to copy: "2 job(s) have some" was not so
    named = file_orch.submit("t.artifact_by_key", {})
    assert file_orch.worker().run_once().job_id == named
    shutil.rmtree(folder / named)  # named by its events only (its files on the machine its worker ran on)
    [warning] = export_project(file_orch, io.BytesIO())["warnings"]
    assert "not the artifact files: 1 job(s)" in warning and str(folder) in warning
    left = fill(file_orch, 1)[0]
    (folder / left).mkdir()
    (folder / left / "half.txt").write_text("a killed run's")  # no event names it; its stale recovery looks for it
    [warning] = export_project(file_orch, io.BytesIO())["warnings"]
    assert "not the artifact files: 2 job(s)" in warning


def test_cli_export_notes_on_stderr_that_artifact_files_must_be_copied_by_hand(cli_env, tmp_path) -> None:
    job = _cli("submit", "--kind", "echo", "--input", "{}", env=cli_env).stdout.decode().strip()
    folder = Path(cli_env["BASE_PATH"]) / "proj/.orchestrator/artifacts" / job
    folder.mkdir(parents=True)
    (folder / "draft.md").write_text("draft")
    exported = _cli("export", "-o", str(tmp_path / "b.bundle"), env=cli_env)
    assert exported.returncode == 0 and exported.stderr.startswith(b"note: the bundle carries the histories, not the "
                                                                  b"artifact files: 1 job(s)"), exported.stderr
    as_json = _cli("export", "-o", str(tmp_path / "b.bundle"), "--json", env=cli_env)
    assert as_json.stderr == b"" and "1 job(s)" in json.loads(as_json.stdout)["warnings"][0]


def test_an_import_that_crashed_inside_a_chunk_at_any_line_is_completed_by_running_it_again(
        base, keyring, monkeypatch) -> None:
    # an append of several lines (a chunk) is atomic against an error, not a crash: the kernel, or a power cut, may
    # keep any prefix of its bytes, some complete lines and part of the next; running the import again completes it
    import random

    from orchestrator import transfer
    from orchestrator.store.jsonl import JsonlStore

    class Crash(BaseException):
        pass

    source = source_with_audited_jobs(base, keyring, one_entry_lost=False)
    long_job = job_with_events(source, 7)
    for i in range(5):  # an audit log of several chunks too
        from orchestrator import audit

        audit.record(source, job_id=long_job, action="note", actor="me", note=f"n{i}")
    whole = bundle_of(source)
    monkeypatch.setattr(transfer, "CHUNK", 3)
    uncut = Orchestrator(base_path=base / "uncut", project_id="p", keyring=keyring)
    import_project(uncut, io.BytesIO(whole))
    expected = every_byte(uncut)
    chunks = sum(-(-len(lines) // 3) for _, lines in parse_bundle(whole)[1])
    real_write = JsonlStore._write_all
    rng = random.Random(20261202)
    inside: list[int] = []  # the crashes that kept part of a chunk: some of its lines, not all
    cuts = [n for n in range(1, chunks + 1) for _ in range(2)]  # each chunk cut twice, at random lines
    for trial, nth in enumerate(cuts):
        calls = {"n": 0}

        def crashing_write(fd: int, data: bytes) -> None:
            calls["n"] += 1
            if calls["n"] < nth:
                return real_write(fd, data)
            lines = data.splitlines(keepends=True)
            keep = rng.randint(0, len(lines))  # complete lines kept, the whole chunk included
            torn = lines[keep][:rng.randint(0, len(lines[keep]) - 1)] if keep < len(lines) else b""
            real_write(fd, b"".join(lines[:keep]) + torn)
            if 0 < keep < len(lines):
                inside.append(nth)
            raise Crash  # the process dies before its fsync: nothing more of the chunk, no head record

        dest = Orchestrator(base_path=base / f"dst{trial}", project_id="p", keyring=keyring)
        monkeypatch.setattr(JsonlStore, "_write_all", staticmethod(crashing_write))
        with pytest.raises(Crash):
            import_project(dest, io.BytesIO(whole))
        monkeypatch.setattr(JsonlStore, "_write_all", staticmethod(real_write))
        result = import_project(dest, io.BytesIO(whole))
        assert result["streams"] == len(expected)
        assert every_byte(dest) == expected, nth
        assert {s: dest.store.get_aux(*head_records.head_key(s)) for s in expected} == \
               {s: uncut.store.get_aux(*head_records.head_key(s)) for s in expected}, nth
        report = verify_project(dest)
        assert report.ok and not report.warnings, (nth, report.problems, report.warnings)
        assert {s: dest.status(s).state for s in expected if s != AUDIT_STREAM} == \
               {s: uncut.status(s).state for s in expected if s != AUDIT_STREAM}, nth
    assert len(inside) >= len(cuts) // 3, inside  # the cuts fell inside chunks, not only on their edges


def job_with_events(orch: Orchestrator, count: int) -> str:
    """A job of ``count`` events: submitted, then claims and retries by hand (no worker needed)."""
    job_id = orch.submit("echo", {"long": True})
    view = orch.load(job_id)
    epoch = 0
    while len(view.stream.lines) < count:
        epoch += 1
        view = orch.append(view, job_id, [("job_claimed", {"worker_id": "w", "epoch": epoch, "attempt": epoch,
                                                            "lease_expires_at": "2030-01-01T00:00:00.000000Z"})],
                           run_id=f"run-{epoch}")
        if len(view.stream.lines) < count:
            view = orch.append(view, job_id, [("job_released", {"error_code": "WORKER_STOPPED", "worker_id": "w",
                                                                 "error": "stopped", "output_tail": ""})],
                               run_id=f"run-{epoch}", audit=("job_released", "stopped"))  # as a worker writes it
    return job_id


# -- a job whose kind is refused today (limits.is_kind, 2026-12-07): files took a NUL, PostgreSQL text cannot hold one --
REFUSED_KINDS = ["nul\x00kind", "two\nlines"]


@pytest.mark.parametrize("backend", ["pg", "file"])
@pytest.mark.parametrize("kind", REFUSED_KINDS)
def test_a_job_of_a_kind_refused_today_is_imported_from_files_waits_for_a_cancel_and_the_others_run(
        file_orch, base, keyring, kind, backend, request) -> None:
    """Until 2026-12-07 the import into PostgreSQL wrote the job's lines and failed on its queue row (a NUL in a text
    column), saying nothing was written, and again at each run: the jobs after it never came. A file entry's name
    holds no kind."""
    first, odd, third = submitted_as_before(file_orch, ["t.echo", kind, "t.echo"])
    dest = (request.getfixturevalue("pg_orch") if backend == "pg"
            else Orchestrator(base_path=base / "dst", project_id=file_orch.project_id, keyring=keyring))
    result = move(file_orch, dest)
    assert result["streams"] == 3 and result["written"] == result["events"] == 3  # no audit entry yet: no audit log
    assert every_byte(dest) == every_byte(file_orch)
    report = verify_project(dest)
    assert report.ok and not report.warnings, (report.problems, report.warnings)
    assert [(e.job_id, e.kind) for e in dest.queue.ready() if e.job_id == odd] == [(odd, None)]
    assert make_worker(dest).run(max_jobs=3, idle_exit=True) == 2
    assert [dest.status(j).state for j in (first, odd, third)] == ["succeeded", "queued", "succeeded"]
    dest.cancel(odd, "its kind is refused since 2026-12-07")
    assert dest.status(odd).state == "cancelled" and dest.queue.ready() == []


def test_a_postgresql_index_rebuilt_over_a_job_of_a_kind_refused_today_gives_it_a_row_of_no_kind_and_the_others_run(
        file_orch, pg_orch, monkeypatch) -> None:
    """What an import before this fix left (the lines in, no row), once ``verify`` had the built record deleted: every
    worker's rebuild failed on the row it put with the kind (exit 10), and nothing in the project ran."""
    first, odd, third = submitted_as_before(file_orch, ["t.echo", "nul\x00kind", "t.echo"])
    with monkeypatch.context() as patched:
        patched.setattr("orchestrator.transfer._put_entries", lambda orch, view: None)
        move(file_orch, pg_orch)
    pg_orch.store.delete_aux(INDEX_AREA, BUILT_KEY)
    later = Orchestrator(base_path=pg_orch.settings.base_path, project_id=pg_orch.project_id,
                         keyring=pg_orch.keyring, store=pg_orch.store)
    assert make_worker(later).run(max_jobs=3, idle_exit=True) == 2
    assert later.queue.is_built() and [(e.job_id, e.kind) for e in later.queue.ready()] == [(odd, None)]
    assert [later.status(j).state for j in (first, odd, third)] == ["succeeded", "queued", "succeeded"]


def test_an_import_stopped_by_a_storage_error_says_what_it_wrote_and_that_running_it_again_completes_it(
        file_orch, pg_orch) -> None:
    from orchestrator import faults

    fill(file_orch, 3)  # the audit log, then three jobs
    whole = bundle_of(file_orch)

    def disk_full() -> None:
        raise StorageError("the disk is full; nothing was written")

    faults.arm("import.after_chunk", disk_full, nth=3)  # the second job's lines are in, its row is not
    try:
        with pytest.raises(StorageError) as stopped:
            import_project(pg_orch, io.BytesIO(whole))
    finally:
        faults.disarm_all()
    message = stopped.value.message
    assert "nothing was written" not in message and stopped.value.exit_code == 10, message
    assert "the disk is full" in message and "2 stream(s) before it were imported" in message, message
    assert "run the import again: it completes it" in message, message
    assert import_project(pg_orch, io.BytesIO(whole))["streams"] == 4
    assert every_byte(pg_orch) == every_byte(file_orch) and verify_project(pg_orch).ok
