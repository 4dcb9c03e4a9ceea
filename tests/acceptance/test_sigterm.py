"""SIGTERM (``kill PID``, a service manager stopping the unit) stops a command as Ctrl-C does: one message, exit 143
(128 + 15), no traceback, nothing half-written. Before: the process died by the signal (exit -15 to its parent), a
temporary output file stayed behind, and forked readers were left to die on their own."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, WAIT
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring

MESSAGE = ("interrupted by SIGTERM before the command finished: check what it did (status, verify) before running it "
           "again")


def _stopped(cli_env: dict[str, str], started: Path, setup: str, command: str, *args: str,
             group: bool = False) -> subprocess.CompletedProcess:
    """``command ARGS`` as a real process, ``setup`` (Python run first) making it wait where it writes ``started``,
    then sent SIGTERM (with ``group``, its whole process group, as systemd stops a unit)."""
    script = f"import sys, time\nfrom orchestrator import cli\n{setup}\ncli.run_script({command!r}, sys.argv[1:])\n"
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=cli_env, cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + WAIT
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        time.sleep(0.1)  # the wait under way (a forked reader's siblings started too)
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _waits_in(module: str, name: str, started: Path) -> str:
    return (f"from orchestrator import {module}\n"
            f"def waits(*args, **kwargs): open({str(started)!r}, 'w').close(); time.sleep(60)\n"
            f"{module}.{name} = waits\n")


def test_sigterm_stops_verify_with_one_line_exit_143_and_no_anchor_or_temporary_file_left(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    out_dir = tmp_path / "anchors"
    out_dir.mkdir()
    proc = _stopped(cli_env, tmp_path / "started", _waits_in("integrity", "verify_project", tmp_path / "started"),
                    "verify", "--export-head", str(out_dir / "head.json"))
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    assert proc.stdout == "" and proc.stderr.strip() == f"error[INTERRUPTED]: {MESSAGE}", proc.stderr
    assert list(out_dir.iterdir()) == []  # the anchor's temporary file removed, no anchor written


def test_sigterm_under_json_is_one_interrupted_object_naming_the_signal(cli_env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    proc = _stopped(cli_env, tmp_path / "started", _waits_in("projection", "refresh", tmp_path / "started"),
                    "metrics", "--json")
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout) == {"error": "INTERRUPTED", "message": MESSAGE, "signal": "SIGTERM"}
    assert "Traceback" not in proc.stderr


def test_sigterm_to_the_process_group_stops_the_forked_readers_with_the_one_message_of_the_command(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """As a service manager stops a unit: every process of it gets SIGTERM. The readers leave it to the command,
    which ends them; none is left running and none prints a traceback of its own."""
    api = Orchestrator(base_path=cli_env["BASE_PATH"], project_id="proj", keyring=load_keyring(cli_env))
    for i in range(4):
        api.submit("t.echo", i)
    pids = tmp_path / "pids"
    pids.mkdir()
    setup = ("import os\n"
             "from orchestrator import audit, processes, projection\n"
             "processes.PARALLEL_FROM, audit.HEAL_BATCH = 1, 1  # a process from the first job, a job a chunk\n"
             "processes.may_fork = lambda: True\n"
             "def waits(orch, chunk, **kw):\n"
             f"    open(os.path.join({str(pids)!r}, str(os.getpid())), 'w').close()\n"
             f"    open({str(tmp_path / 'started')!r}, 'w').close()\n"
             "    time.sleep(60)\n"
             "projection._summarized = waits\n")
    proc = _stopped(cli_env, tmp_path / "started", setup, "metrics", "--rebuild", "--processes", "2", group=True)
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == f"error[INTERRUPTED]: {MESSAGE}", proc.stderr
    readers = [int(p.name) for p in pids.iterdir()]
    assert readers and os.getpid() not in readers
    deadline = time.monotonic() + WAIT
    while any(_alive(pid) for pid in readers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in readers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sigterm_ignored_when_the_command_starts_stays_ignored(cli_env: dict[str, str]) -> None:
    """``nohup``-like starts and shells that ignore it for a background job: the command does not take it back."""
    script = ("import signal, sys\nfrom orchestrator import cli\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "def check(*args, **kwargs):\n"
              "    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN\n"
              "    raise SystemExit(0)\n"
              "from orchestrator import integrity\nintegrity.verify_project = check\n"
              "cli.run_script('verify', sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", script], env=cli_env, cwd=str(REPO), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
