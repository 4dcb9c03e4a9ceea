"""Real worker processes stopped by signals: a stop that signals the handler too (a service manager's control-group
stop, ``pkill -f``), a stop at any point before the first claim, a second signal on the way out."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, WAIT, alive, finish, start_worker, stop, wait_until
from worker_process_fixtures import env, orch  # noqa: F401  (fixtures)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


def records(orch, job_id: str) -> list[dict]:
    return [json.loads(line.raw) for line in orch.store.read(job_id)]


def command_line(pid: int) -> str:
    """``/proc/PID/cmdline`` as ``pgrep -f`` matches it: its NUL separators read as spaces."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def pgrep_f(pattern: str) -> set[int]:
    """The processes ``pgrep -f PATTERN`` (a plain string here) selects: every one of this machine whose command
    line holds it, but this test's own."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if pattern in command_line(int(name)):
                    found.add(int(name))
            except OSError:
                pass
    return found


def waiting_job(orch, tmp_path: Path, kind: str, **options) -> tuple[str, Path, Path]:
    """A job whose handler writes its process id to ``started``, then waits for ``release`` (a Python handler), or
    for 30 s (a command, whose process is the one that waits)."""
    started, release = tmp_path / "started", tmp_path / "release"
    if kind == "command":
        argv = ["sh", "-c", f'echo "{{\\"pid\\": $$}}" > {started}.new && mv {started}.new {started} && exec sleep 30']
        return orch.submit("command", {"argv": argv}, **options), started, release
    return orch.submit("t.wait", {"started": str(started), "release": str(release), "max_wait": 30},
                       **options), started, release


@linux_only
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_pkill_f_on_the_workers_command_line_matches_the_worker_and_not_its_python_handler_process(
        env, orch, tmp_path: Path, mode: str) -> None:
    """The handler process is forked from the worker, so it had the worker's command line, and ``pkill -f 'orchestrator
    worker'`` ended the run along with its worker, a failed attempt. It names itself instead: the stop reaches the
    worker alone, whose running job finishes within its grace period."""
    job, started, release = waiting_job(orch, tmp_path, "python")
    proc = start_worker(env, "--json", "--handler-process", mode, "--stop-grace-seconds", "20")
    try:
        wait_until(started.exists, what="the job to start")
        handler = json.loads(started.read_text())["pid"]
        assert pgrep_f("scripts/worker.py --json") == {proc.pid}  # before the fix: {proc.pid, handler}
        assert command_line(handler) == "orch-handler-process"  # what `ps` shows of it
        for pid in pgrep_f("scripts/worker.py --json"):
            os.kill(pid, signal.SIGTERM)
        release.write_text("go")
        code, out, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["outcome"] == "succeeded", out


@pytest.mark.parametrize("kind", ["python", "command"])
def test_a_stop_sent_to_the_worker_and_its_handlers_process_hands_the_run_back_not_a_failed_attempt(
        env, orch, tmp_path: Path, kind: str) -> None:
    """As systemd's default ``KillMode=control-group`` stops a unit: every process of it gets SIGTERM, the run's too.
    Before: ``NO_TERMINAL_SIGNAL_EXIT``, an attempt used, and with ``--max-attempts 1`` the job failed for good."""
    job, started, _release = waiting_job(orch, tmp_path, kind, max_attempts=1)
    proc = start_worker(env, "--json", "--stop-grace-seconds", "20")
    try:
        wait_until(started.exists, what="the job to start")
        handler = json.loads(started.read_text())["pid"]
        for pid in sorted((proc.pid, handler)):  # one after the other, as the signals of a stop are sent
            os.kill(pid, signal.SIGTERM)
        code, out, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, err
    line = json.loads(out.splitlines()[0])
    assert (line["job_id"], line["outcome"], line["state"], line["error_code"]) == (job, "released", "queued",
                                                                                    "WORKER_STOPPED"), out
    st = orch.load(job).state
    assert (st.state, st.failures) == ("queued", 0)
    assert "ended by SIGTERM" in records(orch, job)[-1]["data"]["error"]
    assert not alive(handler)


# -- a stop before the first claim, wherever it lands ---------------------------------------------------------------
# Each makes one step of the worker command's start wait (the first time it is taken), after writing ``STARTED``: the
# command line's dispatch (its commands imported), the store opened, the worker's settings read.
SLOW_STEPS = {
    "dispatch": "import orchestrator.cli as m; name = '_register_commands'",
    "store": "import orchestrator.api as m; m = m.Orchestrator; name = '__init__'",
    "settings": "import orchestrator.handlers as m; name = 'look_in_start_folder'",
}
SLOWED = """
import os, sys, time
{step}
real, waited = getattr(m, name), []
def slow(*args, **kwargs):
    if not waited:
        waited.append(1)
        open(os.environ["STARTED"], "w").close()
        for _ in range(600):  # 30 s in 50 ms slices, as a command's steps wait: a signal landing just before a
            time.sleep(0.05)  # sleep's system call began is raised when it returns (command_stop), 30 s later in one
    return real(*args, **kwargs)
