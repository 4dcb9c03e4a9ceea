"""On PostgreSQL every machine decides time by the server's clock, whatever its own says.

A machine whose clock is off is simulated by shifting ``time.time`` (the wall clock every part of the
program reads) around what that machine does, never by giving its ``Orchestrator`` a ``clock=``; a
worker process is started with its ``time.time`` shifted. Its monotonic clock, as on a real machine, is
not shifted. Each "machine" has its own store (connections), and its own base path.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import worker_handlers  # noqa: F401  (registers t.* handlers)
from orchestrator import Orchestrator
from orchestrator import clock as clock_mod
from orchestrator.errors import StorageError, StorageUnavailableError
from orchestrator.store import pg_clock
from orchestrator.store.pg_deadline import MIN_CONNECT_TIMEOUT
from orchestrator.store.postgres import PostgresStore
from orchestrator.worker import Worker, WorkerSettings

from backends import Cluster, cluster_of, killed_at_the_end, require_pg
from helpers import REPO, WAIT, wait_until

pytestmark = pytest.mark.postgres

HOURS_2 = 7200.0
CLOSE = 0.05  # how near two readings of one clock must be (a round trip here is ~0.1 ms)
_REAL_TIME = time.time


@contextlib.contextmanager
def clock_off_by(seconds: float) -> Iterator[None]:
    """This process's wall clock ``seconds`` ahead (behind, if negative) for the block: what a machine whose
    clock is that far off reads, in every module (``time.time`` is looked up at each call)."""
    time.time = lambda: _REAL_TIME() + seconds  # type: ignore[assignment]
    try:
        yield
    finally:
        time.time = _REAL_TIME  # type: ignore[assignment]


@pytest.fixture
def machines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    with cluster_of(tmp_path, monkeypatch, lease_seconds=1.0) as cluster:
        yield cluster


def types(orch: Orchestrator, job_id: str) -> list[str]:
    return [json.loads(line.raw)["type"] for line in orch.store.read(job_id)]


def last_event(orch: Orchestrator, job_id: str) -> dict[str, Any]:
    return json.loads(orch.store.read(job_id)[-1].raw)


# -- machines whose clocks differ agree on leases --------------------------------------------------------
@pytest.mark.parametrize("claimer_off, rescuer_off", [(HOURS_2, 0.0), (0.0, HOURS_2), (-HOURS_2, 0.0)],
                         ids=["claimer-ahead", "rescuer-ahead", "claimer-behind"])
def test_machines_whose_clocks_differ_by_hours_agree_on_when_a_lease_ends(
        machines: Cluster, claimer_off: float, rescuer_off: float) -> None:
    a, b = machines.machine("a"), machines.machine("b")
    with clock_off_by(claimer_off):
        job = a.submit("t.wait", {"started": "-", "release": "-"})
        claim = machines.worker(a, "a").claim()  # at ``a.clock()``: nothing passes a time in
        assert claim is not None
    expiry = claim.state.lease_expires_at
    rescuer = machines.worker(b, "b")
    with clock_off_by(rescuer_off):
        assert abs(expiry - 1.0 - b.clock()) < 0.5  # b reads the lease a just took, from a's claim
        assert rescuer.recover_stale() == []  # not before the lease ends (a machine ahead took it at once)
        wait_until(lambda: rescuer.recover_stale() == [job], timeout=5.0, what="the expired lease to be recovered")
    recovered = last_event(b, job)
    assert recovered["type"] == "stale_recovered"
    assert clock_mod.from_iso(recovered["ts"]) >= expiry  # stamped on the same clock as the lease, after it
    assert abs(clock_mod.from_iso(recovered["ts"]) - expiry) < 1.0  # not hours later (a machine behind)
    assert b.status(job).state == "queued"


def test_a_worker_process_whose_clock_is_hours_behind_keeps_its_job_until_it_dies(
        machines: Cluster, cli_env: dict[str, str]) -> None:
    here = machines.machine("here")
    started, release = machines.tmp / "started", machines.tmp / "release"
    job = here.submit("t.wait", {"started": str(started), "release": str(release)})
    env = machines.process_env(cli_env, "behind")
    script = str(REPO / "scripts" / "worker.py")
    behind = ("import runpy, sys, time; real = time.time; time.time = lambda: real() - %r; "
              "sys.argv = [%r] + sys.argv[1:]; runpy.run_path(%r, run_name='__main__')" % (HOURS_2, script, script))
    proc = subprocess.Popen([sys.executable, "-c", behind, "--once", "--worker-id", "behind", "--lease-seconds", "1"],
                            env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rescuer = machines.worker(here, "here")
    with killed_at_the_end(proc):
        wait_until(started.exists, what="the job to start on the machine whose clock is behind")
        seen = here.load(job).state
        assert seen is not None and abs(seen.submitted_at - here.clock()) < 5  # its claim's time is the server's
        # three leases long, with heartbeats two hours "in the past" by their own machine's clock
        watch_until = time.monotonic() + 3.0
        while time.monotonic() < watch_until:
            assert rescuer.recover_stale() == [], "a live run was recovered as stale"
            time.sleep(0.05)
        assert here.store.get_aux("leases", f"{job}.1")  # it renewed its lease meanwhile
    lease = json.loads(here.store.get_aux("leases", f"{job}.1"))
    assert abs(lease["expires_at"] - 1.0 - here.clock()) < 1.5  # renewed on the server's clock, just before
    wait_until(lambda: rescuer.recover_stale() == [job], timeout=5.0, what="the dead run's job to be recovered")
    assert clock_mod.from_iso(last_event(here, job)["ts"]) >= lease["expires_at"]
    assert types(here, job) == ["job_submitted", "job_claimed", "stale_recovered"]


def test_artifacts_a_dead_run_left_are_found_on_a_machine_whose_clock_is_behind(machines: Cluster) -> None:
    orch = machines.machine("m")
    with clock_off_by(-HOURS_2):
        job = orch.submit("t.wait", {"started": "-", "release": "-"})
        claim = machines.worker(orch, "dead").claim()
        assert claim is not None
        rescuer = machines.worker(orch, "rescuer")
        left = rescuer.folders.artifacts_dir(job) / "partial.txt"
        left.parent.mkdir(parents=True, exist_ok=True)
        left.write_text("half done")
        os.utime(left, (time.time(), time.time()))  # the time its machine's clock gives the file
        wait_until(lambda: rescuer.recover_stale() == [job], timeout=5.0, what="the dead run to be recovered")
    state = orch.status(job)
    assert state.state == "waiting_human" and "partial.txt" in (state.question or "")


# -- the offset, and what the clock is made of ------------------------------------------------------------
def test_the_offset_measured_is_how_far_this_machines_clock_is_from_the_servers(machines: Cluster) -> None:
    orch = machines.machine("m")
    with clock_off_by(HOURS_2):
        orch.store.has_jobs()  # its first call samples the server's clock
        measured = orch.store.shared_clock.offset
        assert abs(measured + HOURS_2) < CLOSE  # the server is two hours behind this machine
        assert abs(orch.clock() - _REAL_TIME()) < CLOSE
    sample = orch.store.shared_clock.sample
    assert sample is not None and 0 < sample.round_trip < 1.0


def test_a_wall_clock_stepped_after_the_sample_does_not_move_the_orchestrators_clock(machines: Cluster) -> None:
    orch = machines.machine("m")
    orch.store.has_jobs()
    for step in (HOURS_2, -HOURS_2):  # NTP stepping this machine's clock, between two samples
        with clock_off_by(step):
            assert abs(orch.clock() - _REAL_TIME()) < CLOSE
            orch.store.has_jobs()  # no sample is due: the last one stands
            assert abs(orch.clock() - _REAL_TIME()) < CLOSE


def test_a_call_samples_the_clock_only_once_a_refresh_is_due(machines: Cluster,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    orch = machines.machine("m")
    server = orch.store.shared_clock
    orch.store.has_jobs()
    first, tried = server.sample, server._tried_at
    for _ in range(5):
        orch.store.has_jobs()
    assert (server.sample, server._tried_at) == (first, tried)  # no round trip added to a call
    monkeypatch.setattr(pg_clock, "REFRESH_SECONDS", 0.0)
    orch.store.has_jobs()
    assert server._tried_at > tried  # due: the call's connection sampled first
    assert abs(orch.clock() - time.time()) < CLOSE
    monkeypatch.setattr(pg_clock, "REFRESH_SECONDS", 3600.0)
    tried = server._tried_at
    orch.store.has_jobs()
    assert server._tried_at == tried
    for conn in orch.store._idle:  # noqa: SLF001 - the next call must open a connection
        conn.close()
    orch.store.has_jobs()
    assert server._tried_at > tried  # a new connection may be to another server (a failover): sampled


def test_a_worse_sample_does_not_replace_a_better_one_until_the_better_one_is_old() -> None:
    server = pg_clock.ServerClock(lambda: None)
    good = pg_clock.Sample(server=1000.0, at=10.0, round_trip=0.001, wall=1000.0)
    assert server.offer(good)
    assert not server.offer(pg_clock.Sample(server=1001.0, at=11.0, round_trip=0.2, wall=1001.0))  # a slow trip
    assert server.sample is good
    # a thousand seconds on, the good one may have drifted 0.1 s: a 0.2 s round trip bounds the time as well
    assert server.offer(later := pg_clock.Sample(server=2000.0, at=1010.0, round_trip=0.2, wall=2000.0))
    assert server.sample is later
    assert server.offer(pg_clock.Sample(server=2001.0, at=1011.0, round_trip=0.001, wall=2001.0))  # a fast one


def test_once_sampled_the_clock_is_read_without_the_server(machines: Cluster) -> None:
    """A heartbeat decides to stop a run while the server cannot be reached: its clock must not need it."""
    orch = machines.machine("m")
    before = orch.clock()
    orch.store.close()  # every call now fails at once: the clock makes none
    assert 0 <= orch.clock() - before < 1.0


def test_the_first_read_of_the_clock_with_the_server_unreachable_fails_at_once_as_any_call_does(
        machines: Cluster, base: Path) -> None:
    orch = Orchestrator(base_path=base, project_id="proj", store=PostgresStore("postgresql://postgres@127.0.0.1:1/x"))
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError):
        orch.clock()
    with pytest.raises(StorageUnavailableError):
        orch.submit("t.echo", {})
    assert time.monotonic() - started < 5.0
    orch.store.close()
    with pytest.raises(StorageError):  # closed, never sampled: the clock's call fails as every call does
        orch.clock()


def test_worker_once_whose_server_never_answers_gives_up_within_its_wait_though_its_clock_is_not_sampled(
        tmp_path: Path) -> None:
    """The worker's first call, not a read of its clock, meets the silent server: the call is bounded by the
    wait (``calls_end_by``; a new connection's connect_timeout the time left), not by the 10 s connect_timeout."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nothing ever answers
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/test", "silent",
                              deadline_seconds=10)
        orch = Orchestrator(base_path=tmp_path, project_id="silent", store=store)
        worker = Worker(orch, WorkerSettings(worker_id="w", store_wait_seconds=1.0))
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            worker.run_once()
        took = time.monotonic() - started
        store.close()
    assert took < 1.0 + MIN_CONNECT_TIMEOUT + 1.5, took


