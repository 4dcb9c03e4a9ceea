"""An import's record names the process that holds it (host, pid, start time): one whose process is gone from this
host is abandoned, and no longer makes an entry naming an event its job lacks the import's doing. Until import2
(2026-12-07) any record, abandoned or not, made such an entry ``IMPORT_INCOMPLETE`` (exit 0) until the import was run
again, for good if nobody did. Judged alike by ``audit-timeline`` and ``verify``."""
from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import BACKENDS, orchestrator_on
from orchestrator import Orchestrator, import_record
from orchestrator.errors import IntegrityError
from orchestrator.import_record import IMPORT_ABANDONED, IMPORT_INCOMPLETE, IMPORTS_AREA
from orchestrator.integrity import AUDIT_EVENT_MISSING
from orchestrator.leftovers import start_time
from orchestrator.signing import Keyring
from orchestrator.transfer import export_project, import_project


@pytest.fixture(params=BACKENDS)
def dest(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base / "dst", keyring) as orch:
        yield orch


@pytest.fixture
def half_imported(dest: Orchestrator, base: Path, keyring: Keyring) -> tuple[str, str]:
    """An import of two cancelled jobs stopped after the audit log and the first job; (the job it did not write, the
    key of its record)."""
    source = Orchestrator(base_path=base / "src", project_id=dest.project_id, keyring=keyring)
    jobs = [source.submit("t.echo", i) for i in range(2)]
    for job in jobs:
        source.cancel(job, "not needed")
    buf = io.BytesIO()
    export_project(source, buf)
    path = base / "bundle.jsonl"
    path.write_bytes(b"".join(buf.getvalue().splitlines(keepends=True)[:-4]))
    with open(path, "rb") as fh, pytest.raises(IntegrityError, match="cut short"):
        import_project(dest, fh)
    (key,) = dest.store.aux_keys(IMPORTS_AREA)
    return jobs[1], key


def held_by(dest: Orchestrator, key: str, **holder: Any) -> None:
    """The record of ``key`` as the process ``holder`` names would have written it (or one of older code: only
    ``began_at``, with ``old=True``)."""
    record = json.loads(dest.store.get_aux(IMPORTS_AREA, key) or b"{}")
    record.pop("stopped_at", None)
    record = {"began_at": record["began_at"]} if holder.pop("old", False) else {**record, **holder}
    dest.store.put_aux(IMPORTS_AREA, key, json.dumps(record).encode())


def judged(dest: Orchestrator, job: str) -> tuple[tuple[bool, list[str], list[str]], tuple[bool, list[str],
                                                                                           list[str]]]:
    """(the job's timeline, the project's verify): whether ok, the codes of the audit entries' lines or problems,
    the codes of the warnings."""
    tl = dest.timeline(job)
    report = dest.verify()
    return ((tl["ok"], [ln["status"] for ln in tl["lines"] if ln["source"] == "audit"],
             [w["code"] for w in tl["warnings"]]),
            (report.ok, [p.code for p in report.problems], sorted({w.code for w in report.warnings})))


def a_dead_pid() -> int:
    """The pid of a process that ended and was reaped: no process's (until given to another)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_record_whose_process_is_gone_from_this_host_is_abandoned_and_named(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    job, key = half_imported
    held_by(dest, key, pid=a_dead_pid())
    timeline, verify = judged(dest, job)
    assert timeline == (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED])
    assert verify == (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED])
    warning = next(w for w in dest.verify().warnings if w.code == IMPORT_ABANDONED)
    assert key in warning.stream and "bundle.jsonl" in warning.message, warning
    for said in ("its process is gone", "Run the import again with the whole bundle", "remove the record"):
        assert said in warning.message, warning.message
    assert warning.message == dest.timeline(job)["warnings"][0]["message"]


def test_a_record_whose_pid_another_process_has_now_is_abandoned(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    job, key = half_imported
    held_by(dest, key, pid=os.getpid(), started="1")  # this process, started at another time: another's pid once
    timeline, verify = judged(dest, job)
    assert (timeline, verify) == ((False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED]),
                                  (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED]))


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> str:
    """This machine's digest of its machine id, as a record names it: one, also where no machine id can be read."""
    host, _, boot, pid_ns = import_record._here()
    monkeypatch.setattr(import_record, "_here", lambda: (host, "this-machine", boot, pid_ns))
    return "this-machine"


def test_a_record_whose_process_exited_and_is_not_reaped_yet_is_abandoned(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    """A zombie: its pid is still taken (``kill(pid, 0)`` succeeds) and its start time is the record's."""
    job, key = half_imported
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        os.waitid(os.P_PID, child, os.WEXITED | os.WNOWAIT)  # it has exited: left unreaped
        held_by(dest, key, pid=child, started=(start_time(child) or b"").decode())
        timeline, verify = judged(dest, job)
        message = dest.timeline(job)["warnings"][0]["message"]
    finally:
        os.waitpid(child, 0)
    assert timeline == (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED])
    assert verify == (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED])
    assert "its process is gone" in message, message


