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
