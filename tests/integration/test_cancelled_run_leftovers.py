"""A job cancelled while its worker is gone: what its run left running ends once the run's lease expired.

README: "control cancel kills the run"; docs/guarantees.md, section 2: "A run's processes end with the run, on its
machine". A live worker kills its cancelled run at its next heartbeat. Until 2026-12-07 (twenty-eighth session) a
cancel written while the run's worker was dead (SIGKILL, a crash) or paused dropped the job's running entry, stale
recovery never met the run again, and what it started ran on for good (the race hunt's ``cancelkill``).
"""
from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import Orchestrator
from orchestrator.leases import Lease, read_lease, write_lease
from orchestrator.signing import Keyring
from orchestrator.worker import Worker, WorkerSettings

import worker_handlers  # noqa: F401  (registers t.* handlers)
from backends import BACKENDS, orchestrator_on

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and pidfds")
LEASE = 30.0


@pytest.fixture(params=BACKENDS)
def orch(request: pytest.FixtureRequest, base: Path, keyring: Keyring):
    with orchestrator_on(request.param, base, keyring) as orch:
        yield orch


def make_worker(orch: Orchestrator, worker_id: str) -> Worker:
    return Worker(orch, WorkerSettings(worker_id=worker_id, lease_seconds=LEASE, retry_base_seconds=0.0),
                  rng=random.Random(7))


@pytest.fixture
def left_by(request: pytest.FixtureRequest):
    """``left_by(run_id)``: a process holding the run's ``ORCH_RUN_ID``, as ``sleep 301 &`` in a command has it,
    still running after its worker died; killed after the test if it is."""
    procs: list[subprocess.Popen] = []

    def start(run_id: str) -> subprocess.Popen:
        procs.append(subprocess.Popen(["sleep", "313"], env={**os.environ, "ORCH_RUN_ID": run_id}))
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def running_jobs(orch: Orchestrator) -> list[str]:
    return [job for job, _epoch in orch.queue.running_entries()]


def test_a_job_cancelled_after_its_worker_died_has_what_its_run_left_killed_once_the_runs_lease_expired(
        orch, left_by, caplog) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "dead").claim(now=t)
    assert claim is not None
    left = left_by(claim.run_id)  # its worker SIGKILLed: what its command started was re-parented to pid 1
    assert orch.cancel(job, "not needed").applied
    rescuer = make_worker(orch, "rescuer")
    assert rescuer.recover_stale(now=t + 1) == [] and left.poll() is None  # the lease holds: its worker's to end
    assert running_jobs(orch) == [job]
    with caplog.at_level(logging.WARNING, logger="orchestrator.recovery"):
        assert rescuer.recover_stale(now=t + LEASE + 1) == []  # not a recovery: the job stays cancelled
    assert left.wait(5) == -9
    [said] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RUN_PROCESSES_KILLED")]
    assert f"killed 1 process(es) left running by run {claim.run_id} of job {job}" in said
    assert f"(pid {left.pid})" in said and "cancelled" in said
    assert running_jobs(orch) == []  # met once
    assert orch.status(job).state == "cancelled"
    assert [e.type for e in orch.load(job).events][-1] == "job_cancelled"


def test_a_cancelled_runs_lease_renewed_by_its_worker_keeps_its_processes_until_it_expires(orch, left_by) -> None:
    """A worker paused, or slow to see the cancel, renewed the lease: the run is its worker's to end until then, and
    the record is not swept away as a finished run's would be (that would bring the claim's expiry back)."""
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "slow").claim(now=t)
    assert claim is not None
    renewed = t + 2 * LEASE
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "slow", os.getpid(), renewed, t + LEASE))
    left = left_by(claim.run_id)
    assert orch.cancel(job, "not needed").applied
    rescuer = make_worker(orch, "rescuer")
    assert rescuer.recover_stale(now=t + LEASE + 1) == [] and left.poll() is None
    assert read_lease(orch.store, job, claim.epoch) is not None  # kept by the sweep while the run may live
    assert rescuer.recover_stale(now=renewed + 1) == []
    assert left.wait(5) == -9 and running_jobs(orch) == []


def test_a_rebuilt_index_still_has_the_cancelled_run_met_and_its_processes_killed(orch, left_by) -> None:
    """An index rebuilt from the events (``index/built`` removed) puts the running entry the cancel kept: until
    2026-12-07 (twenty-ninth session) it put none for a cancelled job, and what the run of a worker that died before
    the rebuild left ran on for good."""
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "dead").claim(now=t)
    assert claim is not None
    left = left_by(claim.run_id)
    assert orch.cancel(job, "not needed").applied
    orch.queue.drop_running(job, claim.epoch)  # the index lost, as when it is rebuilt from nothing
    orch.queue.rebuild(orch)
    assert orch.queue.running_entries() == [(job, claim.epoch)]
    assert make_worker(orch, "rescuer").recover_stale(now=t + LEASE + 1) == []
    assert left.wait(5) == -9 and running_jobs(orch) == []


