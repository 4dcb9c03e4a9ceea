"""A worker that cannot renew its lease stops its run before the lease may expire, so that stale recovery never
lets another worker run the job beside it; it records what happened if the store lets it.

The first tests drive ``RunSupervisor.supervise`` in virtual time (an injected clock, a fake child, a store whose
lease writes fail): nothing sleeps. The others run real handlers on the file store, with its ``leases``
folder made unwritable."""
from __future__ import annotations

import json
import random
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from helpers import alive, wait_until
from orchestrator import Orchestrator
from orchestrator import heartbeat as heartbeat_mod
from orchestrator import supervisor as supervisor_mod
from orchestrator.killed import Killed
from orchestrator import worker as worker_mod
from orchestrator import worker_stop as worker_stop_mod
from orchestrator.clock import from_iso
from orchestrator.errors import PathEscapeError, StorageUnavailableError
from orchestrator.runner import Child
from orchestrator.worker import Worker, WorkerSettings

T0 = 1_800_000_000.0


class VirtualTime:
    """The worker's wall clock and monotonic clock, moved only by the fake child's waits."""

    def __init__(self) -> None:
        self.wall, self.mono = T0, 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class FakeChild(Child):
    """A handler that runs until ``exits_at`` (virtual seconds after the claim; None: for ever)."""

    def __init__(self, vt: VirtualTime, exits_at: float | None, output: Path) -> None:
        self.vt, self.pid, self.output = vt, 0, output
        self.exits_at = None if exits_at is None else vt.mono + exits_at

    def wait(self, timeout: float) -> int | None:
        step = max(timeout, 1e-6)
        if self.exits_at is not None and self.vt.mono + step >= self.exits_at:
            self.vt.advance(max(0.0, self.exits_at - self.vt.mono))
            return 0
        self.vt.advance(step)
        return None


