"""A process paused (SIGSTOP, Ctrl-Z, a frozen VM) in the middle of writing a job's head or lease record holds that
record's lock for as long as it is stopped. Workers pass over that job and run the others, stop on SIGTERM, and
``status`` of the job answers from its events (docs/worker.md, "never waiting without bound"; before the twenty-eighth
session of 2026-12-07 every worker and every ``status`` waited in ``flock`` for ever).

The stand-in for the paused writer takes the record's exclusive ``flock`` and stops itself, as a writer caught
between its ``flock`` and its ``close`` would; every wait here is bounded, so a regression fails instead of hanging.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import worker_handlers  # noqa: F401  (the t.* kinds, as the worker processes' ORCH_HANDLERS imports them)
from helpers import REPO, finish, make_worker, start_worker, stop, wait_until
from worker_process_fixtures import env, orch  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")

HOLD_AND_STOP = ("import fcntl, os, signal, sys\n"
                 "fd = os.open(sys.argv[1], os.O_RDWR)\n"
                 "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                 "os.kill(os.getpid(), signal.SIGSTOP)\n")


def stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "T"


@contextlib.contextmanager
def held_by_a_paused_writer(path: Path) -> Iterator[None]:
    """``path``'s exclusive lock held by a stopped process for the block."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_STOP, str(path)])
    try:
        wait_until(lambda: stopped(holder.pid), what="the stand-in writer to stop with the record's lock held")
        yield
    finally:
        holder.kill()
        holder.wait()


def job_with_its_record(orch, record: str) -> tuple[str, Path]:
    """A job and its record to hold: ``head``, a queued job's head record; ``lease``, the lease record a heartbeat
    wrote of a running job whose lease has expired (claimed here 60 s in the past), which stale recovery reads."""
    from orchestrator.leases import LEASES_AREA, Lease, write_lease

    job = orch.submit("t.echo", "held")
    if record == "head":
        return job, orch.settings.state_dir / "heads" / job
    past = time.time() - 60
    with make_worker(orch, worker_id="gone", lease_seconds=5) as worker:
        claim = worker.claim(now=past)
    assert claim is not None and claim.job_id == job
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "gone", os.getpid(), past + 10, past + 5))
    return job, orch.settings.state_dir / LEASES_AREA / f"{job}.{claim.epoch}"


def status_of(env: dict[str, str], job: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "status.py"), job, "--json"], env=env,
                          capture_output=True, text=True, timeout=15, cwd=str(REPO))


@pytest.mark.parametrize("record", ["head", "lease"])
def test_worker_once_passes_over_a_job_whose_record_a_paused_writer_holds_and_runs_another(
        env, orch, record: str) -> None:
    job, path = job_with_its_record(orch, record)
    held_state = orch.status(job).state
    other = orch.submit("t.echo", "other")
    with held_by_a_paused_writer(path):
        worker = start_worker(env, "--once", "--json", "--worker-id", "once")
        try:
            code, out, err = finish(worker, timeout=15)
        finally:
            stop(worker)
    assert code == 0, err
    assert json.loads(out)["job_id"] == other
    assert orch.status(other).state == "succeeded" and orch.status(job).state == held_state


@pytest.mark.parametrize("record", ["head", "lease"])
def test_a_looping_worker_stops_on_sigterm_while_a_paused_writer_holds_a_record(env, orch, record: str) -> None:
    job, path = job_with_its_record(orch, record)
    other = orch.submit("t.echo", "other")
    with held_by_a_paused_writer(path):
        worker = start_worker(env, "--worker-id", "loop")
        try:
            wait_until(lambda: orch.status(other).state == "succeeded", timeout=15, what="the other job to run")
            worker.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code, _out, err = finish(worker, timeout=10)
        finally:
            stop(worker)
    assert code == 0, err
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("record, state", [("head", "queued"), ("lease", "running")])
def test_status_of_a_job_whose_record_a_paused_writer_holds_answers_from_its_events_with_a_warning(
        env, orch, record: str, state: str) -> None:
    job, path = job_with_its_record(orch, record)
    with held_by_a_paused_writer(path):
        shown = status_of(env, job)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["state"] == state
    assert json.loads(shown.stdout)["lease_record_held"] is (record == "lease")  # its lease is its claim's
    assert "RECORD_LOCK_HELD" in shown.stderr and str(path.name) in shown.stderr


