"""A full disk and a failing fsync: nothing unwritten is acknowledged, the error is clear, work resumes."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.errors import StorageError
from orchestrator.reliability import disk
from orchestrator.store import jsonl
from orchestrator.store.jsonl import JsonlStore


def test_a_filling_disk_acknowledges_only_what_is_on_disk_and_resumes_when_freed(tmp_path: Path) -> None:
    result = disk.full_disk(tmp_path)
    assert result["error_code"] == "STORAGE_ERROR"
    assert result["acked"] > 0 and result["acked_missing"] == 0
    assert result["resumed"] and result["unfinished"] == 0 and result["verify_ok"]
    if result["mode"] == "tmpfs":
        assert result["cli_exit"] == 10 and result["cli_clear"] and result["worker_clear"]


def test_a_failed_fsync_is_never_acknowledged_and_the_next_append_repairs(tmp_path: Path) -> None:
    result = disk.failed_fsync(tmp_path, trials=10)
    assert result["raised"] == 10
    assert (result["acknowledged_anyway"], result["lines_kept"], result["verify_failures_after"]) == (0, 0, 0)


def test_a_store_that_never_calls_fdatasync_fails_the_fsync_row_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken build (``fdatasync`` removed from the store): until 2026-12-07 the campaign ended in a traceback
    (``InvalidTransitionError``: its next trial claimed the job the acknowledged one had left running)."""
    from orchestrator.reliability.report import rows

    class NoSync:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        @staticmethod
        def fdatasync(fd: int) -> None:
            pass

    monkeypatch.setattr(jsonl, "os", NoSync())
    result = disk.failed_fsync(tmp_path, trials=4)
    assert (result["raised"], result["acknowledged_anyway"], result["never_synced"]) == (0, 4, 4)
    assert rows({"fsync": result}) == [("failed fsync acknowledged anyway / lines left",
                                        "4 / 4; 4 of 4 appends never called fdatasync", "0 / 0", False)]


def test_a_full_disk_while_writing_a_head_record_is_a_storage_error_saying_the_lines_before_it_are_durable(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's part (``AuxNotWrittenError``, exit 10, no temporary copy left); what the orchestrator's appends
    make of it, acknowledged with a warning, is tests/integration/test_head_record_ack.py's (until 2026-12-03 a
    cancel failed so, its event durable)."""
    from orchestrator.errors import AuxNotWrittenError

    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)  # a record replaced by rename
    monkeypatch.setattr(os, "pwrite", full)  # a head record overwritten in place (its 512-byte slot)
    with pytest.raises(AuxNotWrittenError) as info:
        orch.store.append("job-1", lambda head: [b'{"seq":1}'], aux=lambda head: {("heads", "job-1"): b"1"})
    assert info.value.exit_code == 10 and "No space left" in info.value.message
    assert "the lines appended to job-1 before it are durable" in info.value.message
    assert [s.raw for s in orch.store.read("job-1")] == [b'{"seq":1}']
    assert not list((orch.settings.state_dir / "heads").glob(".*.tmp"))


def test_a_submit_whose_head_record_cannot_be_written_is_acknowledged_and_its_claim_writes_the_record(
        orch: Orchestrator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Its event is durable: a STORAGE_ERROR (exit 10, "nothing acknowledged") made an operator submit it again,
    and there were two jobs. The head record is derived (a crash before it leaves the same job); the job's next
    event, its claim, writes it."""
    from orchestrator.api import HEADS_AREA

    real_pwrite = os.pwrite

    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # the head record's 512-byte slot
    submitted = orch.submit_job("rel.echo", {"x": 1})
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    job = submitted.job_id
    assert submitted.created and [w["code"] for w in submitted.warnings] == ["HEAD_RECORD_NOT_WRITTEN"]
    assert list(orch.store.job_ids()) == [job] and orch.status(job).state == "queued"
    assert orch.store.get_aux(HEADS_AREA, job) is None
    assert f"heads/{job}" in caplog.text and "No space left" in caplog.text
    assert orch.worker(worker_id="w").run_once()
    assert orch.status(job).state == "succeeded" and orch.store.get_aux(HEADS_AREA, job) is not None