def test_threads_sharing_one_orchestrator_read_one_clock(machines: Cluster) -> None:
    orch = machines.machine("m")
    readings: list[tuple[float, float]] = []
    gate = threading.Barrier(8)

    def read() -> None:
        gate.wait()
        readings.append((orch.clock(), time.time()))  # the first reads sample the clock, in every thread at once

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(readings) == 8 and all(abs(c - t) < 0.5 for c, t in readings)
    assert orch.store.shared_clock.sample is not None


# -- what stays as it was -----------------------------------------------------------------------------------
def test_a_clock_given_to_an_orchestrator_on_postgres_is_the_one_it_uses(machines: Cluster) -> None:
    given = lambda: 1_900_000_000.0  # noqa: E731
    orch = machines.machine("m", clock=given)
    assert orch.clock is given
    assert machines.machine("n", clock=clock_mod.now).clock is clock_mod.now  # this machine's, when asked for
    job = orch.submit("t.echo", {})
    claim = machines.worker(orch, "w", lease_seconds=30.0).claim()
    assert claim is not None and claim.state.lease_expires_at == 1_900_000_030.0
    assert orch.store.shared_clock.sample is not None  # sampled by the calls, used by nobody here
    assert last_event(orch, job)["ts"] == clock_mod.to_iso(1_900_000_000.0)


@pytest.mark.parametrize("off", [HOURS_2, -HOURS_2])
def test_db_status_shows_how_far_this_machines_clock_is_from_the_servers(off: float) -> None:
    """What an operator checks on a machine: its clock two hours ahead shows as the server's two hours behind."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    url = require_pg()
    with clock_off_by(off):
        result = CliRunner().invoke(cli, ["db", "status", "--store", url, "--json"])
        text = CliRunner().invoke(cli, ["db", "status", "--store", url])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert abs(data["clock_offset_s"] + off) < CLOSE and 0 < data["clock_round_trip_s"] < 1
    shown = re.search(r"server clock ([0-9.]+) s (behind|ahead of) this machine's", text.output)
    assert text.exit_code == 0 and shown, text.output
    assert abs(float(shown[1]) - HOURS_2) < CLOSE and shown[2] == ("behind" if off > 0 else "ahead of")
