"""A worker's stop, in process, as it meets its running job: a handler that dies of the stop signal with its worker
(a service manager's control-group stop, ``pkill -f``), a second stop signal, a job cancelled while it runs."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import WAIT, alive, events, make_worker, taken_over_while_it_runs, wait_until
from orchestrator.store.base import AUDIT_STREAM


def released_notes(orch, job_id: str) -> tuple[str, list[str]]:
    """The last ``job_released`` event's error, and the audit notes of the job's ``job_released`` entries."""
    released = [e for e in events(orch, job_id) if e["type"] == "job_released"]
    audit = [json.loads(line.raw) for line in orch.store.read(AUDIT_STREAM)]
    return released[-1]["data"]["error"], [a["data"].get("note", "") for a in audit if a["job_id"] == job_id
                                           and a["data"]["action"] == "job_released"]


def waiting_job(orch, tmp_path: Path, kind: str, **options) -> tuple[str, Path]:
    """A job whose handler writes its process id to ``started``, then waits 30 s (a Python handler, or a
    command: its process is the one that waits)."""
    started = tmp_path / "started"
    if kind == "command":
        argv = ["sh", "-c", f'echo "{{\\"pid\\": $$}}" > {started}.new && mv {started}.new {started} && exec sleep 30']
        return orch.submit("command", {"argv": argv}, **options), started
    return orch.submit("t.wait", {"started": str(started), "release": str(tmp_path / "never"), "max_wait": 30},
                       **options), started


def in_a_thread(started: Path, *steps) -> threading.Thread:
    """Once ``started`` holds the handler's process id, run each step (a function of that pid) in turn."""
    def run() -> None:
        wait_until(started.exists, what="the handler to start")
        pid = json.loads(started.read_text())["pid"]
        for step in steps:
            step(pid)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def killed(signum: int):
    def kill(pid: int) -> None:
        os.kill(pid, signum)
        wait_until(lambda: not alive(pid), what="the handler to die")
    return kill


MODES = [("python", "reused"), ("python", "per-run"), ("command", "reused")]