def test_an_index_entry_that_cannot_be_written_is_a_storage_error_and_nothing_is_acknowledged(
        orch: Orchestrator) -> None:
    blocked = orch.settings.state_dir / "index" / "ready"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("not a folder")  # entries cannot be created, like a disk out of inodes
    with pytest.raises(StorageError):
        orch.submit("echo", {})
    assert list(orch.store.job_ids()) == []  # the entry comes before the event: nothing was written


@pytest.mark.parametrize("left", [b"", b'{"seq":1,"ty'], ids=["created_never_written", "torn_first_line"])
def test_the_first_line_of_a_file_makes_its_folder_entry_durable_whoever_created_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: bytes) -> None:
    # a writer killed between creating a job's file and writing it (or whose first write failed, cut back to
    # nothing, or was torn) never synced the folder: the append that writes the file's first line does
    store = JsonlStore(tmp_path / ".orchestrator")
    store.jobs_dir.mkdir(parents=True)
    store.path("job-1").write_bytes(left)
    synced: list[Path] = []
    monkeypatch.setattr(jsonl, "fsync_dir", lambda path: synced.append(Path(path)))
    store.append("job-1", lambda head: [b'{"seq":1}'])
    assert synced == [store.jobs_dir]
    store.append("job-1", lambda head: [b'{"seq":2}'])  # the entry is durable now: no second sync
    assert synced == [store.jobs_dir]


def _record_folder_syncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every folder fsync of the store (``files.fsync_dir``, which ``make_folder`` calls, and the events file's own
    folder in ``jsonl``), in order."""
    from orchestrator.store import files

    synced: list[Path] = []
    monkeypatch.setattr(files, "fsync_dir", lambda path: synced.append(Path(path)))
    monkeypatch.setattr(jsonl, "fsync_dir", lambda path: synced.append(Path(path)))
    return synced


@pytest.mark.parametrize("left", [None, b""], ids=["folders_only", "and_an_empty_events_file"])
def test_a_first_append_syncs_the_folder_chain_up_to_the_project_folder_even_when_the_folders_were_already_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, left: bytes | None) -> None:
    # a process killed between making queue/jobs/ (or audit/) and syncing its parent left folders whose entries
    # nobody synced: the next process finds them, and its acknowledged submit must not depend on them by luck
    project = tmp_path / "proj"
    store = JsonlStore(project / ".orchestrator")
    store.jobs_dir.mkdir(parents=True)
    store.audit_path.parent.mkdir()
    if left is not None:  # and a job's file, created but never written
        store.path("job-1").write_bytes(left)
    synced = _record_folder_syncs(monkeypatch)
    store.append("job-1", lambda head: [b'{"seq":1}'])
    root = store.root
    assert set(synced) == {root / "queue", root, project, tmp_path, store.jobs_dir}, synced  # each entry of the chain
    assert synced[-1] == store.jobs_dir  # the file's own entry, with its first line
    synced.clear()
    store.append("job-2", lambda head: [b'{"seq":1}'])  # the next job: its file's entry only, as before
    assert synced == [store.jobs_dir]
    JsonlStore(root).append("job-3", lambda head: [b'{"seq":1}'])  # once per process: another store object too
    assert synced == [store.jobs_dir, store.jobs_dir]


def test_the_audit_logs_first_entry_syncs_its_folder_chain_when_the_folder_was_already_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store.base import AUDIT_STREAM

    project = tmp_path / "proj"
    store = JsonlStore(project / ".orchestrator")
    store.audit_path.parent.mkdir(parents=True)
    store.audit_path.write_bytes(b"")
    synced = _record_folder_syncs(monkeypatch)
    store.append(AUDIT_STREAM, lambda head: [b'{"seq":1}'])
    assert {store.root, project, tmp_path} <= set(synced) and synced[-1] == store.audit_path.parent, synced


def test_a_folder_made_durable_is_synced_up_to_the_project_folder_once_per_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.store.files import make_folder

    root = tmp_path / "proj" / ".orchestrator"
    (root / "queue" / "jobs").mkdir(parents=True)  # found there, never synced
    synced = _record_folder_syncs(monkeypatch)
    chain = [root / "queue", root, root.parent, tmp_path]  # the last holds the project folder's entry
    make_folder(root / "queue" / "jobs", root, durable=True)
    assert synced == chain
    make_folder(root / "queue" / "jobs", root, durable=True)
    make_folder(root / "queue", root, durable=True)  # its entries are known durable already
    assert synced == chain
    make_folder(root / "audit", root, durable=True)  # made now: its parent; the chain above is known durable
    assert synced[4:] == [root]
    make_folder(root / "queue" / "x", root)  # not durable: nothing synced
    assert len(synced) == 5
    deeper = tmp_path / "new-base" / "p" / ".orchestrator"
    make_folder(deeper / "audit", deeper, durable=True)  # made from the top: the folders above the project too
    assert synced[5:] == [deeper, deeper.parent, deeper.parent.parent, tmp_path]


def test_a_store_opened_by_a_relative_path_still_syncs_its_folder_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "proj"
    (project / ".orchestrator" / "queue" / "jobs").mkdir(parents=True)
    monkeypatch.chdir(project)  # ".orchestrator" names no parent
    synced = _record_folder_syncs(monkeypatch)
    JsonlStore(Path(".orchestrator")).append("job-1", lambda head: [b'{"seq":1}'])
    root = project / ".orchestrator"
    assert {root / "queue", root, project, tmp_path} <= {p.absolute() for p in synced}, synced


def test_a_submit_opens_its_new_events_file_once_and_still_syncs_its_folder_chain(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An append expecting no event (a submit) creates the file with its first open: no failed open first (one
    system call on every submit's path); the folders are made durable before, as when the open found no file."""
    project = tmp_path / "proj"
    store = JsonlStore(project / ".orchestrator")
    synced = _record_folder_syncs(monkeypatch)
    opened: list[str] = []
    real_open = os.open

    def counting(path, *args, **kwargs):
        if str(path).endswith(jsonl.EVENTS_SUFFIX):
            opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting)
    store.append("job-1", lambda head: [b'{"seq":1}'], expected_seq=0)
    assert opened == [str(store.path("job-1"))]  # before: an open that found no file, then the one creating it
    assert {store.root / "queue", store.root, project} <= set(synced) and synced[-1] == store.jobs_dir, synced
    store.append("job-1", lambda head: [b'{"seq":2}'], expected_seq=1)
    with pytest.raises(Exception, match="expected 0 events, found 2"):  # a submit over a job that is there
        store.append("job-1", lambda head: [b'{"seq":1}'], expected_seq=0)
    assert store.read("job-1")[-1].raw == b'{"seq":2}'


