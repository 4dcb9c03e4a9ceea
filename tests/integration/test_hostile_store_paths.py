"""Paths planted inside the store never lead a worker outside it, nor crash it."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import threading
from pathlib import Path

import pytest

import jobstates as js
from orchestrator import Orchestrator
from orchestrator.errors import PathEscapeError, StorageError
from orchestrator.reliability import handlers  # noqa: F401 - registers rel.echo
from orchestrator.store.jsonl import DERIVED_FOLDERS, NAME_AREAS, NAME_RECORD, JsonlStore


def test_a_job_whose_artifact_folder_is_a_symlink_out_of_the_store_fails_with_path_escape(
        orch: Orchestrator, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    job = orch.submit("rel.echo", {"x": 1})
    (orch.settings.state_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    (orch.settings.state_dir / "artifacts" / job).symlink_to(outside)
    result = orch.worker(worker_id="w").run_once()  # before the fix: PathEscapeError escaped, the job stayed running
    assert result is not None and result.error_code == "PATH_ESCAPE"
    st = orch.status(job)
    assert st.state == "failed" and st.last_error["code"] == "PATH_ESCAPE"
    assert list(outside.iterdir()) == []


def test_a_stale_job_whose_artifact_folder_is_a_symlink_out_of_the_store_is_recovered_without_stopping_workers(
        orch: Orchestrator, tmp_path: Path) -> None:
    """Stale recovery meets the job's folder before any run does: the job's fault, not every worker's."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "token=abc.txt").write_text("not the store's")
    job = orch.submit("rel.echo", {"x": 1})
    other = orch.submit("rel.echo", {"x": 2})
    t = orch.clock()
    assert orch.worker(worker_id="dead", lease_seconds=5).claim(now=t).job_id == job  # ... and its worker dies
    (orch.settings.state_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    (orch.settings.state_dir / "artifacts" / job).symlink_to(outside)
    worker = orch.worker(worker_id="w", retry_base_seconds=0)
    assert worker.recover_stale(now=t + 60) == [job]  # before the fix: PathEscapeError, at every worker's every pass
    last = orch.load(job).stream.records[-1]
    assert last["type"] == "stale_recovered" and last["data"]["artifacts"] == [] and last["data"]["to"] == "queued"
    assert sorted(p.name for p in outside.iterdir()) == ["token=abc.txt"]  # never walked, nothing moved
    results = {r.job_id: r for r in (worker.run_once(now=t + 120), worker.run_once(now=t + 120))}
    assert results[other].state == "succeeded"
    assert orch.status(job).state == "failed" and results[job].error_code == "PATH_ESCAPE"


def test_an_artifacts_folder_swapped_for_a_symlink_after_a_run_is_caught_by_the_same_worker(
        orch: Orchestrator, tmp_path: Path) -> None:
    """A worker skips resolving the artifact folders when nothing changed since its last full check;
    the ``artifacts`` folder replaced by a symlink out of the store afterwards is such a change."""
    import shutil

    outside = tmp_path / "outside"
    outside.mkdir()
    worker = orch.worker(worker_id="w")
    first = orch.submit("rel.echo", {"x": 1})
    (orch.settings.state_dir / "artifacts" / first).mkdir(parents=True)  # the folder exists: checked in full once
    assert worker.run_once().state == "succeeded"
    shutil.rmtree(orch.settings.state_dir / "artifacts")
    (orch.settings.state_dir / "artifacts").symlink_to(outside)
    job = orch.submit("rel.echo", {"x": 2})
    with pytest.raises(PathEscapeError):  # the store's fault: the worker stops, as it would not have started
        worker.run_once()
    view = orch.load(job)
    assert view.state.state == "queued" and view.state.failures == 0  # handed back, not failed
    last = view.stream.records[-1]
    assert last["type"] == "job_released" and last["data"]["error_code"] == "PATH_ESCAPE"
    assert list(outside.iterdir()) == []


# -- a run that leads its own artifact folder out of the store ---------------------------------------
_SECRET_NAMED = "token=abc123.txt"  # a name the worker would move to its sanitized one


def _outside_with_a_secret_named_file(tmp_path: Path) -> Path:
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / _SECRET_NAMED).write_text("not the store's")
    return outside


def _link_out_command(outside: Path) -> list[str]:
    """A command that replaces its own folder with a link to ``outside``, then names a file there."""
    payload = json.dumps({"status": "done", "summary": "s", "artifacts": [_SECRET_NAMED]})
    script = (f'cd ..; rm -rf "$ORCH_ARTIFACTS_DIR"; ln -s {shlex.quote(str(outside))} "$ORCH_ARTIFACTS_DIR"; '
              f'printf %s {shlex.quote(payload)} > "$ORCH_TERMINAL_FILE"')
    return ["sh", "-c", script]


def _assert_failed_as_path_escape_and_nothing_outside_is_touched(orch: Orchestrator, job: str, outside: Path) -> None:
    from orchestrator.integrity import verify_project

    st = orch.status(job)
    assert st.state == "failed" and st.last_error["code"] == "PATH_ESCAPE" and st.result is None
    assert "symbolic link" in st.last_error["message"] or "escapes" in st.last_error["message"]
    assert sorted(p.name for p in outside.iterdir()) == [_SECRET_NAMED]  # not renamed, nothing added
    assert (outside / _SECRET_NAMED).read_text() == "not the store's"
    assert verify_project(orch).problems == []
    assert all(not e["data"].get("artifacts") for e in (json.loads(ln.raw) for ln in orch.store.read(job)))


def test_a_command_that_links_its_artifact_folder_out_of_the_store_fails_with_path_escape_renaming_nothing(
        orch: Orchestrator, tmp_path: Path) -> None:
    """Before the fix its payload was checked against wherever the link led: the outside file was listed as the
    job's artifact and renamed there to ``token=[REDACTED]``."""
    outside = _outside_with_a_secret_named_file(tmp_path)
    job = orch.submit("command", {"argv": _link_out_command(outside)}, max_attempts=3)
    result = orch.worker(worker_id="w").run_once()
    assert result is not None and (result.outcome, result.error_code) == ("failed", "PATH_ESCAPE")  # not retried
    _assert_failed_as_path_escape_and_nothing_outside_is_touched(orch, job, outside)


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_that_links_its_artifact_folder_out_of_the_store_fails_with_path_escape(
        orch: Orchestrator, tmp_path: Path, mode: str) -> None:
    from orchestrator.handlers import register

    outside = _outside_with_a_secret_named_file(tmp_path)

    def link_out(ctx):
        shutil.rmtree(ctx.artifacts_dir)
        os.symlink(ctx.input["to"], ctx.artifacts_dir)
        return {"status": "done", "summary": "s", "artifacts": [_SECRET_NAMED]}

    register("t.link_out", link_out)
    job = orch.submit("t.link_out", {"to": str(outside)}, max_attempts=3)
    result = orch.worker(worker_id="w", handler_process=mode).run_once()
    assert result is not None and (result.outcome, result.error_code) == ("failed", "PATH_ESCAPE")
    _assert_failed_as_path_escape_and_nothing_outside_is_touched(orch, job, outside)