@pytest.mark.parametrize("kind,mode", MODES, ids=["python-reused", "python-per-run", "command"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_a_run_whose_handler_dies_of_the_stop_signal_its_worker_got_too_is_handed_back_not_a_failed_attempt(
        orch, tmp_path: Path, kind: str, mode: str, signum: int) -> None:
    """A service manager's default stop (systemd's ``KillMode=control-group``) signals every process of the unit,
    and ``pkill -f`` every process whose command line matches: the handler dies of the signal the worker stops on.
    The run was cut short by the stop, as one killed past its grace period is: handed back, no attempt used (before:
    ``NO_TERMINAL_SIGNAL_EXIT``, a failed attempt; with ``max_attempts`` 1 the job failed for good)."""
    job, started = waiting_job(orch, tmp_path, kind, max_attempts=1)
    w = make_worker(orch, stop_grace_seconds=30.0, handler_process=mode)
    thread = in_a_thread(started, lambda _pid: w.stop(), killed(signum))
    begun = time.monotonic()
    result = w.run_once()
    thread.join(WAIT)
    assert (result.job_id, result.outcome, result.state, result.error_code) == (job, "released", "queued",
                                                                                "WORKER_STOPPED")
    st = orch.load(job).state
    assert (st.state, st.failures) == ("queued", 0)
    error, notes = released_notes(orch, job)
    assert signal.Signals(signum).name in error and "grace period" not in error, error
    assert len(notes) == 1 and signal.Signals(signum).name in notes[0], notes
    assert time.monotonic() - begun < 20  # not the 30 s grace period


@pytest.mark.parametrize("kind,mode", MODES, ids=["python-reused", "python-per-run", "command"])
def test_a_handler_that_died_of_sigterm_a_moment_before_its_worker_got_its_stop_is_handed_back_too(
        orch, tmp_path: Path, kind: str, mode: str) -> None:
    """The signals of one stop reach the processes one by one, the handler's first maybe: the worker waits a moment
    (``STOP_SIGNAL_WINDOW_SECONDS``) for its own before it records a handler that died of SIGTERM as a failure."""
    job, started = waiting_job(orch, tmp_path, kind, max_attempts=1)
    w = make_worker(orch, stop_grace_seconds=30.0, handler_process=mode)
    thread = in_a_thread(started, killed(signal.SIGTERM), lambda _pid: w.stop())
    result = w.run_once()
    thread.join(WAIT)
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED")
    assert orch.load(job).state.failures == 0


@pytest.mark.parametrize("kind,mode", MODES, ids=["python-reused", "python-per-run", "command"])
def test_a_handler_killed_by_sigterm_while_its_worker_goes_on_is_still_a_failed_attempt(
        orch, tmp_path: Path, kind: str, mode: str) -> None:
    """Someone else's SIGTERM (``kill PID`` of the handler alone): no stop of the worker follows, so the run failed,
    as it did before (after the moment the worker waits for a stop)."""
    job, started = waiting_job(orch, tmp_path, kind)
    w = make_worker(orch, handler_process=mode)
    thread = in_a_thread(started, killed(signal.SIGTERM))
    result = w.run_once()
    thread.join(WAIT)
    assert (result.job_id, result.outcome, result.error_code) == (job, "retry", "NO_TERMINAL_SIGNAL_EXIT")
    assert not w.stopping


def test_a_run_that_wrote_its_payload_before_dying_of_the_stop_signal_has_its_payload_recorded(orch) -> None:
    """Its outcome is known: recorded as any run's (the hand-back is for a run the stop cut short)."""
    from orchestrator import faults

    code = ("import json, os, signal, time; time.sleep(0.3); open(os.environ['ORCH_TERMINAL_FILE'], 'w').write("
            "json.dumps({'status': 'done', 'summary': 'done first'})); os.kill(os.getpid(), signal.SIGTERM)")
    job = orch.submit("command", {"argv": [sys.executable, "-c", code]})
    w = make_worker(orch, stop_grace_seconds=30.0)
    faults.arm("worker.after_start", w.stop)  # stopping while it runs
    result = w.run_once()
    assert (result.job_id, result.outcome) == (job, "succeeded")


def test_a_second_stop_signal_hands_the_run_back_saying_it_was_killed_at_once_not_after_the_grace_period(
        orch) -> None:
    """``job_released`` and its audit note said "killed after the 30s grace period" though a second signal had
    ended that period at once."""
    from orchestrator import faults

    job = orch.submit("t.sleep", 30)
    w = make_worker(orch, stop_grace_seconds=30.0)

    def signal_twice() -> None:
        for _ in range(2):
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)

    faults.arm("worker.after_start", threading.Thread(target=signal_twice, daemon=True).start)
    with w.handle_signals():
        result = w.run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED")
    error, notes = released_notes(orch, job)
    for said in (error, notes[0]):
        assert "grace period" in said and "after the 30s grace period" not in said, said
        assert "second stop signal" in said and "at once" in said, said


def test_a_run_killed_after_its_grace_period_says_so(orch) -> None:
    job = orch.submit("t.sleep", 30)
    w = make_worker(orch, stop_grace_seconds=0.3)
    from orchestrator import faults

    faults.arm("worker.after_start", w.stop)
    result = w.run_once()
    assert (result.job_id, result.outcome, result.error_code) == (job, "released", "WORKER_STOPPED")
    error, notes = released_notes(orch, job)
    assert "the run was killed after the 0.3s grace period" in error and "second" not in error, error


def test_a_run_cancelled_while_it_runs_reports_the_jobs_state_cancelled(orch, tmp_path: Path) -> None:
    """``worker --json`` printed ``"state": null`` for it, though the job is ``cancelled``."""
    job, started = waiting_job(orch, tmp_path, "python")
    w = make_worker(orch, lease_seconds=0.6)
    thread = in_a_thread(started, lambda _pid: orch.cancel(job, "no longer needed"))
    result = w.run_once()
    thread.join(WAIT)
    assert (result.job_id, result.outcome, result.state) == (job, "lease_lost", "cancelled")


def test_a_late_outcome_of_a_run_whose_job_was_cancelled_says_cancelled_not_taken_over(orch) -> None:
    """The outcome's append, refused, reads the job again: cancelled, and its message says so (it said "was taken
    over", as if another worker had the job, until 2026-12-07)."""
    job = orch.submit("t.echo", "late")
    w = make_worker(orch)
    claim = w.claim()
    result = taken_over_while_it_runs(w, claim, lambda: orch.cancel(job, "no longer needed"))
    assert (result.outcome, result.state, result.error_code) == ("lease_lost", "cancelled", "LEASE_LOST")
    message = result.details["message"]
    assert f"job {job} was cancelled" in message and "taken over" not in message, message
    assert claim.run_id in message and "its result is not recorded" in message


def test_a_run_cut_short_by_its_jobs_cancel_says_cancelled(orch, tmp_path: Path) -> None:
    """The lease keeper sees the job change while the run goes on, and the run is cut short: the job read then is
    cancelled, and the message says so (not "taken over or cancelled")."""
    job, started = waiting_job(orch, tmp_path, "python")
    w = make_worker(orch, lease_seconds=0.6)
    thread = in_a_thread(started, lambda _pid: orch.cancel(job, "no longer needed"))
    result = w.run_once()
    thread.join(WAIT)
    message = result.details["message"]
    assert (result.outcome, result.state) == ("lease_lost", "cancelled")
    assert f"job {job} was cancelled" in message and "taken over" not in message, message


def test_a_run_whose_job_another_worker_took_over_reports_the_jobs_state_as_it_found_it(orch) -> None:
    job = orch.submit("t.echo", "late")
    t = orch.clock()
    zombie = make_worker(orch, worker_id="zombie", lease_seconds=5)
    claim = zombie.claim(now=t)
    rescuer = make_worker(orch, worker_id="rescuer", lease_seconds=5)

    def reclaimed() -> None:
        rescuer.recover_stale(now=t + 6)
        assert rescuer.claim(now=t + 3600).epoch == claim.epoch + 1  # running under epoch 2

    result = taken_over_while_it_runs(zombie, claim, reclaimed)
    assert (result.job_id, result.outcome, result.state) == (job, "lease_lost", "running")