@pytest.fixture
def virtual(base, keyring, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A worker on the file store whose clocks are virtual; ``down`` holds the spans (virtual seconds after the
    claim) when its lease writes fail; every kill is recorded with its virtual time."""
    vt = VirtualTime()
    orch = Orchestrator(base_path=base, project_id="proj", keyring=keyring, clock=lambda: vt.wall)
    for module in (worker_mod, supervisor_mod, worker_stop_mod, heartbeat_mod):  # each reads time.monotonic()
        monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: vt.mono))
    env = types.SimpleNamespace(vt=vt, orch=orch, down=[], kills=[], bounds=[], output=tmp_path / "out.log")
    env.output.write_text("")
    real_write = heartbeat_mod.write_lease

    def write_lease(store, lease):
        at = vt.wall - T0
        if any(start <= at < end for start, end in env.down):
            raise StorageUnavailableError("cannot connect to PostgreSQL: Connection refused")
        real_write(store, lease)

    monkeypatch.setattr(heartbeat_mod, "write_lease", write_lease)
    monkeypatch.setattr(supervisor_mod, "kill_run",  # nothing killed (a stand-in), as kill_run says it
                        lambda child, run_id: (env.kills.append(vt.wall - T0), Killed.of([]))[1])
    real_bound = orch.store.calls_end_by
    monkeypatch.setattr(orch.store, "calls_end_by", lambda at: (env.bounds.append(at), real_bound(at))[1])
    return env


def _supervise(env, exits_at: float | None, lease: float = 30.0) -> tuple[str, Any]:
    from orchestrator.leases import HeldLease

    orch = env.orch
    orch.submit("t.echo", 1)
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=lease), rng=random.Random(7))
    claim = worker.claim(now=env.vt.wall)
    assert claim is not None and claim.state.lease_expires_at == pytest.approx(T0 + lease)
    held = HeldLease(lease, claim.state.lease_expires_at)
    how, _code, _claim = worker.supervisor.supervise(claim, FakeChild(env.vt, exits_at, env.output), held)
    return how, held


def test_a_run_whose_renewals_fail_is_stopped_a_fifth_of_a_lease_before_the_last_stored_lease_ends(virtual) -> None:
    virtual.down.append((15.0, 1e9))  # renewed at +10 s (to +40 s); every heartbeat from +20 s on fails
    how, held = _supervise(virtual, exits_at=None)
    assert how == "unrenewed"
    assert virtual.kills == [pytest.approx(34.0)]  # 40 - 30/5: stopped, not a moment after
    assert held.expires_at == pytest.approx(T0 + 40.0) and held.failing_since == pytest.approx(T0 + 20.0)
    assert held.stopped_at == pytest.approx(T0 + 34.0)


def test_a_run_whose_store_comes_back_before_the_margin_goes_on_and_is_never_stopped(virtual) -> None:
    virtual.down.append((15.0, 30.5))  # failing from +20 s to +30 s, renewed at +31 s: the run goes on
    how, held = _supervise(virtual, exits_at=60.0)
    assert how == "exited" and virtual.kills == []
    assert held.failing_since is None and held.expires_at > T0 + 60.0


def test_a_run_whose_first_heartbeat_fails_is_stopped_before_the_claims_lease_ends(virtual) -> None:
    virtual.down.append((0.0, 1e9))  # nothing renewed at all: the claim's expiry (+30 s) is the lease held
    how, _held = _supervise(virtual, exits_at=None)
    assert how == "unrenewed" and virtual.kills == [pytest.approx(24.0)]


def test_every_call_of_a_heartbeat_ends_by_the_time_its_run_would_be_stopped(virtual) -> None:
    """A stalled server cannot hold the heartbeat past the stop (``calls_end_by``: PostgreSQL cuts the call)."""
    virtual.down.append((15.0, 1e9))
    _supervise(virtual, exits_at=None)
    # virtual monotonic time runs 1000 s ahead of the claim's: the renewal at +10 s was bounded by +24 s, the
    # ones after it by +34 s, the stop point of the lease it stored
    assert virtual.bounds[0] == pytest.approx(1000.0 + 24.0)
    assert set(round(b, 6) for b in virtual.bounds[1:]) == {round(1000.0 + 34.0, 6)}


def test_the_first_heartbeat_comes_a_third_of_the_claims_lease_after_the_claim_however_late_the_handler_started(
        virtual, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.leases import HeldLease

    beats: list[float] = []
    real_renew = heartbeat_mod.Heartbeat.renew

    def renew(self, claim):
        beats.append(virtual.vt.wall - T0)
        return real_renew(self, claim)

    monkeypatch.setattr(heartbeat_mod.Heartbeat, "renew", renew)
    orch = virtual.orch
    orch.submit("t.echo", 1)
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=30), rng=random.Random(7))
    claim = worker.claim(now=virtual.vt.wall)
    virtual.vt.advance(8.0)  # starting the handler took 8 s (copying an artifacts_from folder)
    worker.supervisor.supervise(claim, FakeChild(virtual.vt, 25.0, virtual.output), HeldLease(30, T0 + 30))
    assert beats[:2] == [pytest.approx(10.0), pytest.approx(20.0)]  # not at 8 + 10 s


# -- real handlers on the file store ---------------------------------------------------------------------
def _unwritable_leases(orch: Orchestrator) -> None:
    """The ``leases`` folder replaced by a file: every lease write fails (STORAGE_ERROR), nothing else does."""
    folder = orch.settings.state_dir / "leases"
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    folder.write_text("not a folder")


def _record_kills(monkeypatch: pytest.MonkeyPatch, orch: Orchestrator) -> list[float]:
    kills: list[float] = []
    real = supervisor_mod.kill_run
    monkeypatch.setattr(supervisor_mod, "kill_run",
                        lambda child, run_id: (kills.append(orch.clock()), real(child, run_id))[1])
    return kills


@pytest.mark.parametrize("handler_process", ["reused", "per-run"])
@pytest.mark.parametrize("kind", ["command", "t.wait"])
def test_a_run_whose_lease_folder_became_unwritable_is_stopped_before_its_lease_expires_and_recorded(
        orch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, handler_process: str) -> None:
    started = tmp_path / "started"
    if kind == "command":  # a process group: the shell and what it started
        job = orch.submit("command", {"argv": ["sh", "-c", f"sleep 60 & echo $! > {started}.tmp; "
                                               f"mv {started}.tmp {started}; wait"]})
    else:  # a Python handler, in the worker's handler process
        job = orch.submit("t.wait", {"started": str(started), "release": str(tmp_path / "never"), "max_wait": 60})
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=1.5, retry_base_seconds=0,
                                         handler_process=handler_process), rng=random.Random(7))
    kills = _record_kills(monkeypatch, orch)
    _unwritable_leases(orch)
    result = worker.run_once()
    worker.close()
    events = [json.loads(line.raw) for line in orch.store.read(job)]
    expiry = from_iso(events[1]["data"]["lease_expires_at"])
    assert len(kills) == 1 and kills[0] < expiry  # stopped before its lease could expire (at claim + 1.2 s)
    text = started.read_text()
    pid = json.loads(text)["pid"] if kind == "t.wait" else int(text)
    wait_until(lambda: not alive(pid), timeout=5, what="the run's process to end")
    assert (result.outcome, result.error_code) == ("retry", "LEASE_NOT_RENEWED")
    assert [e["type"] for e in events] == ["job_submitted", "job_claimed", "job_failed"]
    assert events[2]["data"]["error_code"] == "LEASE_NOT_RENEWED" and events[2]["data"]["retry_at"]
    assert "could not be renewed" in events[2]["data"]["error"] and "STORAGE_ERROR" in events[2]["data"]["error"]
    st = orch.status(job)
    assert st.state == "queued" and st.last_error["code"] == "LEASE_NOT_RENEWED"
    # another worker, at the lease's expiry, finds nothing to recover: the run was recorded by its own worker
    assert Worker(orch, WorkerSettings(worker_id="w2")).recover_stale(now=expiry + 1) == []


def test_a_worker_whose_lease_write_raises_any_other_error_kills_its_run_before_the_error_leaves_it(
        orch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A link planted in the record's place is PATH_ESCAPE, which stops the worker: its run must not outlive
    it (nothing renews the lease any more)."""
    started = tmp_path / "started"
    job = orch.submit("command", {"argv": ["sh", "-c", f"echo $$ > {started}.tmp; mv {started}.tmp {started}; "
                                           "exec sleep 60"]})

    def write_lease(store, lease):
        raise PathEscapeError("leases/x is a symbolic link")

    monkeypatch.setattr(heartbeat_mod, "write_lease", write_lease)
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=0.3), rng=random.Random(7))
    with pytest.raises(PathEscapeError):
        worker.run_once()
    pid = int(started.read_text())
    assert not alive(pid)  # killed before the error reached the caller, not left to run unrenewed
    assert orch.status(job).state == "running"  # recorded by stale recovery once its lease expires


def test_a_run_stopped_for_its_lease_runs_again_once_the_folder_is_back(orch, tmp_path: Path) -> None:
    code = ("import os, time; time.sleep(0.9); "
            "open(os.environ['ORCH_TERMINAL_FILE'], 'w').write('{\"status\": \"done\", \"summary\": \"ok\"}')")
    job = orch.submit("command", {"argv": [sys.executable, "-c", code]})
    worker = Worker(orch, WorkerSettings(worker_id="w1", lease_seconds=0.75, retry_base_seconds=0),
                    rng=random.Random(7))
    _unwritable_leases(orch)
    start = time.monotonic()
    assert worker.run_once().error_code == "LEASE_NOT_RENEWED"
    assert time.monotonic() - start < 0.9  # stopped at 0.6 s, not run to its end
    (orch.settings.state_dir / "leases").unlink()  # the operator fixes the folder
    result = worker.run_once()
    assert result.outcome == "succeeded", result
    assert orch.status(job).attempt == 2