def test_a_run_that_replaces_the_artifacts_folder_with_a_link_fails_with_path_escape_and_stops_the_worker(
        orch: Orchestrator, tmp_path: Path) -> None:
    outside = tmp_path / "victim"
    job = orch.submit("command", {"argv": ["sh", "-c", (
        f'cd ../..; mv artifacts artifacts.moved; mkdir -p {shlex.quote(str(outside))}/"$ORCH_JOB_ID"; '
        f'echo x > {shlex.quote(str(outside))}/"$ORCH_JOB_ID"/{shlex.quote(_SECRET_NAMED)}; '
        f'ln -s {shlex.quote(str(outside))} artifacts; '
        f"printf %s '{json.dumps({'status': 'done', 'summary': 's', 'artifacts': [_SECRET_NAMED]})}' "
        f'> "$ORCH_TERMINAL_FILE"')]}, max_attempts=3)
    with pytest.raises(PathEscapeError):  # a folder of the store is a link: the worker stops, as at a run's start
        orch.worker(worker_id="w").run_once()
    st = orch.status(job)
    assert st.state == "failed" and st.last_error["code"] == "PATH_ESCAPE" and st.result is None
    assert sorted(p.name for p in (outside / job).iterdir()) == [_SECRET_NAMED]  # not renamed


def test_an_artifact_through_a_link_inside_the_jobs_folder_that_leads_out_is_refused_and_nothing_outside_moves(
        orch: Orchestrator, tmp_path: Path) -> None:
    """``validate_artifact_path`` follows every link on the way (``realpath``): ``sub -> outside`` with the artifact
    ``sub/token=...`` resolves outside the job's folder and is refused; nothing is recorded or renamed."""
    from orchestrator.handlers import register

    outside = _outside_with_a_secret_named_file(tmp_path)

    def link_below(ctx):
        os.symlink(ctx.input["to"], ctx.artifacts_dir / "sub")
        return {"status": "done", "summary": "s", "artifacts": [f"sub/{_SECRET_NAMED}"]}

    register("t.link_below", link_below)
    job = orch.submit("t.link_below", {"to": str(outside)}, max_attempts=1)
    result = orch.worker(worker_id="w").run_once()
    assert result is not None and result.error_code == "MALFORMED_PAYLOAD"
    st = orch.status(job)
    assert st.state == "failed" and "artifact outside the job's folder" in st.last_error["message"]
    assert sorted(p.name for p in outside.iterdir()) == [_SECRET_NAMED]


# -- a directory where a record, an index entry or a lock file belongs -------------------------------
def _plant_dir(path: Path, holding_files: bool) -> None:
    """A directory the store never makes: empty, or holding a file that must not be lost."""
    if path.is_file():
        path.unlink()
    path.mkdir(parents=True)
    if holding_files:
        (path / "note").write_text("an operator's file")


holding = pytest.mark.parametrize("holding_files", [False, True], ids=["empty", "holding_files"])


@pytest.mark.parametrize("area", ["heads", "leases", "audited", "audit-head", "projections"])
def test_a_directory_in_place_of_a_record_is_no_record_and_is_replaced_only_when_empty(
        tmp_path: Path, area: str) -> None:
    store = JsonlStore(tmp_path)
    _plant_dir(tmp_path / area / "empty", holding_files=False)
    _plant_dir(tmp_path / area / "full", holding_files=True)
    assert store.get_aux(area, "empty") is None and store.get_aux(area, "full") is None  # before: IsADirectoryError
    assert store.aux_keys(area) == []  # no record: a sweep never meets them
    store.delete_aux(area, "full")  # dropping a record that is not there is fine, and loses nothing
    store.put_aux(area, "empty", b"{}")  # rebuilt in the empty one's place
    assert store.get_aux(area, "empty") == (NAME_RECORD if area in NAME_AREAS else b"{}")  # a marker: a name only
    with pytest.raises(StorageError, match="is a directory that holds files") as err:
        store.put_aux(area, "full", b"{}")
    assert err.value.code == "STORAGE_ERROR"
    assert (tmp_path / area / "full" / "note").read_text() == "an operator's file"


@holding
def test_a_directory_in_leases_or_in_the_index_never_stops_a_worker(orch: Orchestrator, holding_files: bool) -> None:
    state = orch.settings.state_dir
    dead = orch.submit("rel.echo", {"x": 0})
    t = orch.clock()
    assert orch.worker(worker_id="dead", lease_seconds=1).claim(now=t) is not None  # ... and the worker died
    planted = ["leases/subdir.1", f"leases/{dead}.1", "index/running/subdir.1",
               "index/ready/0999.00000000000000001.subdir"]  # met first: priority 1
    for rel in planted:
        _plant_dir(state / rel, holding_files)
    job = orch.submit("rel.echo", {"x": 1})
    with orch.worker(worker_id="w") as worker:
        result = worker.run_once(now=t + 60)  # before the fix: IsADirectoryError from the sweep or the index
    assert result is not None and (result.job_id, result.state) == (job, "succeeded")
    assert orch.status(dead).last_error["code"] == "NO_TERMINAL_SIGNAL_STALE"  # its lease: the claim's
    for rel in planted[2:]:  # an index entry's directory goes when empty, stays (skipped) when not
        assert (state / rel / "note").is_file() if holding_files else not (state / rel).exists()


@holding
def test_a_directory_in_place_of_a_head_record_or_the_metrics_cache_never_fails_a_command(
        orch: Orchestrator, holding_files: bool) -> None:
    from orchestrator.integrity import verify_project
    from orchestrator.projection import refresh

    state = orch.settings.state_dir
    job = orch.submit("rel.echo", {"x": 1})
    for rel in ["heads/subdir", "audit-head/audit", "projections/jobs-v2"]:
        _plant_dir(state / rel, holding_files)
    assert verify_project(orch).ok  # before the fix: IsADirectoryError (a missing record, like a deleted one)
    if holding_files:
        for _ in range(2):  # the cache cannot be written: figures from the events each time, a warning, the files kept
            result = refresh(orch)
            assert list(result.rows) == [job] and [w["code"] for w in result.warnings] == ["CACHE_NOT_WRITTEN"]
            assert "jobs-v2 is a directory that holds files" in result.warnings[0]["message"]
        assert (state / "projections" / "jobs-v2" / "note").is_file()
    else:
        assert list(refresh(orch).rows) == [job] and (state / "projections" / "jobs-v2").is_file()


def _refresh_or_fail_if_it_hangs(orch: Orchestrator):
    """``refresh`` in a thread: a FIFO read blocks until a writer comes, and a test must fail, not hang."""
    import threading

    from orchestrator.projection import refresh

    outcome: list = []

    def run() -> None:
        try:
            outcome.append(refresh(orch))
        except Exception as exc:  # raised again in the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if not outcome:
        pytest.fail("refresh hung reading the metrics cache")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


