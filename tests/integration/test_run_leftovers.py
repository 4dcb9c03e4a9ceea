"""What a run leaves running ends with it, and what a handler's process sees of the worker.

multiprocessing's own helpers (forkserver, resource tracker) survive the runs of a reused handler process; a
Python handler's process that crashes has what its run started killed by the worker; a command's child that
left its process group (``setsid``) is killed when the command exits; a Python handler never finds the
worker's keys in its environment."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import alive, make_worker
from orchestrator.handlers import register
from orchestrator.signing import new_seed


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, prctl and pidfds")


@pytest.fixture
def leftover(tmp_path: Path):
    """Where a test's leftover process writes its pid; killed at the end if the code under test did not."""
    import signal

    pidfile = tmp_path / "left.pid"
    yield pidfile
    if pidfile.exists() and alive(int(pidfile.read_text().split()[0])):
        os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)


# -- multiprocessing's helpers serve every run of a reused handler process ----------------------------------
def pools(ctx) -> dict:
    """A pool of the job's start method, used and closed, and what the handler process knows: its helpers'
    pids and how long it took to end what the previous run left (``leftovers.last_end_seconds``)."""
    import multiprocessing
    import multiprocessing.forkserver
    import multiprocessing.resource_tracker

    from orchestrator import leftovers

    with multiprocessing.get_context(ctx.input).Pool(2) as pool:
        squares = pool.map(abs, [-1, -2, -3])
    helpers = [multiprocessing.forkserver._forkserver._forkserver_pid,
               multiprocessing.resource_tracker._resource_tracker._pid]
    return {"status": "done", "summary": "pool", "output": {
        "squares": squares, "helpers": helpers, "pid": os.getpid(),
        "previous_end": getattr(leftovers, "last_end_seconds", None)}}


@linux_only
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_handler_using_a_multiprocessing_pool_runs_again_in_the_same_handler_process_without_waiting(
        orch, method: str) -> None:
    register("t.pools", pools)
    worker = make_worker(orch)
    outputs = []
    for _ in range(3):
        job = orch.submit("t.pools", method, max_attempts=1)
        result = worker.run_once()
        assert (result.job_id, result.outcome, result.error_code) == (job, "succeeded", None)
        assert result.warnings == []  # the pool's helpers are spared, not reported as killed
        outputs.append(orch.status(job).result["output"])
    assert all(out["squares"] == [1, 2, 3] for out in outputs)
    assert len({out["pid"] for out in outputs}) == 1  # one handler process served the three runs
    assert outputs[1]["helpers"] == outputs[2]["helpers"] == outputs[0]["helpers"]  # never killed nor restarted
    assert all(alive(pid) for pid in outputs[0]["helpers"] if pid)
    # measured in the handler process: ending what runs 1 and 2 left did not wait for the resource tracker,
    # which ignores SIGTERM (SIGKILL would come only after the 1 s grace)
    assert outputs[1]["previous_end"] < 0.25 and outputs[2]["previous_end"] < 0.25
    worker.close()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in outputs[0]["helpers"] if pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(alive(pid) for pid in outputs[0]["helpers"] if pid)  # they end with their handler process


