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

import pytest

from helpers import PRINTS_ITS_STACK, REPO, WAIT, finish, stop, wait_until, waits_for_a_stop
from orchestrator import Orchestrator
from orchestrator.key_files import load_keyring

MESSAGE = ("interrupted by SIGTERM before the command finished: check what it did (status, verify) before running it "
           "again")


def _stopped(cli_env: dict[str, str], started: Path, setup: str, command: str, *args: str,
             group: bool = False) -> subprocess.CompletedProcess:
    """``command ARGS`` as a real process, ``setup`` (Python run first) making it wait where it writes ``started``,
    then sent SIGTERM (with ``group``, its whole process group, as systemd stops a unit)."""
    script = (f"{PRINTS_ITS_STACK}import sys, time\nfrom orchestrator import cli\n{setup}\n"
              f"cli.run_script({command!r}, sys.argv[1:])\n")
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=cli_env, cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        wait_until(lambda: started.exists() or proc.poll() is not None, what="the command's wait")
        time.sleep(0.1)  # the wait under way (a forked reader's siblings started too)
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, code, out, err)


def _waits_in(module: str, name: str, started: Path) -> str:
    return f"from orchestrator import {module}\n{waits_for_a_stop(started)}{module}.{name} = waits\n"


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


# A child's ``sitecustomize``: its import of the command line (``orchestrator.cli``, or the module ``SLOW_MODULE`` names)
# waits until the test has sent its signal, a command's start made long enough to be hit for sure
SLOW_COMMAND_LINE_IMPORT = """
import os, sys, time
class SlowCommandLine:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ.get("SLOW_MODULE", "orchestrator.cli"):
            open(os.environ["STARTED"], "w").close()
            deadline = time.monotonic() + 20
            while not os.path.exists(os.environ["SENT"]) and time.monotonic() < deadline:
                time.sleep(0.01)
        return None
sys.meta_path.insert(0, SlowCommandLine())
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("entry", [["scripts/status.py"], ["-m", "orchestrator", "status"], ["console", "status"]],
                         ids=["script", "module", "console script"])
def test_a_stop_signal_while_the_command_line_is_imported_is_the_commands_interrupted_once_it_is(
        cli_env: dict[str, str], tmp_path: Path, entry: list[str], signum: int) -> None:
    """The entry points handle the stop signals before they import the command line: until 2026-12-07 a SIGTERM in
    those 88-237 ms of a start killed the process by the signal (-15, no word), a Ctrl-C printed a traceback."""
    if entry[0] == "console":  # the ``orchestrator`` an install put beside this Python
        entry = [str(Path(sys.executable).with_name("orchestrator")), *entry[1:]]
        if not Path(entry[0]).exists():
            pytest.skip("the package is not installed here: no console script")
    (tmp_path / "sitecustomize.py").write_text(SLOW_COMMAND_LINE_IMPORT)
    started, sent = tmp_path / "started", tmp_path / "sent"
    env = {**cli_env, "PYTHONPATH": f"{tmp_path}:{cli_env['PYTHONPATH']}", "STARTED": str(started), "SENT": str(sent)}
    command = entry if entry[0].endswith("orchestrator") else [sys.executable, *entry]
    proc = subprocess.Popen([*command, "01SOMEJOB"], env=env, cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))  # as in a terminal
    try:
        wait_until(lambda: started.exists() or proc.poll() is not None, what="the import of the command line")
        proc.send_signal(signum)
        sent.touch()
        code, out, err = finish(proc)
    finally:
        stop(proc)
    name = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else "SIGTERM"
    assert code == 128 + signum and out == "", (code, out, err)
    assert err.strip() == f"error[INTERRUPTED]: {MESSAGE.replace('SIGTERM', name)}", err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("tool, slow_module, said", [
    (["-m", "bench", "--quick", "--peers", "none"], "bench.report", "interrupted by {name}: the worker processes"),
    (["scripts/reliability_report.py", "--quick", "--only", "fsync"], "orchestrator.reliability.report",
     "error[INTERRUPTED]: interrupted by {name} before the run finished"),
    (["scripts/bench_event_costs.py", "--events", "10"], "bench.cli_args",
     "error[INTERRUPTED]: interrupted by {name} before the run finished"),
], ids=["python -m bench", "reliability_report", "bench_event_costs"])
def test_a_stop_signal_while_a_tool_imports_what_it_runs_ends_it_as_interrupted_once_it_is(
        cli_env: dict[str, str], tmp_path: Path, tool: list[str], slow_module: str, said: str, signum: int) -> None:
    """The tools hold a stop from their first step, as the entry points do (``entry.tool_started``): until 2026-12-07
    a SIGTERM in their 0.2-0.8 s of imports killed them by the signal (-15, no word), a Ctrl-C printed a traceback."""
    code, out, err = _stopped_while_importing(cli_env, tmp_path, tool, slow_module, signum)
    assert code == 128 + signum and out == "", (code, out, err)
    assert err.startswith(said.format(name=signal.Signals(signum).name)) and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("tool, slow_module", [
    (["scripts/reliability_report.py", "--quick", "--only", "fsync", "--json"], "orchestrator.reliability.report"),
    (["scripts/bench_event_costs.py", "--events", "10", "--json"], "bench.cli_args"),
], ids=["reliability_report", "bench_event_costs"])
def test_a_tool_stopped_under_json_prints_the_interrupted_object_on_stdout_as_the_commands_do(
        cli_env: dict[str, str], tmp_path: Path, tool: list[str], slow_module: str) -> None:
    """As every command with ``--json``: a caller parsing stdout finds one ``INTERRUPTED`` object naming the signal,
    and stderr says nothing more; until 2026-12-07 these two said it on stderr only (stdout empty), then on both
    (until fix-small3)."""
    code, out, err = _stopped_while_importing(cli_env, tmp_path, tool, slow_module, signal.SIGTERM)
    said = "interrupted by SIGTERM before the run finished; nothing more was measured"
    assert code == 143 and err == "", (code, out, err)
    assert json.loads(out) == {"error": "INTERRUPTED", "message": said, "signal": "SIGTERM"}, out


@pytest.mark.parametrize("tool, begun", [
    (["scripts/reliability_report.py", "--quick", "--only", "torn", "--json"],
     lambda tmp, err: "torn: running" in err),  # its progress line, the part under way (3 s here)
    (["scripts/bench_event_costs.py", "--events", "200", "--json"],  # no progress line: its store made, its appends
     lambda tmp, err: any(tmp.glob("*/bench/.orchestrator/queue/jobs/*.events.jsonl"))),  # under way (0.6 s of fsyncs)
], ids=["reliability_report", "bench_event_costs"])
def test_a_tool_stopped_mid_run_under_json_prints_only_the_interrupted_object_and_removes_its_temporary_folder(
        cli_env: dict[str, str], tmp_path: Path, tool: list[str], begun) -> None:
    """As every command with ``--json``: stdout holds the one ``INTERRUPTED`` object and stderr no line of it (until
    fix-small3 the tools printed ``error[INTERRUPTED]`` there too); the run's temporary folder is gone."""
    tmp, err_file = tmp_path / "tmp", tmp_path / "stderr"
    tmp.mkdir()
    with err_file.open("w") as err_out:
        proc = subprocess.Popen([sys.executable, *tool], env={**cli_env, "TMPDIR": str(tmp)}, cwd=str(REPO),
                                text=True, stdout=subprocess.PIPE, stderr=err_out,
                                preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
        try:
            wait_until(lambda: begun(tmp, err_file.read_text()) or proc.poll() is not None, what="the run under way")
            proc.send_signal(signal.SIGTERM)
            code, out, _ = finish(proc)
        finally:
            stop(proc)
    err = err_file.read_text()
    said = "interrupted by SIGTERM before the run finished; nothing more was measured"
    assert code == 143 and json.loads(out) == {"error": "INTERRUPTED", "message": said, "signal": "SIGTERM"}, (
        code, out, err)
    assert "INTERRUPTED" not in err and "Traceback" not in err, err
    assert list(tmp.iterdir()) == []


# ``python -c`` running a tool whose stdout sends the process SIGTERM in the middle of the tool's result: the stop
# comes as the result is printed, the run's work done
SIGNALLED_WHILE_PRINTING = """
import os, runpy, signal, sys
class Signalling:
    def __init__(self, real):
        self.real = real
    def write(self, text):
        if text.startswith('{"machine"'):
            self.real.write(text[:20])
            os.kill(os.getpid(), signal.SIGTERM)
            text = text[20:]
        return self.real.write(text)
    def __getattr__(self, name):
        return getattr(self.real, name)
sys.stdout = Signalling(sys.stdout)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_tool_stopped_as_it_prints_its_result_keeps_that_one_object_on_stdout_and_says_the_stop_on_stderr(
        cli_env: dict[str, str]) -> None:
    """A stop after the run's work, while its JSON is printed: the result is printed whole and stays stdout's one
    object, the stop said on stderr (as a command whose stdout carries data says its errors), exit 143. Until
    fix-small3 the stop cut the object in two and a second one followed it."""
    proc = subprocess.run([sys.executable, "-c", SIGNALLED_WHILE_PRINTING, "scripts/bench_event_costs.py", "--events",
                           "10", "--json"], env=cli_env, cwd=str(REPO), text=True, capture_output=True, timeout=60)
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    result = json.loads(proc.stdout)
    assert result["line_bytes"] > 0 and "error" not in result, proc.stdout
    said = "interrupted by SIGTERM after the run finished and printed its result"
    assert json.loads(proc.stderr) == {"error": "INTERRUPTED", "message": said, "signal": "SIGTERM"}, proc.stderr


def _stopped_while_importing(cli_env: dict[str, str], tmp_path: Path, tool: list[str], slow_module: str,
                             signum: int) -> tuple[int, str, str]:
    """Start ``tool`` with its import of ``slow_module`` held (``SLOW_COMMAND_LINE_IMPORT``), send it ``signum``
    there, and return how it ended: its exit code, stdout and stderr."""
    (tmp_path / "sitecustomize.py").write_text(SLOW_COMMAND_LINE_IMPORT)
    started, sent = tmp_path / "started", tmp_path / "sent"
    env = {**cli_env, "PYTHONPATH": f"{tmp_path}:{cli_env['PYTHONPATH']}", "STARTED": str(started), "SENT": str(sent),
           "SLOW_MODULE": slow_module}
    proc = subprocess.Popen([sys.executable, *tool], env=env, cwd=str(REPO), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL))  # as in a terminal
    try:
        wait_until(lambda: started.exists() or proc.poll() is not None, what=f"the import of {slow_module}")
        proc.send_signal(signum)
        sent.touch()
        return finish(proc)
    finally:
        stop(proc)


# A command's helper thread that sends the process's SIGTERM to itself once the main thread waits in
# ``read_at_most``: taken by a thread other than the waiting one (where a ``kill PID`` may land), a stop meets the
# wait as one handled just before the wait began does, made sure
SIGNALLED_WHILE_READING = """
import os, signal, sys, threading, time
def reading():
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None and frame.f_code.co_name != "read_at_most":
        frame = frame.f_back
    return frame is not None
def signals_itself():
    deadline = time.monotonic() + 30
    while not reading() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # in the read itself
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
threading.Thread(target=signals_itself, daemon=True).start()
"""


@pytest.mark.parametrize("command, args", [
    ("submit", ["--kind", "k", "--input-file", "-"]),
    ("control", ["resume", "01SOMEJOB", "--text-file", "-"]),
], ids=["submit --input-file -", "control --text-file -"])
def test_a_stop_that_misses_the_wait_for_stdin_ends_the_command_within_a_slice_not_when_stdin_ends(
        cli_env: dict[str, str], command: str, args: list[str]) -> None:
    """``submit --input-file -`` from a pipe nobody writes to yet (a parent process that keeps it open): a stop handled
    just before the read began, or taken by another thread, was raised only once something was written or the pipe
    closed. The read waits in slices."""
    script = (f"{PRINTS_ITS_STACK}{SIGNALLED_WHILE_READING}from orchestrator import cli\n"
              f"cli.run_script({command!r}, sys.argv[1:])\n")
    read_end, write_end = os.pipe()  # kept open, never written to
    try:
        proc = subprocess.Popen([sys.executable, "-c", script, *args], env=cli_env, cwd=str(REPO), text=True,
                                stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
        os.close(read_end)
        try:
            code, out, err = finish(proc, timeout=15)
        finally:
            stop(proc)
    finally:
        os.close(write_end)
    assert code == 143 and err.strip() == f"error[INTERRUPTED]: {MESSAGE}", (code, out, err)


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


def test_a_sigterm_during_a_deferred_step_of_a_command_lets_the_step_end_then_stops_it_with_exit_143(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """One stop rule for every command line (``command_stop.COMMAND_STOP``): a command's step that a stop must not cut
    in two (``deferred``, the benchmarks' until 2026-12-07) ends whole, then the stop is the command's ``INTERRUPTED``;
    the command goes no further."""
    done, after = tmp_path / "done", tmp_path / "after"
    setup = ("from orchestrator import integrity\nfrom orchestrator.command_stop import COMMAND_STOP\n"
             "def waits(*args, **kwargs):\n"
             "    with COMMAND_STOP.deferred():\n"
             f"        open({str(tmp_path / 'started')!r}, 'w').close()\n"
             "        time.sleep(1)\n"
             f"        open({str(done)!r}, 'w').close()\n"
             f"    open({str(after)!r}, 'w').close()\n"
             "    time.sleep(60)\n"
             "integrity.verify_project = waits\n")
    proc = _stopped(cli_env, tmp_path / "started", setup, "verify")
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    assert proc.stderr.strip() == f"error[INTERRUPTED]: {MESSAGE}", proc.stderr
    assert done.exists() and not after.exists()


BENCH_WAY_OUT = """
import os, sys, time
from orchestrator import cli, terminal_bench
import orchestrator.commands.bench as command
def measure(*args, **kwargs):  # the run, stopped by the first signal
    open(os.environ["STARTED"], "w").close()
    time.sleep(60)
terminal_bench._measure = measure
real = command.echo
def echo(message, **kwargs):  # the second comes while the command says it was stopped
    if message.startswith("interrupted by"):
        open(os.environ["WAY_OUT"], "w").close()
        time.sleep(1)
    real(message, **kwargs)
command.echo = echo
cli.run_script("bench-terminal-latency", sys.argv[1:])
"""


def test_a_second_sigterm_while_a_stopped_benchmark_says_so_is_ignored(cli_env: dict[str, str],
                                                                        tmp_path: Path) -> None:
    """Before 2026-12-07 the benchmark's own stop handling (``terminal_bench.StopSignals``) put the command line's
    handler back as the stopped run ended, which raised again: a second, generic ``error[INTERRUPTED]: ... check what
    it did`` in the place of the benchmark's line saying what it stopped and removed."""
    started, way_out = tmp_path / "started", tmp_path / "way_out"
    proc = subprocess.Popen([sys.executable, "-c", BENCH_WAY_OUT], cwd=str(REPO), text=True,
                            env={**cli_env, "STARTED": str(started), "WAY_OUT": str(way_out)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        for mark in (started, way_out):
            deadline = time.monotonic() + WAIT
            while not mark.exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143, (out, err)
    assert err.strip() == ("interrupted by SIGTERM: the benchmark's worker process was stopped, the scratch project "
                           "and the folders made for it removed; no results were written"), err


# ``python -c`` running a command whose output path sends the process SIGTERM once it has written the command's result
# (``cli_common.echo``, where ``Output`` prints): the stop comes right after the result, the command's work done
SIGNALLED_AFTER_PRINTING = """
import os, signal, sys
from orchestrator import cli, cli_common
real = cli_common.echo
def echo(message, **kwargs):
    real(message, **kwargs)
    if not kwargs.get("err"):
        os.kill(os.getpid(), signal.SIGTERM)
cli_common.echo = echo
cli.run_script(sys.argv[1], sys.argv[2:])
"""


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "text"])
def test_a_command_stopped_right_after_it_printed_its_result_keeps_that_one_result_on_stdout(
        cli_env: dict[str, str], base: Path, as_json: bool) -> None:
    """A stop that came after the command printed its result: stdout keeps that result alone (its one JSON object under
    ``--json``), the stop said on stderr (the ``INTERRUPTED`` object with ``--json``), exit 143, as a tool says it
    (``entry.run_tool``). Until 2026-12-07 (fix-small4) a second object, ``INTERRUPTED``, followed the result on
    stdout."""
    Orchestrator(base_path=base, project_id="proj").submit("echo", {"text": "hi"})
    proc = subprocess.run([sys.executable, "-c", SIGNALLED_AFTER_PRINTING, "status", "--all",
                           *(["--json"] * as_json)],
                          env=cli_env, cwd=str(REPO), text=True, capture_output=True, timeout=60)
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    said = "interrupted by SIGTERM after the command printed its result"
    if as_json:
        assert json.loads(proc.stdout)["count"] == 1, proc.stdout  # one object: a second would not parse
        assert json.loads(proc.stderr) == {"error": "INTERRUPTED", "message": said, "signal": "SIGTERM"}, proc.stderr
    else:
        assert "queued" in proc.stdout and "INTERRUPTED" not in proc.stdout, proc.stdout
        assert proc.stderr.strip() == f"error[INTERRUPTED]: {said}", proc.stderr


# the same, the output path being click's ``echo`` itself: ``metrics --format prometheus`` prints its text with
# ``cli_common.echo`` as imported by its module, not through ``Output``
SIGNALLED_AFTER_ECHO = (SIGNALLED_AFTER_PRINTING
                        .replace("from orchestrator import cli, cli_common",
                                 "import click\nfrom orchestrator import cli")
                        .replace("real = cli_common.echo", "real = click.echo")
                        .replace("cli_common.echo = echo", "click.echo = echo"))


def test_metrics_in_prometheus_form_stopped_right_after_it_printed_its_result_says_so(
        cli_env: dict[str, str], base: Path) -> None:
    """``metrics --format prometheus`` printed its text outside ``json_usage.printing_result`` until 2026-12-07
    (revb): a stop after it said "before the command finished: check what it did", and one during it cut it."""
    Orchestrator(base_path=base, project_id="proj").submit("echo", {"text": "hi"})
    proc = subprocess.run([sys.executable, "-c", SIGNALLED_AFTER_ECHO, "metrics", "--format", "prometheus"],
                          env=cli_env, cwd=str(REPO), text=True, capture_output=True, timeout=60)
    assert proc.returncode == 143, (proc.stdout, proc.stderr)
    assert "orchestrator_" in proc.stdout, proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == ("error[INTERRUPTED]: interrupted by SIGTERM after the command "
                                                    "printed its result"), proc.stderr
