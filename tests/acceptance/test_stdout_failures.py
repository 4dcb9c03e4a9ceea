"""When stdout fails: a reader that went away (``| head``) ends a command quietly with exit 141, as SIGPIPE
would; a disk that refuses the output (``> file`` on a full disk) is STORAGE_ERROR (exit 10) on stderr. Never a
traceback, and what the command did stays done."""
from __future__ import annotations

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