def test_status_text_of_a_job_whose_lease_record_a_paused_writer_holds_promises_no_recovery_until_it_is_let_go(
        env, orch) -> None:
    """Workers pass such a job over: its lease, read from its claim alone, has expired, but no worker pass recovers
    it until the record is let go (until 2026-12-07, twenty-ninth session, the text said one does)."""
    job, path = job_with_its_record(orch, "lease")
    with held_by_a_paused_writer(path):
        shown = subprocess.run([sys.executable, str(REPO / "scripts" / "status.py"), job], env=env,
                               capture_output=True, text=True, timeout=15, cwd=str(REPO))
    assert shown.returncode == 0, shown.stderr
    [lease] = [line for line in shown.stdout.splitlines() if line.startswith("lease_expires_at")]
    assert "recovers the job)" not in lease, lease
    assert "RECORD_LOCK_HELD" in lease and "let go" in lease, lease


@pytest.mark.parametrize("command", [["control.py", "cancel", "{job}", "not needed"], ["verify.py", "--job-id", "{job}"]],
                         ids=["control", "verify"])
def test_verify_and_control_say_why_they_wait_for_a_record_a_paused_writer_holds_and_finish_once_it_is_let_go(
        env, orch, tmp_path: Path, command: list[str]) -> None:
    """They must not act without the record, so they wait for it; until 2026-12-07 (twenty-ninth session) they did so
    without a word, as if hung."""
    job, path = job_with_its_record(orch, "head")
    said = tmp_path / "stderr"
    with held_by_a_paused_writer(path):
        with said.open("w") as err:
            waiting = subprocess.Popen([sys.executable, str(REPO / "scripts" / command[0]),
                                        *[arg.format(job=job) for arg in command[1:]]],
                                       env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=str(REPO))
        try:
            wait_until(lambda: "LOCK_HELD" in said.read_text(), timeout=15, what="the waiting command to say why")
            assert waiting.poll() is None, said.read_text()  # still waiting: nothing done without the record
        except BaseException:
            waiting.kill()
            waiting.wait()
            raise
    assert waiting.wait(timeout=15) == 0, said.read_text()
    assert path.name in said.read_text() and "fuser -v" in said.read_text()
    if command[0] == "control.py":
        assert orch.status(job).state == "cancelled"


def test_a_worker_reading_ahead_a_job_whose_head_record_a_paused_writer_holds_finishes_its_own_run(env, orch) -> None:
    """While a handler runs, its worker reads the job it will claim next (``Claimer.look_ahead``): a held record ends
    that look within the bounded wait (never past the run's first heartbeat), and the run goes on to its end."""
    first = orch.submit("t.echo", "first")
    job = orch.submit("t.echo", "held")
    last = orch.submit("t.echo", "last")
    with held_by_a_paused_writer(orch.settings.state_dir / "heads" / job):
        worker = start_worker(env, "--worker-id", "ahead", "--max-jobs", "2")  # the first run reads ahead
        try:
            code, _out, err = finish(worker, timeout=15)
        finally:
            stop(worker)
    assert code == 0, err
    assert [orch.status(j).state for j in (first, job, last)] == ["succeeded", "queued", "succeeded"]



def test_a_control_action_whose_audit_log_a_paused_writer_takes_after_its_event_says_why_it_waits_for_its_entry(
        orch, caplog: pytest.LogCaptureFixture) -> None:
    """A control action looks at the audit log under its lock before it writes anything (``require_writable``: a
    paused holder there is said as any other), but its entry, once its event is durable, is written whatever it waits
    for (``EventStore.append_audited``): a writer paused on the log in between was waited for without a word, that
    wait nested in the action's, until 2026-12-07 (twenty-ninth session). The stand-in takes the log's lock right after
    the event's append, as such a writer would; the action runs as ``control`` runs it (``waiting_said``)."""
    from orchestrator.held_records import waiting_said

    orch.cancel(orch.submit("t.echo", "first"), "the log's first entry")
    job = orch.submit("t.echo", "held")
    log = orch.settings.state_dir / "audit" / "audit_events.jsonl"
    holder, append, done = contextlib.ExitStack(), orch.store.append, []

    def append_then_pause_a_writer_on_the_log(stream: str, *args, **kwargs):
        head = append(stream, *args, **kwargs)
        if stream == job:
            holder.enter_context(held_by_a_paused_writer(log))
        return head

    def cancel() -> None:
        with waiting_said():
            done.append(orch.cancel(job, "not needed"))

    orch.store.append = append_then_pause_a_writer_on_the_log
    acting = threading.Thread(target=cancel, daemon=True)
    with holder:
        acting.start()
        wait_until(lambda: "LOCK_HELD" in caplog.text, timeout=15, what="the waiting action to say why")
        assert acting.is_alive() and orch.status(job).state == "cancelled"  # its event durable, its entry waiting
        assert job not in log.read_text().splitlines()[-1]
    acting.join(timeout=15)
    assert done and done[0].applied, caplog.text
    assert log.name in caplog.text and "fuser -v" in caplog.text
    assert job in log.read_text().splitlines()[-1]  # the cancel's entry, written once the log was let go
