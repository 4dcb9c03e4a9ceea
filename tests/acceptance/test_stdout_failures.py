"""When stdout fails: a reader that went away (``| head``) ends a command quietly with exit 141, as SIGPIPE
would; a disk that refuses the output (``> file`` on a full disk) is STORAGE_ERROR (exit 10) on stderr. Never a
traceback, and what the command did stays done."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_script

FULL = Path("/dev/full")


def run_into(stdout: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python3 -m orchestrator ARGS`` whose stdout is ``stdout`` (a descriptor); stderr captured."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=60, cwd=str(REPO))


def closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone, as ``| head`` leaves it once ``head`` exits."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


@pytest.mark.parametrize("args", [["status", "--all"], ["status", "--all", "--json"], ["submit", "--kind", "t.echo",
                                                                                          "--input", "{}"]])
def test_a_reader_that_went_away_ends_the_command_quietly_with_exit_141(cli_env, args: list[str]) -> None:
    run_script("submit", "--kind", "t.echo", "--input", "{}", env=cli_env, check=True)
    pipe = closed_pipe()
    try:
        proc = run_into(pipe, *args, env=cli_env)
    finally:
        os.close(pipe)
    assert (proc.returncode, proc.stderr) == (141, "")
    if args[0] == "submit":  # the job was submitted all the same: only its id could not be printed
        listed = run_script("status", "--all", "--json", env=cli_env, check=True)
        assert len(json.loads(listed.stdout)["jobs"]) == 2


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
@pytest.mark.parametrize("as_json", [False, True])
def test_output_a_full_disk_refuses_is_a_storage_error_on_stderr(cli_env, as_json: bool) -> None:
    with FULL.open("w") as full:
        proc = run_into(full.fileno(), "submit", "--kind", "t.echo", "--input", "{}", *(["--json"] if as_json else []),
                        env=cli_env)
    assert proc.returncode == 10 and "Traceback" not in proc.stderr
    if as_json:
        error = json.loads(proc.stderr)
        assert error["error"] == "STORAGE_ERROR" and "No space left on device" in error["message"]
    else:
        assert proc.stderr.startswith("error[STORAGE_ERROR]: cannot write the command's output to stdout: No space")
    listed = run_script("status", "--all", "--json", env=cli_env, check=True)
    assert len(json.loads(listed.stdout)["jobs"]) == 1  # the job was submitted: only its id was lost


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
def test_metrics_in_prometheus_text_into_a_full_disk_is_a_storage_error(cli_env) -> None:
    run_script("submit", "--kind", "t.echo", "--input", "{}", env=cli_env, check=True)
    with FULL.open("w") as full:
        proc = run_into(full.fileno(), "metrics", "--format", "prometheus", env=cli_env)
    assert proc.returncode == 10 and proc.stderr.startswith("error[STORAGE_ERROR]: cannot write")


def test_an_export_to_a_reader_that_went_away_ends_quietly_with_exit_141(cli_env) -> None:
    run_script("submit", "--kind", "t.echo", "--input", "{}", env=cli_env, check=True)
    pipe = closed_pipe()
    try:
        proc = run_into(pipe, "export", "-o", "-", env=cli_env)
    finally:
        os.close(pipe)
    assert (proc.returncode, proc.stderr) == (141, "")


def buffering(unbuffered: bool, env: dict[str, str]) -> dict[str, str]:
    """``env`` with ``PYTHONUNBUFFERED=1`` (set on many machines and container images), or without it."""
    env = {k: v for k, v in env.items() if k != "PYTHONUNBUFFERED"}
    return {**env, "PYTHONUNBUFFERED": "1"} if unbuffered else env


@pytest.mark.skipif(not hasattr(fcntl, "F_SETPIPE_SZ"), reason="needs a pipe made small (Linux)")
@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
def test_a_reader_that_leaves_in_the_middle_of_a_write_ends_the_command_with_exit_141(
        cli_env, base: Path, unbuffered: bool) -> None:
    """The system takes part of the write (what the pipe holds), then the reader closes: the rest is written again,
    and meets the closed pipe. An unbuffered stdout dropped the rest, and the command exited 0."""
    from orchestrator import Orchestrator
    from orchestrator.key_files import load_keyring

    orch = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
    for i in range(20):  # ~11 KB of JSON printed in one write, more than the pipe holds
        orch.submit("k" * 200, {"i": i})
    read_end, write_end = os.pipe()
    with open(read_end, "rb", buffering=0) as reader, open(write_end, "wb", buffering=0) as writer:
        fcntl.fcntl(writer, fcntl.F_SETPIPE_SZ, 4096)  # a page
        with subprocess.Popen([sys.executable, "-m", "orchestrator", "status", "--all", "--json"],
                              env=buffering(unbuffered, cli_env), stdout=writer, stderr=subprocess.PIPE,
                              cwd=str(REPO)) as proc:
            writer.close()  # the command's alone
            assert reader.read(1024).startswith(b'{"jobs": [')
            reader.close()  # a reader that read a little, then went
            assert proc.stderr is not None
            stderr = proc.stderr.read()
    assert (proc.returncode, stderr) == (141, b"")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
@pytest.mark.parametrize("args", [["status", "--help"], ["--version"], ["status", "--all"]])
def test_help_and_version_into_a_full_disk_are_a_storage_error_as_every_output(
        cli_env, args: list[str], unbuffered: bool) -> None:
    with FULL.open("w") as full:
        proc = run_into(full.fileno(), *args, env=buffering(unbuffered, cli_env))
    assert proc.returncode == 10, proc.stderr
    assert "error[STORAGE_ERROR]: cannot write the command's output to stdout: No space" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--version"], ["status", "--help"], ["control", "approve", "-h"],
                                  ["db", "--help"], ["status", "--no-such-option", "--json"]])
def test_help_or_version_lost_to_a_full_disk_says_that_nothing_was_done(
        cli_env, args: list[str], unbuffered: bool) -> None:
    """Only the output is lost: the message does not send the operator to check what the command may have written."""
    with FULL.open("w") as full:
        proc = run_into(full.fileno(), *args, env=buffering(unbuffered, cli_env))
    assert proc.returncode == 10, proc.stderr
    assert "STORAGE_ERROR" in proc.stderr and "cannot write the command's output to stdout: No space" in proc.stderr
    assert "nothing was done" in proc.stderr and "check with status" not in proc.stderr  # --json: on stderr too
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
def test_a_script_s_help_lost_to_a_full_disk_says_that_nothing_was_done(cli_env) -> None:
    with FULL.open("w") as full:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "control.py"), "--help"], env=cli_env,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 10 and "nothing was done" in proc.stderr, proc.stderr


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
def test_an_action_whose_output_a_full_disk_refused_still_says_to_check_what_it_did(cli_env) -> None:
    with FULL.open("w") as full:
        proc = run_into(full.fileno(), "submit", "--kind", "t.echo", "--input", "{}", env=cli_env)
    assert proc.returncode == 10 and "what the command did is done: check with status" in proc.stderr
    assert "nothing was done" not in proc.stderr


# -- the entry points outside the command line that print: the demo, the reliability report, bench.suites -------------
PRINTING = {  # name: (its command line after the interpreter, what its refusal says was done)
    "demo": (["-m", "orchestrator.demo", "{tmp}/demo-base"], "the demo stopped there"),
    "reliability_report": ([str(REPO / "scripts" / "reliability_report.py"), "--quick", "--only", "fsync"],
                           "the campaigns ran"),
    "bench.suites": (["-m", "bench.suites"], "nothing was changed"),
}


def run_printing(name: str, stdout: int, env: dict[str, str], tmp: Path,
                 *more: str) -> subprocess.CompletedProcess[str]:
    args = [a.format(tmp=tmp) for a in PRINTING[name][0]]
    return subprocess.run([sys.executable, *args, *more], env=env, stdout=stdout, stderr=subprocess.PIPE, text=True,
                          timeout=120, cwd=str(REPO))


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
@pytest.mark.parametrize("name", list(PRINTING))
def test_the_demo_the_reliability_report_and_bench_suites_into_a_full_disk_are_a_storage_error(
        cli_env, tmp_path: Path, name: str, unbuffered: bool) -> None:
    with FULL.open("w") as full:
        proc = run_printing(name, full.fileno(), buffering(unbuffered, cli_env), tmp_path)
    assert proc.returncode == 10, proc.stderr
    assert "error[STORAGE_ERROR]: cannot write the command's output to stdout: No space left on device" in proc.stderr
    assert PRINTING[name][1] in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
@pytest.mark.parametrize("name", list(PRINTING))
def test_the_demo_the_reliability_report_and_bench_suites_to_a_reader_that_went_away_end_quietly_with_exit_141(
        cli_env, tmp_path: Path, name: str, unbuffered: bool) -> None:
    pipe = closed_pipe()
    try:
        proc = run_printing(name, pipe, buffering(unbuffered, cli_env), tmp_path)
    finally:
        os.close(pipe)
    assert proc.returncode == 141, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr  # the report's progress lines only


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full (Linux) to stand for a full disk")
@pytest.mark.parametrize("name", list(PRINTING))
def test_their_help_lost_to_a_full_disk_says_that_nothing_was_done_and_to_a_closed_pipe_ends_quietly(
        cli_env, tmp_path: Path, name: str) -> None:
    with FULL.open("w") as full:
        proc = run_printing(name, full.fileno(), cli_env, tmp_path, "--help")
    assert proc.returncode == 10 and "nothing was done" in proc.stderr, proc.stderr
    assert not (tmp_path / "demo-base").exists()
    pipe = closed_pipe()
    try:
        proc = run_printing(name, pipe, cli_env, tmp_path, "--help")
    finally:
        os.close(pipe)
    assert (proc.returncode, proc.stderr) == (141, "")


@pytest.mark.parametrize("unbuffered", [True, False], ids=["PYTHONUNBUFFERED=1", "buffered"])
@pytest.mark.parametrize("args", [["status", "--help"], ["--version"]])
def test_help_and_version_to_a_reader_that_went_away_end_quietly_with_exit_141(
        cli_env, args: list[str], unbuffered: bool) -> None:
    pipe = closed_pipe()
    try:
        proc = run_into(pipe, *args, env=buffering(unbuffered, cli_env))
    finally:
        os.close(pipe)
    assert (proc.returncode, proc.stderr) == (141, "")
