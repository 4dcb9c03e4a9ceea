"""A file a command writes where the operator says (export -o, verify --export-head, the benchmark's --raw-output
and --report): a path that cannot be written is INVALID_INPUT (exit 3) before any work, never a traceback or a
partial file."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from helpers import run_module, run_script
from orchestrator.store.files import STRAY_AGE

COMMANDS = [("export", "-o"), ("verify", "--export-head"), ("bench-terminal-latency", "--samples", "1", "--raw-output"),
            ("bench-terminal-latency", "--samples", "1", "--report")]


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this user may not create files in: a read-only one, or sysfs for root (who may write anywhere else)."""
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    for candidate in (folder, Path("/sys")):
        try:
            os.close(os.open(candidate / ".probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError:
            return candidate
        os.unlink(candidate / ".probe")
    pytest.skip("no folder refuses this user's files")


def test_an_output_path_that_cannot_be_written_is_invalid_input_before_any_work_and_leaves_no_file(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    run_script("submit", "--kind", "k", env=cli_env, check=True)
    work = tmp_path / "work"
    work.mkdir()
    (work / "a-file").write_text("")
    (work / "a-folder").mkdir()
    targets = {"a missing folder": work / "missing" / "out", "a file as folder": work / "a-file" / "out",
               "a folder": work / "a-folder", "no permission": unwritable_folder(tmp_path) / "out"}
    before = sorted(work.rglob("*"))
    for command in COMMANDS:
        for case, target in targets.items():
            proc = run_module(*command, str(target), "--json", env=cli_env)
            assert proc.returncode == 3, (command, case, proc.stdout, proc.stderr)
            error = json.loads(proc.stdout)
            assert error["error"] == "INVALID_INPUT" and str(target) in error["message"], (command, case)
            assert "Traceback" not in proc.stderr and "samples" not in proc.stderr, (command, case)  # nothing measured
    assert sorted(work.rglob("*")) == before


def test_the_benchmark_refuses_a_bad_project_id_before_measuring(cli_env: dict[str, str]) -> None:
    proc = run_script("bench_terminal_latency", "--samples", "1", "--project-id", "../x", "--json", env=cli_env)
    assert proc.returncode == 3 and json.loads(proc.stdout)["error"] == "INVALID_ID", (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "samples" not in proc.stderr


def test_an_export_killed_before_its_rename_leaves_no_bundle_and_the_next_one_removes_its_temporary_file(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    run_script("submit", "--kind", "k", env=cli_env, check=True)
    folder = tmp_path / "exports"
    folder.mkdir()
    target = folder / "out.bundle"
    killed = run_module("export", "-o", str(target), env={**cli_env, "ORCH_CRASH_AT": "output_file.before_rename"})
    assert killed.returncode == -signal.SIGKILL and not target.exists(), killed.stderr
    [leftover] = folder.iterdir()
    assert leftover.name.startswith(".out.bundle.") and leftover.name.endswith(".tmp")
    assert leftover.read_bytes().endswith(b'"end":true,"events":1,"streams":1}\n')  # the whole bundle, synced
    then = time.time() - STRAY_AGE - 60
    os.utime(leftover, (then, then))
    done = run_module("export", "-o", str(target), env=cli_env)
    assert done.returncode == 0 and list(folder.iterdir()) == [target], done.stderr


def test_an_output_path_inside_a_store_is_invalid_input_and_the_stores_files_are_left_as_they_were(
        cli_env: dict[str, str], base: Path) -> None:
    job_id = json.loads(run_script("submit", "--kind", "k", "--json", env=cli_env, check=True).stdout)["job_id"]
    run_script("control", "cancel", job_id, "no", env=cli_env, check=True)
    state = base / "proj" / ".orchestrator"
    linked = base / "link-to-audit"
    linked.symlink_to(state / "audit")
    targets = {"the audit log": state / "audit" / "audit_events.jsonl",
               "a job's events file": state / "queue" / "jobs" / f"{job_id}.events.jsonl",
               "a new job's events file": state / "queue" / "jobs" / "01NEWJOB.events.jsonl",
               "the audit log through a link": linked / "audit_events.jsonl"}
    before = {p: p.read_bytes() for p in state.rglob("*") if p.is_file()}
    for command in COMMANDS:
        for case, target in targets.items():
            proc = run_module(*command, str(target), "--json", env=cli_env)
            assert proc.returncode == 3, (command, case, proc.stdout, proc.stderr)
            error = json.loads(proc.stdout)
            assert error["error"] == "INVALID_INPUT" and "inside the store" in error["message"], (command, case)
    assert {p: p.read_bytes() for p in state.rglob("*") if p.is_file()} == before
    assert run_script("verify", env=cli_env).returncode == 0


def test_a_job_may_write_an_export_into_its_own_artifact_folder(cli_env: dict[str, str], base: Path) -> None:
    job_id = json.loads(run_script("submit", "--kind", "k", "--json", env=cli_env, check=True).stdout)["job_id"]
    folder = base / "proj" / ".orchestrator" / "artifacts" / job_id
    folder.mkdir(parents=True)
    proc = run_module("export", "-o", str(folder / "backup.bundle"), env=cli_env)
    assert proc.returncode == 0 and (folder / "backup.bundle").exists(), proc.stderr


def test_an_output_path_that_is_a_device_or_a_pipe_is_invalid_input_and_left_in_place(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    run_script("submit", "--kind", "k", env=cli_env, check=True)
    fifo = tmp_path / "a-pipe"
    os.mkfifo(fifo)
    linked = tmp_path / "link-to-pipe"  # as /dev/stdout is a link to what stdout is
    linked.symlink_to(fifo)
    for command in COMMANDS:
        for target in (fifo, linked):
            proc = run_module(*command, str(target), "--json", env=cli_env)
            assert proc.returncode == 3, (command, target, proc.stdout, proc.stderr)
            error = json.loads(proc.stdout)
            assert error["error"] == "INVALID_INPUT" and "not a regular file" in error["message"], (command, target)
    assert fifo.is_fifo() and linked.is_symlink() and linked.resolve() == fifo
    assert not list(tmp_path.glob(".a-pipe.*")) and not list(tmp_path.glob(".link-to-pipe.*"))  # no temporary file


def test_an_output_name_as_long_as_the_file_system_allows_is_written(cli_env: dict[str, str], tmp_path: Path) -> None:
    """A name of 242 to 255 bytes is valid; only its temporary file's name would not be, with its prefix and suffix."""
    run_script("submit", "--kind", "k", env=cli_env, check=True)
    folder = tmp_path / "exports"
    folder.mkdir()
    for command in (("export", "-o"), ("verify", "--export-head")):
        target = folder / (command[0] + "-" * (255 - len(command[0])))
        proc = run_module(*command, str(target), env=cli_env)
        assert proc.returncode == 0 and target.stat().st_size > 0, (command, proc.stderr)
    assert len(list(folder.iterdir())) == 2  # no temporary file left