def test_an_action_whose_audit_entry_meets_a_full_disk_says_it_stands_and_its_retry_writes_only_the_entry(
        cli_env: dict[str, str], base: Path) -> None:
    """A real limit on file sizes (``RLIMIT_FSIZE``, a full disk's stand-in) that leaves room for the job's line but
    not the audit log's: the cancel is durable, and until 2026-12-06 the command said "nothing was written" (exit 10),
    so an operator would decide again; run again, it said "nothing written" while writing the missing entry."""
    import json
    import resource
    import subprocess
    import sys

    def cli(*args: str, limit: int | None = None) -> subprocess.CompletedProcess[str]:
        def limited() -> None:  # Python ignores SIGXFSZ: a write past the limit is EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=cli_env, capture_output=True,
                              text=True, timeout=60, preexec_fn=limited if limit else None)

    for i in range(2):  # an audit log longer than the job's file will be
        other = cli("submit", "--kind", "t.any", "--input", "{}").stdout.strip()
        assert cli("control", "cancel", other, "r" * 3000).returncode == 0
    job = cli("submit", "--kind", "t.any", "--input", "{}").stdout.strip()
    audit_log = base / "proj" / ".orchestrator" / "audit" / "audit_events.jsonl"
    entries = audit_log.read_bytes().count(b"\n")
    out = cli("control", "cancel", job, "stop it", "--json", limit=audit_log.stat().st_size)
    error = json.loads(out.stdout)
    assert out.returncode == 10 and error["error"] == "STORAGE_ERROR"
    assert f"of job {job} is durable: what it records stands (do not do it again)" in error["message"]
    assert "File too large" in error["message"] and "nothing was written" not in error["message"]
    assert json.loads(cli("status", job, "--json").stdout)["state"] == "cancelled"
    assert audit_log.read_bytes().count(b"\n") == entries  # the entry alone is missing
    again = cli("control", "cancel", job, "stop it")
    assert again.returncode == 0 and "already applied" in again.stdout
    assert "only the missing audit entry written now" in again.stdout and "nothing written" not in again.stdout
    assert audit_log.read_bytes().count(b"\n") == entries + 1 and cli("verify").returncode == 0