@pytest.mark.parametrize("said", ["the same machine", "no machine (a record of before import3)"])
def test_a_record_of_a_boot_of_this_machine_before_its_restart_is_abandoned(
        dest: Orchestrator, half_imported: tuple[str, str], machine: str, said: str) -> None:
    job, key = half_imported
    held_by(dest, key, pid=os.getpid(), started=(start_time(os.getpid()) or b"").decode(), boot="an-earlier-boot",
            machine=machine if said == "the same machine" else None)
    timeline, _ = judged(dest, job)
    assert timeline == (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED])
    assert "this host restarted since" in dest.timeline(job)["warnings"][0]["message"]


def test_a_record_of_another_machine_of_this_host_name_cannot_be_judged_here(
        dest: Orchestrator, half_imported: tuple[str, str], machine: str) -> None:
    """A cloned VM, or a replica given a fixed host name, on one PostgreSQL store: its boot is not this one's, and
    tells nothing of a restart here."""
    job, key = half_imported
    held_by(dest, key, pid=a_dead_pid(), boot="another-boot", machine="another-machine")
    timeline, verify = judged(dest, job)
    assert (timeline, verify) == ((True, [IMPORT_INCOMPLETE], [IMPORT_INCOMPLETE]), (True, [], [IMPORT_INCOMPLETE]))
    message = dest.timeline(job)["warnings"][0]["message"]
    assert f"on host {os.uname().nodename}, which cannot be judged from here" in message, message


def test_a_record_names_its_machine_by_a_digest_of_its_machine_id_not_the_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "machine-id").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    monkeypatch.setattr(import_record, "MACHINE_ID_FILES", (str(tmp_path / "none"), str(tmp_path / "machine-id")))
    named = import_record._machine()
    assert named and len(named) == 32 and "3d1219c7" not in named
    (tmp_path / "machine-id").unlink()
    assert import_record._machine() is None  # unreadable: judged as a record of before import3


def test_a_record_of_another_pid_namespace_of_this_host_cannot_be_judged_here(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    """Another container of this host, of the same host name: its pids are not this one's."""
    job, key = half_imported
    held_by(dest, key, pid=a_dead_pid(), pid_ns="pid:[1]")
    timeline, verify = judged(dest, job)
    assert (timeline, verify) == ((True, [IMPORT_INCOMPLETE], [IMPORT_INCOMPLETE]), (True, [], [IMPORT_INCOMPLETE]))


def test_a_record_of_a_live_process_on_this_host_is_an_import_under_way(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    job, key = half_imported
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            held_by(dest, key, pid=other.pid, started=(start_time(other.pid) or b"").decode())
            timeline, verify = judged(dest, job)
            message = dest.timeline(job)["warnings"][0]["message"]
        finally:
            other.kill()
    assert timeline == (True, [IMPORT_INCOMPLETE], [IMPORT_INCOMPLETE])
    assert verify == (True, [], [IMPORT_INCOMPLETE])
    assert f"its process (pid {other.pid} on host {os.uname().nodename}, this host) is running" in message, message


def test_a_record_of_another_host_cannot_be_judged_here_and_stays_a_warning_naming_that_host(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    job, key = half_imported
    held_by(dest, key, host="elsewhere.example", pid=a_dead_pid())  # that pid is no process here: not looked at
    timeline, verify = judged(dest, job)
    assert timeline == (True, [IMPORT_INCOMPLETE], [IMPORT_INCOMPLETE])
    assert verify == (True, [], [IMPORT_INCOMPLETE])
    message = dest.timeline(job)["warnings"][0]["message"]
    assert "on host elsewhere.example, which cannot be judged from here" in message, message
    assert key in message and "run it again with the whole bundle" in message, message


def test_a_record_of_older_code_names_no_process_and_is_an_import_under_way_as_before(
        dest: Orchestrator, half_imported: tuple[str, str]) -> None:
    job, key = half_imported
    held_by(dest, key, old=True)
    timeline, verify = judged(dest, job)
    assert timeline == (True, [IMPORT_INCOMPLETE], [IMPORT_INCOMPLETE])
    assert verify == (True, [], [IMPORT_INCOMPLETE])
    assert "it is running, or it stopped half way" in dest.timeline(job)["warnings"][0]["message"]


def test_an_import_stopped_by_an_error_says_so_in_its_record(
        dest: Orchestrator, base: Path, half_imported: tuple[str, str]) -> None:
    """A program that calls ``import_project`` lives on after its error: its pid says nothing then."""
    job, key = half_imported
    record = json.loads(dest.store.get_aux(IMPORTS_AREA, key) or b"")
    assert (record["host"], record["pid"], record["bundle"]) == (os.uname().nodename, os.getpid(),
                                                                 str(base / "bundle.jsonl"))
    assert record["started"] == (start_time(os.getpid()) or b"").decode() and record["stopped_at"], record
    assert record["machine"] == import_record._here()[1], record
    timeline, _ = judged(dest, job)
    assert timeline == (False, [AUDIT_EVENT_MISSING], [IMPORT_ABANDONED])
    assert "it stopped at" in dest.timeline(job)["warnings"][0]["message"]