@pytest.mark.parametrize("planted", ["projections_is_a_file", "folder_as_its_temporary_copy"])
def test_a_metrics_cache_that_cannot_be_written_is_a_warning_and_what_is_in_its_way_is_kept(
        orch: Orchestrator, planted: str) -> None:
    from orchestrator.projection import refresh

    state = orch.settings.state_dir
    job = orch.submit("rel.echo", {"x": 1})
    in_the_way = state / "projections" if planted == "projections_is_a_file" else \
        state / "projections" / f".jobs-v2.{os.getpid()}.{threading.get_native_id()}.tmp" / "note"  # this thread's
    in_the_way.parent.mkdir(parents=True, exist_ok=True)
    in_the_way.write_text("an operator's file")
    reopened = Orchestrator(base_path=orch.settings.base_path, project_id=orch.project_id, keyring=orch.keyring)
    result = refresh(reopened)  # a store opened after the file was planted: not refused for a derived folder
    assert list(result.rows) == [job] and [w["code"] for w in result.warnings] == ["CACHE_NOT_WRITTEN"]
    assert in_the_way.read_text() == "an operator's file"
    assert reopened.status(job).state == "queued"  # every other command works as well


@pytest.mark.parametrize("planted", ["fifo", "link_to_a_fifo", "socket", "unreadable"])
def test_a_metrics_cache_that_cannot_be_read_is_rebuilt_in_its_place_and_never_hangs(
        orch: Orchestrator, tmp_path: Path, monkeypatch, planted: str) -> None:
    cache, outside = orch.settings.state_dir / "projections" / "jobs-v2", tmp_path / "outside.fifo"
    job = orch.submit("rel.echo", {"x": 1})
    cache.parent.mkdir(parents=True, exist_ok=True)
    if planted == "fifo":
        os.mkfifo(cache)
    elif planted == "link_to_a_fifo":
        os.mkfifo(outside)
        cache.symlink_to(outside)
    elif planted == "socket":  # opening it fails (ENXIO), as the store reports it: StorageError
        import socket

        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(cache))
        listener.close()
    else:  # no permission to read it; root reads anything, so the store is made to say so
        real = orch.store.get_aux

        def refused(area: str, key: str) -> bytes | None:
            if area == "projections":
                from orchestrator.store.files import path_error

                raise path_error(PermissionError(13, "Permission denied", key))  # as the store reports it
            return real(area, key)

        monkeypatch.setattr(orch.store, "get_aux", refused)
    result = _refresh_or_fail_if_it_hangs(orch)  # before the fix: a FIFO hung it, no permission was exit 10
    assert list(result.rows) == [job] and result.warnings == []
    assert cache.is_file() and not cache.is_symlink()  # the link itself replaced, never what it points to
    assert planted != "link_to_a_fifo" or outside.is_fifo()


@holding
def test_a_directory_in_place_of_an_audit_lock_is_taken_when_empty_else_a_storage_error(
        orch: Orchestrator, holding_files: bool) -> None:
    job = js.waiting_human(orch)
    for bucket in range(64):
        _plant_dir(orch.settings.state_dir / "locks" / f"audit-{bucket:02d}.lock", holding_files)
    if holding_files:
        with pytest.raises(StorageError, match="could not open the lock"):
            orch.resume(job, "yes")
        assert orch.status(job).state == "waiting_human"
    else:
        orch.resume(job, "yes")
        assert orch.status(job).state == "queued"


# -- a symbolic link where an events file or a slot record belongs ---------------------------------
def _outside(tmp_path: Path, exists: bool) -> Path:
    target = tmp_path / "outside" / ("file" if exists else "nowhere")
    target.parent.mkdir(exist_ok=True)
    if exists:
        target.write_bytes(b"")
    return target


@pytest.mark.parametrize("exists", [True, False], ids=["to_a_file_outside", "dangling"])
def test_a_symlink_planted_as_a_jobs_events_file_is_never_written_through_and_is_reported(
        orch: Orchestrator, tmp_path: Path, exists: bool) -> None:
    from orchestrator.submitted import key_job_id
    from orchestrator.integrity import verify_project

    other = orch.submit("rel.echo", {"x": 0})
    job = key_job_id(orch.project_id, "k1")  # the id a submit with this key writes to
    target = _outside(tmp_path, exists)
    orch.store.path(job).symlink_to(target)
    with pytest.raises(PathEscapeError, match="is a symbolic link"):  # before: appended to the outside file
        orch.submit_job("rel.echo", {"x": 1}, key="k1")
    assert (target.read_bytes() == b"") if exists else not target.exists()
    st = orch.status(job)  # a read reports it as the job's problem (exit 7), never follows it
    assert st.integrity_error is not None and st.integrity_error["problems"][0]["code"] == "PATH_ESCAPE"
    assert {j.job_id for j in orch.jobs()} == {other, job}  # before (dangling): FileNotFoundError
    assert [p.code for p in verify_project(orch).problems] == ["PATH_ESCAPE"]


def test_a_symlink_planted_as_a_head_record_is_never_written_through_and_its_job_is_never_run(
        orch: Orchestrator, tmp_path: Path) -> None:
    from orchestrator.integrity import verify_project

    job = orch.submit("rel.echo", {"x": 1})
    head = orch.settings.state_dir / "heads" / job
    head.unlink()
    target = _outside(tmp_path, exists=True)
    head.symlink_to(target)
    assert orch.worker(worker_id="w").run_once() is None  # refused, not claimed: its head record is a link
    assert orch.status(job).integrity_error["problems"][0]["code"] == "PATH_ESCAPE"
    assert [p.code for p in verify_project(orch).problems] == ["PATH_ESCAPE"]
    assert target.read_bytes() == b"" and head.is_symlink()


@pytest.mark.parametrize("planted", ["audit/audit_events.jsonl", "audit-head/audit"])
def test_a_symlink_planted_as_the_audit_log_or_its_head_record_is_a_problem_verify_lists_not_an_error(
        orch: Orchestrator, tmp_path: Path, planted: str) -> None:
    from orchestrator.integrity import verify_project

    job = js.awaiting_audit(orch)
    orch.approve(job)  # an audit entry, and the audit log's head record
    path = orch.settings.state_dir / planted
    target = tmp_path / "outside"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    # before: PathEscapeError, verify exited 3. One job's verify reads the log (its entries), not its head record
    one_job = [("@audit", "PATH_ESCAPE")] if planted.startswith("audit/") else []
    for report, expected in ((verify_project(orch), [("@audit", "PATH_ESCAPE")]), (verify_project(orch, job), one_job)):
        assert [(p.stream, p.code) for p in report.problems] == expected
        assert report.warnings == []  # no entry could be read, so none is reported missing
    assert target.read_bytes() == path.read_bytes()