setattr(m, name, slow)
from orchestrator.cli import main
main(sys.argv[1:], prog_name="orchestrator")
"""


@pytest.mark.parametrize("once", [True, False], ids=["once", "looping"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("step", sorted(SLOW_STEPS))
def test_a_stop_signal_at_any_step_before_the_first_claim_is_the_workers_own_stop(
        env, orch, tmp_path: Path, step: str, signum: int, once: bool) -> None:
    """docs/worker.md, "Graceful stop": a stop before the first claim, ``--once`` exits 75, a looping worker prints its
    ``worker_stopped`` line and exits 0. Before: ``error[INTERRUPTED]: ... check what it did`` (143 or 130) when the
    signal came before the command's own handling began (its imports, the store opened, its settings read)."""
    job = orch.submit("t.echo", "x")
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", SLOWED.format(step=SLOW_STEPS[step]), "worker", "--json",
                             *(["--once"] if once else [])], env={**env, "STARTED": str(started)}, cwd=str(REPO),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(started.exists, what=f"the {step} step to start")
        proc.send_signal(signum)
        code, out, err = finish(proc)
    finally:
        stop(proc)
    assert "INTERRUPTED" not in out + err and "Traceback" not in err, (out, err)
    line = json.loads(out)
    if once:
        assert (code, line) == (75, {"ran": False, "worker_id": line["worker_id"], "stopped": True, "recovered": []})
    else:
        assert (code, line["event"], line["runs"]) == (0, "worker_stopped", 0), (out, err)
    assert [r["type"] for r in records(orch, job)] == ["job_submitted"]


# -- a second stop signal on the worker's way out --------------------------------------------------------------------
ON_THE_WAY_OUT = """
import atexit, os, sys, time
def last(*args, started=os.environ["STARTED"], open=open, sleep=time.sleep, **kwargs):
    open(started, "w").close()
    sleep(1)
class LastToGo:  # collected with this module's names, at the interpreter's very end (what it uses kept by it)
    def __del__(self, last=last):
        last()
{where}
from orchestrator.cli import main
main(sys.argv[1:], prog_name="orchestrator")
"""
WAYS_OUT = {
    # the interpreter's teardown, after the command returned (its handler process ended, its connections closed)
    "teardown": "atexit.register(last)",
    # the end of the teardown, after the interpreter put SIG_DFL back in the place of its Python signal handlers
    "finalization": "kept = LastToGo()",
    # while it prints its last line: the worker's own signal handling is over
    "last line": ("import orchestrator.commands.worker as w\nreal = w._stopped\n"
                  "def slow(*args, **kwargs):\n    last()\n    return real(*args, **kwargs)\nw._stopped = slow"),
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
@pytest.mark.parametrize("where", sorted(WAYS_OUT))
def test_a_second_stop_signal_on_the_workers_way_out_is_ignored(env, orch, tmp_path: Path, where: str,
                                                                 signum: int) -> None:
    """Before: the command line put the signals' defaults back as the command ended, so a second SIGTERM (systemd
    sends one to every process, a ``kill`` sent twice) killed the worker by the signal in its teardown (-15), or,
    while it printed its last line, made it ``INTERRUPTED`` (143)."""
    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", ON_THE_WAY_OUT.format(where=WAYS_OUT[where]), "worker", "--json"],
                            env={**env, "STARTED": str(started)}, cwd=str(REPO), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        job = orch.submit("t.echo", "x")  # its handler process is alive when the worker stops
        wait_until(lambda: orch.status(job).state == "succeeded", what="the job to run")
        proc.send_signal(signum)
        wait_until(started.exists, what="the way out")
        proc.send_signal(signum)
        code, out, err = finish(proc)
    finally:
        stop(proc)
    assert code == 0, (out, err)
    assert json.loads(out.splitlines()[-1])["event"] == "worker_stopped", out
    assert "INTERRUPTED" not in out + err and "Traceback" not in err, (out, err)


@pytest.mark.parametrize("gap", [0.0, 0.01, 0.03])
def test_two_sigterms_in_a_row_stop_a_worker_whose_handler_process_is_alive_with_exit_0(env, orch, gap: float) -> None:
    """The report's reproduction: ``send_signal(SIGTERM); sleep(0.01); send_signal(SIGTERM)`` -> exit -15, 16 of 16."""
    proc = start_worker(env, "--json")
    try:
        job = orch.submit("t.echo", "x")
        wait_until(lambda: orch.status(job).state == "succeeded", what="the job to run")
        proc.send_signal(signal.SIGTERM)
        time.sleep(gap)
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc, timeout=WAIT)
    finally:
        stop(proc)
    assert code == 0, (out, err)
    assert json.loads(out.splitlines()[-1])["event"] == "worker_stopped", out