def test_a_stale_recovery_cut_short_before_its_kill_has_the_run_killed_by_the_next_pass(orch, left_by,
                                                                                         monkeypatch) -> None:
    """Stale recovery kills what a dead run left only once its event stands (recovery.recover). A worker that died
    between the two (SIGKILL, a crash) left the processes: until 2026-12-07 (twenty-ninth session) the event dropped
    the job's running entry, and no recovery met the run again."""
    from orchestrator import recovery

    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "dead").claim(now=t)
    assert claim is not None
    left = left_by(claim.run_id)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("the recovering worker dies before its kill")

    with monkeypatch.context() as patched:
        patched.setattr(recovery, "kill_left_processes", crash)
        with pytest.raises(KeyboardInterrupt):
            make_worker(orch, "crashed").recover_stale(now=t + LEASE + 1)
    assert orch.status(job).state == "queued" and left.poll() is None  # the event stands, the kill was not made
    assert make_worker(orch, "rescuer").recover_stale(now=t + LEASE + 2) == []  # recovered once: nothing written
    assert left.wait(5) == -9 and running_jobs(orch) == []
    assert [e.type for e in orch.load(job).events].count("stale_recovered") == 1


def test_a_stale_recovery_drops_the_running_entry_after_its_kill_and_leaves_the_retry_claimable(orch,
                                                                                                left_by) -> None:
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    claim = make_worker(orch, "dead").claim(now=t)
    assert claim is not None
    left = left_by(claim.run_id)
    rescuer = make_worker(orch, "rescuer")
    assert rescuer.recover_stale(now=t + LEASE + 1) == [job]
    assert left.wait(5) == -9 and running_jobs(orch) == []
    assert [e.job_id for e in orch.queue.ready()] == [job]
    retry = rescuer.claim(now=t + LEASE + 100)
    assert retry is not None and retry.job_id == job and retry.epoch > claim.epoch


NAMED_AND_BLOCK = ("import sys, time\nfrom orchestrator.leftovers import set_run_environment\n"
                   "from orchestrator.libc import load_libc\n"
                   "set_run_environment({'run_id': sys.argv[1]}, load_libc())\nprint('named', flush=True)\n"
                   "time.sleep(313)\n")


@pytest.fixture
def run_folder_held_by(request: pytest.FixtureRequest):
    """``run_folder_held_by(worker, run_id)``: the run's folder on the worker's machine, its output held by a process
    named after the run (as a Python handler's forks are: no ``ORCH_RUN_ID`` in ``/proc``), as its worker, killed,
    left them; killed after the test if it is."""
    from helpers import REPO, wait_until
    from orchestrator.run_folder import make_private_folder, open_output

    procs: list[subprocess.Popen] = []

    def start(worker: Worker, run_id: str) -> subprocess.Popen:
        folder = worker.folders.runs_root / run_id
        make_private_folder(folder)
        output = open_output(folder / "output.log")
        try:
            procs.append(subprocess.Popen([sys.executable, "-c", NAMED_AND_BLOCK, run_id], stdout=output,
                                          stderr=output, env={**os.environ, "PYTHONPATH": str(REPO)}))
        finally:
            os.close(output)
        wait_until(lambda: (folder / "output.log").read_text() == "named\n", what="the process to take the name")
        return procs[-1]

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_what_a_dead_run_left_on_this_machine_is_killed_by_a_worker_starting_here_after_another_machine_recovered_it(
        orch, left_by, run_folder_held_by, monkeypatch, caplog) -> None:
    """On PostgreSQL the first worker of any machine recovers a dead run, and kills what the run left on its own
    machine only: until 2026-12-07 (pg3) what it left on its own ran on for good, unless a worker of that machine met
    the job's running entry first. The run's folder, left on its machine's disk, names it: a worker starting there
    (or its sweep, once a minute) kills them, by the run's variable and, while one holds the run's output, by its
    name. The other machine is played by a recovery whose search of this machine's processes finds none."""
    from orchestrator import recovery

    job = orch.submit("t.echo", 1)
    t = orch.clock()
    dead = make_worker(orch, "dead")
    claim = dead.claim(now=t)
    assert claim is not None
    marked, named = left_by(claim.run_id), run_folder_held_by(dead, claim.run_id)
    with monkeypatch.context() as elsewhere:
        elsewhere.setattr(recovery, "kill_run_processes", lambda *args, **kwargs: [])
        assert make_worker(orch, "other-machine").recover_stale(now=t + LEASE + 1) == [job]
    assert running_jobs(orch) == [] and marked.poll() is None and named.poll() is None
    with caplog.at_level(logging.WARNING, logger="orchestrator.recovery"):
        make_worker(orch, "starting-here").recover_stale(now=t + LEASE + 2)  # its first sweep
    assert marked.wait(5) == -9 and named.wait(5) == -9
    assert not (dead.folders.runs_root / claim.run_id).exists()
    [said] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("RUN_PROCESSES_KILLED")]
    assert f"killed 2 process(es) left running by run {claim.run_id} after" in said, said
    assert str(marked.pid) in said and str(named.pid) in said


def test_a_workers_sweep_leaves_what_a_cancelled_run_left_while_a_recovery_is_still_to_meet_it(
        orch, left_by, run_folder_held_by) -> None:
    """A cancelled run keeps its running entry until its lease expired: its worker, alive, ends it and says what it
    killed (``end_cancelled_run``). The sweep of run folders leaves such a run to that recovery."""
    job = orch.submit("t.echo", 1)
    t = orch.clock()
    slow = make_worker(orch, "slow")
    claim = slow.claim(now=t)
    assert claim is not None
    marked, named = left_by(claim.run_id), run_folder_held_by(slow, claim.run_id)
    assert orch.cancel(job, "not needed").applied
    assert make_worker(orch, "starting-here").recover_stale(now=t + 1) == []  # its first sweep; the lease holds
    assert marked.poll() is None and named.poll() is None and running_jobs(orch) == [job]