def test_a_symlink_planted_as_the_audit_log_is_a_problem_of_the_audit_timeline_not_an_error(
        orch: Orchestrator, tmp_path: Path) -> None:
    from orchestrator.timeline import timeline

    job = js.awaiting_audit(orch)
    orch.approve(job)
    path = orch.settings.state_dir / "audit" / "audit_events.jsonl"
    target = tmp_path / "outside"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    for result in (timeline(orch, job_id=job), timeline(orch, run_id="run-1")):  # before: PathEscapeError, exit 3
        assert result["ok"] is False and result["job_id"] == job
        assert [(p["stream"], p["code"]) for p in result["problems"]] == [("@audit", "PATH_ESCAPE")]
        assert result["lines"] and {ln["status"] for ln in result["lines"]} == {"ok"} and result["warnings"] == []


def test_a_symlink_planted_as_an_anchored_jobs_file_is_a_problem_of_verify_against_named_once(
        orch: Orchestrator, tmp_path: Path, cli_env: dict[str, str]) -> None:
    import base64
    import json
    import subprocess
    import sys

    from orchestrator.integrity import check_anchor, export_anchor

    first, second = orch.submit("rel.echo", {"x": 1}), orch.submit("rel.echo", {"x": 2})
    anchor = tmp_path / "anchor.json"
    export_anchor(orch, anchor)
    path = orch.store.path(first)
    path.unlink()
    path.symlink_to(_outside(tmp_path, exists=True))
    assert [(p.stream, p.code) for p in check_anchor(orch, anchor)] == [(first, "PATH_ESCAPE")]  # before: raised
    env = {**cli_env, "ORCH_SIGNING_KEY": base64.urlsafe_b64encode(orch.keyring.signer or b"").decode()}
    for args in (["--against", str(anchor)], ["--job-id", second, "--against", str(anchor)]):
        done = subprocess.run([sys.executable, "-m", "orchestrator", "verify", "--json", *args], env=env,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 7, done.stderr  # before: exit 3, an error object and no report
        assert [(p["stream"], p["code"]) for p in json.loads(done.stdout)["problems"]] == [(first, "PATH_ESCAPE")]


@pytest.mark.parametrize("area", ["heads", "leases", "audited", "audit-head"])
@pytest.mark.parametrize("exists", [True, False], ids=["to_a_file_outside", "dangling"])
def test_a_slot_is_never_written_or_read_through_a_symlink(tmp_path: Path, area: str, exists: bool) -> None:
    store = JsonlStore(tmp_path / "store")
    target = _outside(tmp_path, exists)
    (tmp_path / "store" / area).mkdir(parents=True)
    (tmp_path / "store" / area / "k").symlink_to(target)
    with pytest.raises(PathEscapeError) as err:
        store.put_aux(area, "k", b"{}")  # before: written to the target, or created it
    assert err.value.code == "PATH_ESCAPE" and err.value.exit_code == 3
    with pytest.raises(PathEscapeError):
        store.get_aux(area, "k")
    assert (target.read_bytes() == b"") if exists else not target.exists()


def test_a_symlink_planted_as_a_lease_record_reads_as_no_record(orch: Orchestrator, tmp_path: Path) -> None:
    from orchestrator.leases import read_lease

    from orchestrator.leases import Lease

    job = orch.submit("rel.echo", {"x": 1})
    t = orch.clock()
    claim = orch.worker(worker_id="dead", lease_seconds=1).claim(now=t)
    target = _outside(tmp_path, exists=True)  # a record that would keep the job for another hour
    target.write_bytes(Lease(job, claim.run_id, 1, "dead", 1, t + 3600, t).to_json())
    (orch.settings.state_dir / "leases").mkdir(exist_ok=True)
    (orch.settings.state_dir / "leases" / f"{job}.1").symlink_to(target)
    assert read_lease(orch.store, job, 1) is None
    assert orch.worker(worker_id="w").recover_stale(now=t + 2) == [job]  # recovery is not blocked


@holding
def test_a_directory_planted_as_a_jobs_events_file_is_taken_when_empty_else_a_storage_error(
        orch: Orchestrator, holding_files: bool) -> None:
    from orchestrator.submitted import key_job_id

    orch.submit("rel.echo", {"x": 0})
    job = key_job_id(orch.project_id, "k1")
    _plant_dir(orch.store.path(job), holding_files)
    assert orch.store.read(job) == []  # no line, no traceback
    if holding_files:
        with pytest.raises(StorageError, match="is a directory that holds files"):
            orch.submit_job("rel.echo", {"x": 1}, key="k1")
        assert (orch.store.path(job) / "note").is_file()
    else:
        assert orch.submit_job("rel.echo", {"x": 1}, key="k1").created
        assert orch.status(job).state == "queued"


def test_a_symbolic_link_planted_as_an_audit_lock_is_refused_and_nothing_is_made_outside(
        orch: Orchestrator, tmp_path: Path) -> None:
    from orchestrator import audit

    job = orch.submit("rel.echo", {"x": 1})
    locks = orch.store.root / "locks"
    locks.mkdir(exist_ok=True)
    target = tmp_path / "escaped"
    (locks / f"audit-{audit._bucket(job):02d}.lock").symlink_to(target)
    with pytest.raises(PathEscapeError):
        orch.cancel(job, "no")
    assert not target.exists() and orch.status(job).state == "queued"


def test_a_fifo_planted_in_a_job_files_place_never_hangs_a_read(orch: Orchestrator) -> None:
    import os
    import threading

    orch.submit("rel.echo", {"x": 1})
    fifo = orch.store.path("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    os.mkfifo(fifo)
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(orch.status(fifo.name.split(".")[0])), daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "opening the FIFO blocked the read"
    assert [st.integrity_error["problems"][0]["code"] for st in outcome] == ["NOT_A_FILE"]  # until 2026-12-03: no job
    assert len(orch.jobs()) == 2


@pytest.mark.parametrize("planted", ["job_file", "head_record"])
def test_a_fifo_held_open_by_a_writer_in_a_job_files_place_reads_as_empty_never_a_crash(
        orch: Orchestrator, planted: str) -> None:
    """Its read finds nothing to read yet (``EAGAIN``): no line, no record, as for a FIFO nobody writes to; it
    was a ``None`` that the read took for bytes (``AttributeError``). A job file's is then what is in its place,
    ``NOT_A_FILE`` (until 2026-12-03: no job)."""
    job = orch.submit("rel.echo", {"x": 1})
    fifo = orch.store.path("01ARZ3NDEKTSV4RRFFQ69G5FAV") if planted == "job_file" else \
        orch.settings.state_dir / "heads" / job
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # someone holds it open and writes nothing
    try:
        if planted == "job_file":
            st = orch.status(fifo.name.split(".")[0])
            assert st.state is None and st.integrity_error["problems"][0]["code"] == "NOT_A_FILE"
        else:
            assert orch.status(job).state == "queued"  # no head record: every line checked on its own
    finally:
        os.close(writer)


# -- a FIFO, socket or folder in a job's events file place, with no head record ------------------------------------
def _plant_in_a_job_files_place(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str,
                                job_id: str = "01ARZ3NDEKTSV4RRFFQ69G5FAV") -> Path:
    """A FIFO, a socket or a folder holding a file where the events file of a job with no head record belongs."""
    path = orch.store.path(job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    _plant(path, monkeypatch, planted)
    assert orch.store.get_aux("heads", job_id) is None
    return path


def _plant(path: Path, monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    """A FIFO, a socket (bound by its name: a socket's path is at most 108 bytes) or a folder holding a file at
    ``path``, which is not there."""
    import socket

    if planted == "fifo":
        os.mkfifo(path)
    elif planted == "socket":
        monkeypatch.chdir(path.parent)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path.name)
    else:
        path.mkdir()
        (path / "kept").write_bytes(b"x")


PLANTED_WHAT = {"fifo": "a FIFO", "socket": "a socket", "folder holding a file": "a directory that holds files"}


@pytest.mark.parametrize("planted", ["fifo", "socket", "folder holding a file"])
def test_a_fifo_socket_or_folder_in_a_job_files_place_is_a_not_a_file_problem_of_verify_and_status(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    """Until 2026-12-03, with no head record: ``verify`` passed over it (OK), ``verify --job-id`` and ``status`` said
    JOB_NOT_FOUND (a socket: STORAGE_ERROR, its open's ENXIO)."""
    from orchestrator.integrity import verify_project

    good = orch.submit("rel.echo", {"x": 1})
    path = _plant_in_a_job_files_place(orch, monkeypatch, planted)
    job = path.name.split(".")[0]
    for report in _in_a_thread_or_fail_if_it_hangs(lambda: (verify_project(orch), verify_project(orch, job)), path):
        assert [(p.stream, p.line, p.code) for p in report.problems] == [(job, 0, "NOT_A_FILE")]
        assert report.problems[0].message.startswith(f"{path} is {PLANTED_WHAT[planted]}")
    st = orch.status(job)
    assert st.state is None and [p["code"] for p in st.integrity_error["problems"]] == ["NOT_A_FILE"]
    listed = {s.job_id: s for s in orch.jobs()}
    assert set(listed) == {good, job} and listed[good].state == "queued" and listed[job].integrity_error
    assert not path.is_file() and path.exists()  # left for an operator
    assert orch.worker(worker_id="w").run_once().job_id == good  # the worker is not stopped by it


def test_an_empty_folder_in_a_job_files_place_is_still_no_job(orch: Orchestrator) -> None:
    """An append takes an empty folder's place (``vacate``): it is no job, not a problem."""
    from orchestrator.errors import JobNotFoundError
    from orchestrator.integrity import verify_project

    orch.submit("rel.echo", {"x": 1})
    path = orch.store.path("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    path.mkdir(parents=True)
    assert verify_project(orch).ok and len(orch.jobs()) == 1
    with pytest.raises(JobNotFoundError):
        orch.status(path.name.split(".")[0])


@pytest.mark.parametrize("planted", ["fifo", "socket", "folder holding a file"])
def test_verify_and_status_commands_report_not_a_file_for_a_job_file_that_is_not_one_exit_7(
        cli_orch: Orchestrator, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    import json

    from helpers import run_module

    cli_orch.submit("rel.echo", {"x": 1})
    path = _plant_in_a_job_files_place(cli_orch, monkeypatch, planted)
    job = path.name.split(".")[0]
    writer = os.open(path, os.O_RDWR | os.O_NONBLOCK) if planted == "fifo" else None  # held open: still no wait
    try:
        runs = {args: run_module(*args, "--json", env=cli_env) for args in (
            ("verify",), ("verify", "--job-id", job), ("status", job), ("status", "--all"))}
        text = run_module("verify", env=cli_env)
    finally:
        if writer is not None:
            os.close(writer)
    for args, proc in runs.items():
        assert proc.returncode == 7 and "Traceback" not in proc.stderr, (args, proc.stdout, proc.stderr)
        out = json.loads(proc.stdout)
        if args[0] == "verify":
            assert [(p["stream"], p["code"]) for p in out["problems"]] == [(job, "NOT_A_FILE")], args
        else:
            st = out if len(args) == 2 and args[1] == job else {j["job_id"]: j for j in out["jobs"]}[job]
            assert [p["code"] for p in st["integrity_error"]["problems"]] == ["NOT_A_FILE"], args
    assert text.returncode == 7 and f"{path}:0: NOT_A_FILE: {path} is {PLANTED_WHAT[planted]}" in text.stdout


@pytest.mark.parametrize("planted", ["fifo", "socket", "folder holding a file"])
def test_metrics_counts_a_job_file_that_is_not_one_as_an_integrity_error_and_never_waits_on_it(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    """Until 2026-12-03 the jobs cache listed regular files only: ``metrics`` passed over what ``verify`` and
    ``status --all`` report as NOT_A_FILE (exit 7). Now it is one of the ``integrity_errors`` (critical alert: run
    verify), cold and warm, and no longer once it is moved away."""
    orch.submit("rel.echo", {"x": 1})
    path = _plant_in_a_job_files_place(orch, monkeypatch, planted)
    writer = os.open(path, os.O_RDWR | os.O_NONBLOCK) if planted == "fifo" else None  # held open: still no wait
    try:
        for rebuild in (True, False, False):  # a cold cache, then a warm one (the entry's fingerprint unchanged)
            m = _in_a_thread_or_fail_if_it_hangs(lambda: orch.metrics(rebuild=rebuild), path)
            assert (m.jobs, m.integrity_errors, m.counts["queued"]) == (2, 1, 1), m
            assert "INTEGRITY_ERRORS" in {a["code"] for a in m.alerts}
    finally:
        if writer is not None:
            os.close(writer)
    assert not path.is_file() and path.exists()  # left for an operator
    if planted == "folder holding a file":
        (path / "kept").unlink()
        path.rmdir()
    else:
        path.unlink()
    m = orch.metrics()
    assert (m.jobs, m.integrity_errors) == (1, 0) and "INTEGRITY_ERRORS" not in {a["code"] for a in m.alerts}


def test_metrics_command_exits_0_and_shows_a_job_file_that_is_not_one_among_the_integrity_errors(
        cli_orch: Orchestrator, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from helpers import run_module

    cli_orch.submit("rel.echo", {"x": 1})
    _plant_in_a_job_files_place(cli_orch, monkeypatch, "fifo")
    proc = run_module("metrics", "--json", env=cli_env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    figures = json.loads(proc.stdout)
    assert figures["integrity_errors"] == 1 and "INTEGRITY_ERRORS" in {a["code"] for a in figures["alerts"]}
    failing = run_module("metrics", "--fail-on", "critical", "--json", env=cli_env)
    assert failing.returncode == 12 and json.loads(failing.stdout)["error"] == "ALERTS_FIRING"


@pytest.mark.parametrize("planted", ["fifo", "folder holding a file"])
def test_export_names_a_job_file_that_is_not_one_as_not_a_file_not_as_emptied(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, planted: str) -> None:
    from orchestrator.errors import IntegrityError
    from orchestrator.transfer import export_project

    orch.submit("rel.echo", {"x": 1})
    path = _plant_in_a_job_files_place(orch, monkeypatch, planted)
    with pytest.raises(IntegrityError) as refused, open(tmp_path / "bundle", "wb") as out:
        export_project(orch, out)
    assert [p["code"] for p in refused.value.details["problems"]] == ["NOT_A_FILE"], refused.value.message
    assert not path.is_file() and path.exists()


# -- a symbolic link, or a file, where a folder of the store belongs -------------------------------
def _store_folders() -> list[str]:
    """Every fixed folder of a project's ``.orchestrator`` ("" is the folder itself)."""
    from orchestrator.queue import INDEX_DIR, INDEX_FOLDERS
    from orchestrator.store.jsonl import STORE_FOLDERS
    from orchestrator.worker_folders import WORKER_FOLDERS

    index = [f"{INDEX_DIR}/{name}" if name else INDEX_DIR for name in INDEX_FOLDERS]
    return sorted({*STORE_FOLDERS, *index, *WORKER_FOLDERS})


def _busy_project(orch: Orchestrator) -> None:
    """A project whose store has made every folder it makes."""
    from orchestrator.integrity import verify_project
    from orchestrator.projection import refresh

    done = orch.submit("rel.echo", {"x": 1}, audit=True)
    with orch.worker(worker_id="w") as worker:
        worker.run_once()
    orch.approve(done)
    orch.cancel(orch.submit("rel.echo", {"x": 2}), "not needed")
    (orch.settings.state_dir / "artifacts" / done).mkdir(parents=True, exist_ok=True)
    refresh(orch)
    verify_project(orch)


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_every_folder_the_store_makes_is_one_it_checks(orch: Orchestrator) -> None:
    _busy_project(orch)
    state = orch.settings.state_dir
    made = {str(p.relative_to(state)) for p in state.rglob("*") if p.is_dir()}
    fixed = set(_store_folders()) - {""}
    assert made - fixed <= {p for p in made if p.startswith(("artifacts/", "runs/"))}  # a job's or a run's own
    assert {"queue/jobs", "heads", "index/ready", "locks", "projections"} <= made & fixed


@pytest.mark.parametrize("folder", _store_folders(), ids=lambda name: name or ".orchestrator")
def test_a_folder_of_the_store_that_is_a_symbolic_link_is_refused_and_nothing_is_written_where_it_leads(
        orch: Orchestrator, keyring, tmp_path: Path, folder: str) -> None:
    import shutil

    _busy_project(orch)
    place = orch.settings.state_dir / folder if folder else orch.settings.state_dir
    outside = tmp_path / "outside"  # the folder moved out, as to another disk, and linked back
    shutil.move(place, outside) if place.exists() else outside.mkdir()
    place.symlink_to(outside, target_is_directory=True)
    before = _tree(outside)
    with pytest.raises(PathEscapeError, match="is a symbolic link where a folder of the store belongs") as err:
        again = Orchestrator(base_path=orch.settings.base_path, project_id="proj", keyring=keyring)
        job = again.submit("rel.echo", {"x": 3})
        again.worker(worker_id="w2").run_once()  # before the fix: ran, its files written where the link leads
    assert err.value.code == "PATH_ESCAPE" and err.value.exit_code == 3 and str(place) in err.value.message
    assert _tree(outside) == before
    if folder in ("runs", "artifacts"):  # the worker refused to start: no job burned on a store's fault
        assert again.status(job).state == "queued"


@pytest.mark.parametrize("folder", [f for f in _store_folders() if f and f not in DERIVED_FOLDERS], ids=str)
def test_a_folder_of_the_store_that_is_a_file_is_a_storage_error_when_the_store_is_opened(
        orch: Orchestrator, keyring, folder: str) -> None:
    import shutil

    _busy_project(orch)
    place = orch.settings.state_dir / folder
    shutil.rmtree(place, ignore_errors=True)
    place.parent.mkdir(parents=True, exist_ok=True)
    place.write_bytes(b"")
    with pytest.raises(StorageError, match=f"{place} is a file where a folder belongs") as err:
        Orchestrator(base_path=orch.settings.base_path, project_id="proj", keyring=keyring).worker(worker_id="w2")
    assert err.value.exit_code == 10


@pytest.mark.parametrize("action", ["submit", "status", "jobs", "verify", "metrics", "worker", "cancel"])
def test_a_store_folder_turned_into_a_file_under_an_open_orchestrator_is_a_storage_error_for_python_callers(
        orch: Orchestrator, action: str) -> None:
    """The CLI mapped these ``OSError``s for its commands only; a Python caller got ``NotADirectoryError``."""
    from orchestrator.integrity import verify_project
    from orchestrator.projection import refresh

    job = orch.submit("rel.echo", {"x": 1})
    orch.queue  # noqa: B018 - opened before the damage, as in a long-lived process
    jobs = orch.store.jobs_dir
    jobs.rename(jobs.with_name("jobs.moved"))
    jobs.write_bytes(b"")
    calls = {"submit": lambda: orch.submit("rel.echo", {"x": 2}), "status": lambda: orch.status(job),
             "jobs": lambda: list(orch.jobs()), "verify": lambda: verify_project(orch), "metrics": lambda: refresh(orch),
             "worker": lambda: orch.worker(worker_id="w").run_once(), "cancel": lambda: orch.cancel(job, "no")}
    with pytest.raises(StorageError, match=f"{jobs} is a file where a folder belongs"):
        calls[action]()


@pytest.mark.parametrize("area", ["heads", "projections", "locks", "queue"])
def test_a_folder_the_store_makes_is_never_made_through_a_dangling_symbolic_link(tmp_path: Path, area: str) -> None:
    """Planted after the store was opened, so the check at opening did not see it: ``makedirs`` would take
    a link for the folder; the store's own ``make_folder`` does not."""
    root = tmp_path / "store"
    store = JsonlStore(root)
    target = tmp_path / "outside" / "nowhere"
    root.mkdir()
    (root / area).symlink_to(target)
    with pytest.raises(PathEscapeError, match=f"{root / area} is a symbolic link"):
        if area == "locks":
            with store.exclusive("x"):
                pass
        elif area == "queue":
            store.append("J1", lambda head: [b'{"seq": 1}'])
        else:
            store.put_aux(area, "k", b"{}")
    assert not (tmp_path / "outside").exists()


def test_a_project_folder_that_is_a_symbolic_link_is_the_users_choice_and_is_followed(
        base: Path, keyring, tmp_path: Path) -> None:
    """Only the store's own folders are refused as links: users link their project folders (to another disk)."""
    elsewhere = tmp_path / "disk2" / "proj"
    elsewhere.mkdir(parents=True)
    (base / "proj").symlink_to(elsewhere, target_is_directory=True)
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring)
    job = orch.submit("rel.echo", {"x": 1})
    assert orch.worker(worker_id="w").run_once().state == "succeeded"
    assert (elsewhere / ".orchestrator" / "queue" / "jobs" / f"{job}.events.jsonl").is_file()


@pytest.mark.parametrize("name", ["my notes", "copy of J", "a\nb", "..x", os.fsdecode(b"bad\xff")])
def test_a_stray_file_named_like_no_job_is_passed_over_by_every_command_that_lists_jobs(
        orch: Orchestrator, name: str) -> None:
    """A file in ``queue/jobs/`` whose name is no job id (an operator's copy, a note) is no job this code
    wrote: the commands that list every job pass over it instead of refusing the whole project."""
    from orchestrator.integrity import verify_project
    from orchestrator.projection import refresh

    job = orch.submit("rel.echo", {"x": 1})
    stray = orch.store.jobs_dir / f"{name}.events.jsonl"
    stray.write_bytes(orch.store.path(job).read_bytes())
    assert verify_project(orch).ok and [s.job_id for s in orch.jobs()] == [job]
    assert list(refresh(orch).rows) == [job]
    assert refresh(orch).replayed == 0  # and the next call stays on its warm path


def _audit_log_linked_out(orch: Orchestrator, tmp_path: Path) -> Path:
    """The audit log moved out of the store and a symbolic link to it put in its place; returns where it went."""
    path = orch.settings.state_dir / "audit" / "audit_events.jsonl"
    target = tmp_path / "outside.jsonl"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    return target


@pytest.fixture
def cli_orch(base: Path, cli_env: dict[str, str]) -> Orchestrator:
    """The project the CLI (``cli_env``) works on, with the same signing key."""
    from orchestrator.key_files import load_keyring

    return Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env))


def test_a_control_action_is_refused_before_its_event_when_the_audit_log_is_a_symbolic_link(
        cli_orch: Orchestrator, cli_env: dict[str, str], tmp_path: Path) -> None:
    """Before: the event was written (the job approved, cancelled...), then its entry refused: exit 3 for an action
    that had been applied, and an event with no audit entry."""
    import json

    from helpers import run_module

    cancel_me, approve_me = js.running(cli_orch), js.awaiting_audit(cli_orch)
    cli_orch.cancel(js.running(cli_orch))  # an audit log to move out
    outside = _audit_log_linked_out(cli_orch, tmp_path)
    files = {job: cli_orch.store.path(job).read_bytes() for job in (cancel_me, approve_me)}
    for action, job in (("cancel", cancel_me), ("approve", approve_me)):
        proc = run_module("control", action, job, "--json", env=cli_env)
        assert proc.returncode == 3, (action, proc.stdout, proc.stderr)
        error = json.loads(proc.stdout)
        assert error["error"] == "PATH_ESCAPE"
        assert error["message"].startswith(f"cannot {action} job {job}: its audit entry could not be written, so "
                                           "nothing was written: the project's audit log is not usable (")
        assert "is a symbolic link" in error["message"] and "Run `orchestrator verify`" in error["message"]
    assert {job: cli_orch.store.path(job).read_bytes() for job in files} == files  # nothing written
    assert [cli_orch.status(job).state for job in files] == ["running", "awaiting_audit"]
    assert (cli_orch.settings.state_dir / "audit" / "audit_events.jsonl").is_symlink()
    assert outside.read_bytes().count(b"\n") == 1


def test_audit_heal_through_a_linked_audit_log_says_what_is_wrong_and_to_run_verify(
        cli_orch: Orchestrator, cli_env: dict[str, str], tmp_path: Path) -> None:
    """A writer whose whole work is the audit log: still PATH_ESCAPE, exit 3, but the message names the audit log,
    says nothing was written and to run verify (before: "... is a symbolic link ...: remove it")."""
    import json

    from helpers import run_module

    cli_orch.cancel(js.running(cli_orch))
    js.stale_to_waiting_human(cli_orch)  # an audited event without its entry
    _audit_log_linked_out(cli_orch, tmp_path)
    proc = run_module("audit", "heal", "--json", env=cli_env)
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    message = json.loads(proc.stdout)["message"]
    assert message.startswith("the audit entries a crash left missing cannot be checked or written; nothing was "
                              "written: the project's audit log is not usable (")
    assert "Run `orchestrator verify`" in message


def test_metrics_with_a_linked_audit_log_reports_and_leaves_the_missing_entry_as_without_a_key(
        cli_orch: Orchestrator, cli_env: dict[str, str], tmp_path: Path) -> None:
    """Its heal is a read command's (``heal_quietly``): skipped, as on a machine without a key; before, metrics
    exited 3 only when there was an entry to heal, and with nothing to heal never mentioned the link at all."""
    import json

    from helpers import run_module

    cli_orch.cancel(js.running(cli_orch))
    js.stale_to_waiting_human(cli_orch)
    outside = _audit_log_linked_out(cli_orch, tmp_path)
    before = outside.read_bytes()
    proc = run_module("metrics", "--json", env=cli_env)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout)["jobs"] == 2
    assert outside.read_bytes() == before
    checked = run_module("verify", "--json", env=cli_env)
    assert checked.returncode == 7 and [p["code"] for p in json.loads(checked.stdout)["problems"]] == ["PATH_ESCAPE"]


def _in_a_thread_or_fail_if_it_hangs(call, fifo):
    """``call()`` in a thread: writing to a FIFO blocks until a reader comes, and a test must fail, not hang
    (the FIFO is opened for reading once the wait is over, which frees a blocked writer)."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # raised again in the test's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if not outcome:
        reader = os.open(fifo() if callable(fifo) else fifo, os.O_RDONLY | os.O_NONBLOCK)  # frees the writer
        while thread.is_alive():
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 1 << 16)
        os.close(reader)
        pytest.fail("writing to a FIFO planted in the store hung")
    return outcome[0]


def test_a_fifo_planted_in_a_head_records_place_is_never_written_or_waited_on(orch: Orchestrator) -> None:
    """The record is not written (``STORAGE_ERROR`` from the store, naming it), and the cancel, durable, is done with
    that warning (``HEAD_RECORD_NOT_WRITTEN``; until 2026-12-03 the cancel failed with exit 10, its event written)."""
    job = orch.submit("rel.echo", {"x": 1})
    head = orch.settings.state_dir / "heads" / job
    head.unlink()
    os.mkfifo(head)
    outcome = _in_a_thread_or_fail_if_it_hangs(lambda: orch.cancel(job, "no"), head)
    assert not isinstance(outcome, BaseException) and outcome.applied and outcome.state == "cancelled"
    assert [w["code"] for w in outcome.warnings] == ["HEAD_RECORD_NOT_WRITTEN"]
    assert "not a regular file" in outcome.warnings[0]["message"]
    assert head.is_fifo()  # not ours to remove: an operator looks at it


@pytest.mark.parametrize("planted", ["fifo", "socket"])
def test_a_fifo_or_socket_planted_in_a_job_files_place_is_a_storage_error_for_an_append_never_a_hang(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    import socket
    import stat

    store = orch.store
    store.append("job-1", lambda head: [b'{"seq":1}'])
    fifo = store.path("job-2")
    if planted == "fifo":
        os.mkfifo(fifo)
    else:
        monkeypatch.chdir(fifo.parent)  # a socket's path is short (108 bytes): bound by its name
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(fifo.name)
    line = b'{"seq":1,"input":"' + b"x" * 200_000 + b'"}'  # more than a pipe holds: its write would wait for a reader
    outcome = _in_a_thread_or_fail_if_it_hangs(lambda: store.append("job-2", lambda head: [line]), fifo)
    assert isinstance(outcome, StorageError) and "not a regular file" in outcome.message
    assert not stat.S_ISREG(fifo.lstat().st_mode)  # left for an operator


def test_a_fifo_in_the_place_of_the_metrics_caches_temporary_copy_is_a_warning_never_a_hang(orch: Orchestrator) -> None:
    from orchestrator.projection import refresh

    job = orch.submit("rel.echo", {"x": 1})
    folder = orch.settings.state_dir / "projections"
    folder.mkdir(parents=True, exist_ok=True)
    fifos: list[Path] = []

    def plant_then_refresh():
        fifos.append(folder / f".jobs-v2.{os.getpid()}.{threading.get_native_id()}.tmp")  # this thread's copy
        os.mkfifo(fifos[0])
        return refresh(orch)

    result = _in_a_thread_or_fail_if_it_hangs(plant_then_refresh, lambda: fifos[0])
    assert list(result.rows) == [job] and [w["code"] for w in result.warnings] == ["CACHE_NOT_WRITTEN"]
    assert "not a regular file" in result.warnings[0]["message"]


@pytest.mark.parametrize("planted", ["fifo", "socket", "folder holding a file"])
@pytest.mark.parametrize("entries", [0, 1])
def test_a_control_action_is_refused_before_its_event_when_the_audit_log_is_not_a_regular_file(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str, entries: int) -> None:
    """Before, in a project without an entry yet: the event was written, then its entry refused (`STORAGE_ERROR`,
    exit 10): the job cancelled with no entry, for an action reported as failed."""
    import stat

    for _ in range(entries):
        orch.cancel(orch.submit("rel.echo", {"x": 0}))
    job = orch.submit("rel.echo", {"x": 1})
    path = _plant_in_the_audit_logs_place(orch, monkeypatch, planted)
    events = orch.store.path(job).read_bytes()
    with pytest.raises(StorageError) as refused:
        orch.cancel(job, "no")
    assert orch.store.path(job).read_bytes() == events and orch.status(job).state == "queued"
    assert refused.value.exit_code == 10
    assert refused.value.message.startswith(f"cannot cancel job {job}: its audit entry could not be written, so "
                                            f"nothing was written: {path} is ")
    assert not stat.S_ISREG(path.lstat().st_mode)  # left for an operator


def _plant_in_the_audit_logs_place(orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str) -> Path:
    """A FIFO, a socket or a folder holding a file where the audit log belongs (the store makes none of them)."""
    path = orch.settings.state_dir / "audit" / "audit_events.jsonl"
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    _plant(path, monkeypatch, planted)
    return path


@pytest.mark.parametrize("planted", ["fifo", "socket", "folder holding a file"])
@pytest.mark.parametrize("entries", [0, 1], ids=["no_head_record", "head_record"])
def test_a_fifo_socket_or_folder_in_the_audit_logs_place_is_a_problem_verify_lists(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str, entries: int) -> None:
    """Before: it read as an empty log, and with no audit head record ``verify`` passed."""
    from orchestrator.integrity import verify_project

    job = orch.submit("rel.echo", {"x": 1})
    for _ in range(entries):
        job = orch.submit("rel.echo", {"x": 0})
        orch.cancel(job)
    path = _plant_in_the_audit_logs_place(orch, monkeypatch, planted)
    what = {"fifo": "a FIFO", "socket": "a socket", "folder holding a file": "a directory that holds files"}[planted]
    for report in (verify_project(orch), verify_project(orch, job)):
        assert [(p.stream, p.line, p.code) for p in report.problems] == [("@audit", 0, "NOT_A_FILE")]
        assert report.problems[0].message.startswith(f"{path} is {what}")
        assert report.warnings == []  # no entry could be read, so none is reported missing
    assert not path.is_file() and (path.is_dir() or path.exists())  # left for an operator


def test_verify_with_a_fifo_held_open_in_the_audit_logs_place_exits_7_and_never_waits(
        cli_orch: Orchestrator, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from helpers import run_module

    cli_orch.submit("rel.echo", {"x": 1})
    path = _plant_in_the_audit_logs_place(cli_orch, monkeypatch, "fifo")
    writer = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # someone holds it open, and could write at any time
    try:
        proc = run_module("verify", "--json", env=cli_env)  # a wait would end in the helper's timeout
    finally:
        os.close(writer)
    assert proc.returncode == 7, proc.stderr
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["stream"], p["code"]) for p in problems] == [("@audit", "NOT_A_FILE")]
    assert f"{path} is a FIFO" in problems[0]["message"]


@pytest.mark.parametrize("planted", ["fifo", "socket", "folder holding a file"])
def test_a_fifo_socket_or_folder_in_the_audit_logs_place_is_a_problem_of_the_audit_timeline(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, planted: str) -> None:
    """Before: it read as an empty log (every audited event "missing its entry"), as ``verify`` did."""
    from orchestrator.timeline import timeline

    job = js.awaiting_audit(orch)
    orch.approve(job)
    path = _plant_in_the_audit_logs_place(orch, monkeypatch, planted)
    for result in (timeline(orch, job_id=job), timeline(orch, run_id="run-1")):
        assert result["ok"] is False and result["job_id"] == job
        assert [(p["stream"], p["code"]) for p in result["problems"]] == [("@audit", "NOT_A_FILE")]
        assert result["lines"] and {ln["status"] for ln in result["lines"]} == {"ok"} and result["warnings"] == []
    assert not path.is_file() and path.exists()  # left for an operator


def test_a_device_that_never_ends_in_a_job_files_place_is_not_a_file_never_read_for_ever(orch: Orchestrator) -> None:
    """Listed as a job since 2026-12-03 (as a FIFO is), so ``verify`` reads it: a read stops at its first full chunk."""
    import stat

    from orchestrator.integrity import verify_project

    orch.submit("rel.echo", {"x": 1})
    path = orch.store.path("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers: endless bytes
    except PermissionError:
        pytest.skip("making a device needs CAP_MKNOD")
    report = _in_a_thread_or_fail_if_it_hangs(lambda: verify_project(orch), path)
    assert [(p.code, p.line) for p in report.problems] == [("NOT_A_FILE", 0)]
    assert "is a device" in report.problems[0].message
    assert orch.status(path.name.split(".")[0]).integrity_error["problems"][0]["code"] == "NOT_A_FILE"