@linux_only
def test_a_per_run_handler_process_ends_multiprocessings_helpers_without_waiting_out_the_grace(
        orch, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator import leftovers

    # the grace made 30 s (the handler process is forked: it inherits the default), so that waiting it out cannot
    # pass for a slow spawn on a loaded host (the 1 s grace against a 1 s bound failed at load 14 without a bug)
    monkeypatch.setattr(leftovers.end_leftovers, "__defaults__", (30.0,))
    register("t.pools", pools)
    job = orch.submit("t.pools", "spawn", max_attempts=1)
    started = time.monotonic()
    result = make_worker(orch, handler_process="per-run").run_once()
    took = time.monotonic() - started
    assert (result.job_id, result.outcome) == (job, "succeeded")
    helpers = [pid for pid in orch.status(job).result["output"]["helpers"] if pid]
    assert helpers and not any(alive(pid) for pid in helpers)  # ended with the run's process
    assert took < 15.0  # the resource tracker ignores SIGTERM: SIGKILL would come only after the 30 s grace


# -- a Python handler's process that dies: the worker ends what its run started -----------------------------
@linux_only
@pytest.mark.parametrize("crash", ["os._exit", "SIGSEGV"])
@pytest.mark.parametrize("session", ["own-session", "same-group"])
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_process_that_crashes_has_what_its_run_started_killed_before_the_failure_is_recorded(
        orch, leftover: Path, mode: str, session: str, crash: str) -> None:
    import faulthandler
    import signal

    def starts_and_crashes(ctx):
        proc = subprocess.Popen(["sleep", "300"], start_new_session=session == "own-session")
        leftover.write_text(str(proc.pid))
        if crash == "SIGSEGV":
            faulthandler.disable()  # pytest's, inherited: it would print the crash on the test's terminal
            os.kill(os.getpid(), signal.SIGSEGV)
        os._exit(3)

    register("t.starts_and_crashes", starts_and_crashes)
    job = orch.submit("t.starts_and_crashes", max_attempts=1)
    result = make_worker(orch, handler_process=mode).run_once()
    assert (result.job_id, result.error_code) == (job, "NO_TERMINAL_SIGNAL_EXIT")
    assert orch.status(job).state == "failed"
    left = int(leftover.read_text())
    assert not alive(left)
    # killed by the worker, in the dead process's group or out of it, and said with the result
    [killed] = [w for w in result.warnings if w["code"] == "RUN_PROCESSES_KILLED"]
    assert f"(pid {left})" in killed["message"] and "after its handler exited" in killed["message"]


# -- a Python handler that returns with processes still running: they end with the run, named with its result ---
@linux_only
@pytest.mark.parametrize("session", ["own-session", "same-group"])
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_that_returns_leaving_processes_running_has_them_killed_and_named_with_its_result(
        orch, leftover: Path, mode: str, session: str) -> None:
    def starts_and_returns(ctx):
        procs = [subprocess.Popen(["sleep", "300"], start_new_session=session == "own-session") for _ in range(2)]
        leftover.write_text(" ".join(str(proc.pid) for proc in procs))
        return {"status": "done", "summary": "left two sleeps"}

    register("t.starts_and_returns", starts_and_returns)
    worker = make_worker(orch, handler_process=mode)
    job = orch.submit("t.starts_and_returns", max_attempts=1)
    result = worker.run_once()
    assert (result.job_id, result.outcome) == (job, "succeeded")
    pids = [int(pid) for pid in leftover.read_text().split()]
    assert not any(alive(pid) for pid in pids)
    # whichever process group they were in: the handler process knows every process its run left, its children
    [warning] = result.warnings
    assert warning["code"] == "RUN_PROCESSES_KILLED"
    assert warning["message"].startswith(
        f"killed 2 process(es) left running by run {result.run_id} of job {job} when its handler ended "
        f"(pid {pids[0]}, {pids[1]})")
    # the next run of that handler process started nothing, and has nothing to report
    job = orch.submit("t.echo", "x", max_attempts=1)
    assert worker.run_once().warnings == []
    worker.close()


# -- a Python handler that calls sys.exit with processes still running: they end with the run, named too ------
@linux_only
@pytest.mark.parametrize("session", ["own-session", "same-group"])
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_that_calls_sys_exit_leaving_processes_running_has_them_killed_and_named_with_its_failure(
        orch, leftover: Path, mode: str, session: str) -> None:
    def starts_and_exits(ctx):
        procs = [subprocess.Popen(["sleep", "300"], start_new_session=session == "own-session") for _ in range(2)]
        leftover.write_text(" ".join(str(proc.pid) for proc in procs))
        sys.exit(3)

    register("t.starts_and_exits", starts_and_exits)
    worker = make_worker(orch, handler_process=mode)
    job = orch.submit("t.starts_and_exits", max_attempts=1)
    result = worker.run_once()
    assert (result.job_id, result.error_code) == (job, "NO_TERMINAL_SIGNAL_EXIT")
    assert "exited with status 3" in orch.status(job).last_error["message"]
    pids = [int(pid) for pid in leftover.read_text().split()]
    assert not any(alive(pid) for pid in pids)
    # the handler process ended them on its way out, and said so: the same warning as a run that returned
    [warning] = result.warnings
    assert warning["code"] == "RUN_PROCESSES_KILLED"
    assert f"left running by run {result.run_id} of job {job}" in warning["message"]
    assert f"(pid {pids[0]}, {pids[1]})" in warning["message"]
    # the next run (a new handler process, in the reused mode) has nothing to report
    orch.submit("t.echo", "x", max_attempts=1)
    assert worker.run_once().warnings == []
    worker.close()


# -- a command's child that left its process group ends with the command ------------------------------------
ESCAPE = ('setsid sleep 300 & echo $! > "$1"; '
          'while [ "$(cat /proc/$!/comm 2>/dev/null)" != sleep ]; do :; done; '  # it has left the group
          'echo ok; printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"')


@linux_only
def test_a_commands_child_that_left_its_process_group_with_setsid_is_killed_when_the_command_exits(
        orch, leftover: Path, caplog: pytest.LogCaptureFixture) -> None:
    job = orch.submit("command", {"argv": ["sh", "-c", ESCAPE, "sh", str(leftover)]}, max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        result = make_worker(orch).run_once()
    assert (result.job_id, result.outcome) == (job, "succeeded")
    left = int(leftover.read_text())
    assert not alive(left)
    # said with the run's result (worker --json's "warnings"), naming the process: a daemon meant to stay is gone
    assert [w["code"] for w in result.warnings] == ["RUN_PROCESSES_KILLED"]
    assert f"(pid {left})" in result.warnings[0]["message"] and result.run_id in result.warnings[0]["message"]
    # and logged as every reported warning is: its code, then its message
    assert f"RUN_PROCESSES_KILLED: {result.warnings[0]['message']}" in [r.getMessage() for r in caplog.records]


# -- what a command leaves in its own process group is named too, each process once ------------------------------
IN_GROUP = ('sleep 300 & echo $! > "$1"; sleep 301 & echo $! >> "$1"; '
            'printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"')
# one that ignores the group's SIGTERM: named with it, killed again after the grace period, still one process
STUBBORN = ("trap '' TERM; sleep 300 & echo $! > \"$1\"; "
            'printf \'{"status": "done", "summary": "ok"}\' > "$ORCH_TERMINAL_FILE"')


@linux_only
@pytest.mark.parametrize("script", [IN_GROUP, STUBBORN], ids=["ending-at-sigterm", "ignoring-sigterm"])
def test_what_a_command_leaves_running_in_its_process_group_is_ended_and_named_with_the_run_once(
        orch, leftover: Path, script: str) -> None:
    job = orch.submit("command", {"argv": ["sh", "-c", script, "sh", str(leftover)]}, max_attempts=1)
    result = make_worker(orch).run_once()
    assert (result.job_id, result.outcome) == (job, "succeeded")
    pids = [int(pid) for pid in leftover.read_text().split()]
    assert not any(alive(pid) for pid in pids)
    # listed before the group's SIGTERM: named as those that left the group are
    [warning] = result.warnings
    assert warning["code"] == "RUN_PROCESSES_KILLED"
    assert f"killed {len(pids)} process(es) left running by run {result.run_id} of job {job} after its handler " \
           "exited" in warning["message"]
    named = warning["message"].split("(pid ", 1)[1].split(")", 1)[0].split(", ")
    assert sorted(map(int, named)) == sorted(pids)


@linux_only
def test_a_command_that_leaves_nothing_running_reports_nothing(orch) -> None:
    orch.submit("command", {"argv": ["sh", "-c", 'printf \'{"status": "done", "summary": "ok"}\' > '
                                     '"$ORCH_TERMINAL_FILE"']}, max_attempts=1)
    result = make_worker(orch).run_once()
    assert (result.outcome, result.warnings) == ("succeeded", [])


# -- a handler that ended before its timeout is not a timeout, whatever ending what it left takes ------------------
# a command that leaves a process ignoring SIGTERM (the trap is inherited) and writes its payload at once: the
# group's SIGTERM leaves it running, and the SIGKILL comes after the 1 s grace, past the run's 0.8 s timeout
STUBBORN_AT_ONCE = ("trap '' TERM; sleep 300 & echo $! > \"$1\"; "
                    'printf \'{"status": "done", "summary": "in time"}\' > "$ORCH_TERMINAL_FILE"')


def ignores_sigterm() -> None:
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # kept across exec


@linux_only
@pytest.mark.parametrize("mode", ["command", "reused", "per-run"])
def test_a_handler_that_ends_before_its_timeout_is_recorded_by_its_payload_while_what_it_left_outlives_the_timeout(
        orch, leftover: Path, mode: str) -> None:
    """Until 2026-12-06 the timeout fell during the leftovers' grace: ``job_timeout``, the payload thrown away, and the
    job run again."""
    def starts_and_returns(ctx):
        proc = subprocess.Popen(["sleep", "300"], preexec_fn=ignores_sigterm)
        leftover.write_text(str(proc.pid))
        return {"status": "done", "summary": "in time"}

    register("t.stubborn_leftover", starts_and_returns)
    if mode == "command":
        job = orch.submit("command", {"argv": ["sh", "-c", STUBBORN_AT_ONCE, "sh", str(leftover)]}, timeout=0.8,
                          max_attempts=2)
    else:
        job = orch.submit("t.stubborn_leftover", timeout=0.8, max_attempts=2)
    worker = make_worker(orch, handler_process="per-run" if mode == "per-run" else "reused")
    started = time.monotonic()
    result = worker.run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "succeeded", None)
    assert time.monotonic() - started >= 1.0  # the grace was waited out: the timeout fell within it
    assert orch.status(job).result["summary"] == "in time"
    left = int(leftover.read_text())
    assert not alive(left)
    [warning] = result.warnings  # ended, and named, as without a timeout
    assert warning["code"] == "RUN_PROCESSES_KILLED" and f"(pid {left})" in warning["message"]
    worker.close()


@linux_only
@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_handler_process_that_never_finishes_ending_what_its_run_left_is_still_a_timeout(
        orch, monkeypatch, mode: str) -> None:
    """The timeout yields to the end of a run whose handler returned for ``LEFTOVERS_END_SECONDS`` only: a handler
    process stuck after its handler returned is killed as one past its timeout."""
    import orchestrator.handler_host as handler_host
    import orchestrator.runner as runner
    import orchestrator.supervisor as supervisor

    def stuck(*args, **kw):
        time.sleep(60)
        return []

    monkeypatch.setattr(handler_host if mode == "reused" else runner, "end_leftovers", stuck)  # in the fork too
    monkeypatch.setattr(supervisor, "LEFTOVERS_END_SECONDS", 0.5)
    job = orch.submit("t.echo", "x", timeout=0.5, max_attempts=1)
    worker = make_worker(orch, handler_process=mode)
    started = time.monotonic()
    result = worker.run_once()
    assert (result.job_id, result.error_code) == (job, "NO_TERMINAL_SIGNAL_TIMEOUT")
    assert time.monotonic() - started < 5.0
    worker.close()


# -- a Python handler never sees the worker's keys ---------------------------------------------------------
def reads_environment(ctx) -> dict:
    child = subprocess.run(["sh", "-c", "echo ${ORCH_SIGNING_KEY:-none} ${LLM_API_KEY:-none}"],
                           capture_output=True, text=True).stdout.split()
    return {"status": "done", "summary": "env", "output": {
        "signing_key": os.environ.get("ORCH_SIGNING_KEY"), "llm_key": os.environ.get("LLM_API_KEY"),
        "orch": sorted(name for name in os.environ if name.startswith("ORCH_")), "child": child,
        "harmless": os.environ.get("HARMLESS")}}


@pytest.mark.parametrize("mode", ["reused", "per-run"])
def test_a_python_handler_cannot_read_the_workers_signing_key_or_llm_key_from_its_environment(
        orch, monkeypatch, mode: str) -> None:
    seed = new_seed()
    monkeypatch.setenv("ORCH_SIGNING_KEY", seed)
    monkeypatch.setenv("LLM_API_KEY", "sk-test-0123456789abcdefghijklmnop")
    monkeypatch.setenv("HARMLESS", "yes")
    register("t.reads_environment", reads_environment)
    job = orch.submit("t.reads_environment", max_attempts=1)
    worker = make_worker(orch, handler_process=mode)
    assert worker.run_once().outcome == "succeeded"
    worker.close()
    out = orch.status(job).result["output"]
    assert out["signing_key"] is None and out["llm_key"] is None and out["child"] == ["none", "none"]
    assert out["orch"] == ["ORCH_JOB_ID", "ORCH_RUN_ID"]  # only the run's ids, as a command gets them
    assert out["harmless"] == "yes"  # the rest of the environment is the worker's
    assert os.environ["ORCH_SIGNING_KEY"] == seed  # the worker's own environment is untouched


def test_waiting_for_a_process_group_to_empty_gives_up_at_its_deadline_and_sees_it_empty_once_killed() -> None:
    """``leftovers.wait_group_empty``: the one wait for a command's group, by its wait and by ``end_exited_run``."""
    import signal

    from orchestrator.leftovers import wait_group_empty

    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        started = time.monotonic()
        assert wait_group_empty(proc.pid, started + 0.2) is False
        assert 0.2 <= time.monotonic() - started < 2.0
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_group_empty(proc.pid, time.monotonic() + 5.0) is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
