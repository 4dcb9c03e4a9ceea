"""A stream's append lock held by another process for a moment is taken by trying again without sleeping, not by
sleeping in ``flock`` (docs/performance.md, "A claim that finds its job's file locked"): on a VM whose idle CPUs halt,
a process asleep in ``flock`` was woken 0.8-1.5 ms late at P99. A lock held longer is waited for in ``flock`` as
before, and so is one that another thread of this process may hold (a spinning thread would keep it from the GIL)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.errors import AuxNotWrittenError, LockHeldError
from orchestrator.store import locks
from orchestrator.store.jsonl import JsonlStore


class FlockCalls:
    """The ``fcntl.flock`` calls of the test's main thread (the holder's, in its own thread, are not counted)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ops: list[int] = []
        real = fcntl.flock

        def flock(fd: int, op: int) -> None:
            try:
                real(fd, op)
            finally:  # counted once made (``held_for``'s holder may wait for a first try that found the lock held)
                if threading.current_thread() is threading.main_thread():
                    self.ops.append(op)

        monkeypatch.setattr(locks.fcntl, "flock", flock)

    @property
    def sleeping(self) -> int:
        """The calls that could sleep: an exclusive lock asked for without ``LOCK_NB``."""
        return sum(1 for op in self.ops if op == fcntl.LOCK_EX)


def held_for(path: Path, seconds: float, *, appending: bool = False,
             tried: Callable[[], object] | None = None) -> threading.Thread:
    """A thread holding ``path``'s lock for ``seconds`` through its own open file (a lock belongs to the open file, so
    it contends as another process's would), inside an append of this process if ``appending``; ``tried``: the
    seconds counted only once it says the main thread tried the lock, or 2 s passed (on a loaded host that thread could
    come to its first try after a hold of 0.2 ms was over, and find the lock free: nothing then to tell)."""
    taken = threading.Event()

    def hold() -> None:
        with locks.APPENDING if appending else contextlib.nullcontext():
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            taken.set()
            waited_until = time.monotonic() + 2.0  # bounded: a first try asleep in ``flock`` must not hang the test
            while tried is not None and not tried() and time.monotonic() < waited_until:
                time.sleep(0.0001)
            time.sleep(seconds)
            os.close(fd)

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait()
    return thread


def test_a_lock_released_within_the_spin_is_taken_without_sleeping_in_flock(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream"
    calls = FlockCalls(monkeypatch)
    holder = held_for(path, 0.0002, tried=lambda: calls.ops)
    fd = os.open(path, os.O_RDWR)
    try:
        locks.lock_soon(fd, seconds=5.0)  # a long spin: the holder lets go well within it, however slow the host
        assert calls.sleeping == 0 and len(calls.ops) >= 2  # tried, found it held, tried again until it was free
    finally:
        holder.join()
        os.close(fd)


def test_a_lock_held_past_the_spin_is_waited_for_in_flock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream"
    calls = FlockCalls(monkeypatch)
    holder = held_for(path, 0.05)
    fd = os.open(path, os.O_RDWR)
    try:
        started = time.monotonic()
        locks.lock_soon(fd, seconds=0.001)
        assert calls.sleeping == 1 and time.monotonic() - started >= 0.04  # asleep in flock until the holder let go
    finally:
        holder.join()
        os.close(fd)


def test_a_bounded_wait_takes_a_lock_released_soon_without_sleeping_in_flock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stream"
    calls = FlockCalls(monkeypatch)
    holder = held_for(path, 0.05)
    fd = os.open(path, os.O_RDWR)
    try:
        with locks.bounded_waits(lambda: False, seconds=5.0):
            locks.lock_soon(fd, seconds=0.001)
        assert calls.sleeping == 0 and len(calls.ops) >= 2
    finally:
        holder.join()
        os.close(fd)


@pytest.mark.parametrize("asked", [False, True])
def test_a_bounded_wait_for_a_lock_held_on_ends_with_lock_held_error_after_its_bound_or_at_a_stop(
        tmp_path: Path, asked: bool) -> None:
    """A holder paused mid-append (SIGSTOP) may hold the lock for ever: a worker's recovery and claim give up (before
    2026-12-06 they slept in ``flock``, deaf to SIGTERM), and the append writes nothing."""
    store = stream_with_a_line(tmp_path)
    holder = held_for(store.path("job-1"), 2.0)
    try:
        started = time.monotonic()
        with pytest.raises(LockHeldError), locks.bounded_waits(lambda: asked, seconds=0.2):
            store.append("job-1", lambda head: [b'{"seq":2}'], expected_seq=1)
        took = time.monotonic() - started
        assert took < 0.1 if asked else 0.2 <= took < 1.5
    finally:
        holder.join()
    assert [line.raw for line in store.read("job-1")] == [b'{"seq":1}']


def stream_with_a_line(tmp_path: Path) -> JsonlStore:
    store = JsonlStore(tmp_path / "proj" / ".orchestrator")
    store.append("job-1", lambda head: [b'{"seq":1}'])
    return store


def test_an_append_spins_for_a_lock_another_process_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = stream_with_a_line(tmp_path)
    monkeypatch.setattr("orchestrator.store.jsonl.LOCK_SPIN_SECONDS", 5.0)
    calls = FlockCalls(monkeypatch)
    holder = held_for(store.path("job-1"), 0.01)  # not in an append of this process: another process, as it looks
    try:
        head = store.append("job-1", lambda head: [b'{"seq":2}'], expected_seq=1)
    finally:
        holder.join()
    assert head.seq == 2 and [line.raw for line in store.read("job-1")] == [b'{"seq":1}', b'{"seq":2}']
    assert calls.sleeping == 0 and len(calls.ops) >= 2


def test_an_append_sleeps_in_flock_while_another_thread_of_this_process_appends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = stream_with_a_line(tmp_path)
    monkeypatch.setattr("orchestrator.store.jsonl.LOCK_SPIN_SECONDS", 5.0)
    calls = FlockCalls(monkeypatch)
    holder = held_for(store.path("job-1"), 0.01, appending=True)
    try:
        head = store.append("job-1", lambda head: [b'{"seq":2}'], expected_seq=1)
    finally:
        holder.join()
    assert head.seq == 2 and calls.ops == [fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_EX]  # one try, then asleep
    assert locks.APPENDING.count == 0  # every append counted out again


def test_a_child_forked_while_another_thread_counts_an_append_can_append(tmp_path: Path) -> None:
    """A handler process is a fork of its worker, whose other threads may be counting an append at that moment: the
    child's appends are counted from none (not from the other threads', which never end there), and nothing the
    count uses is left taken in it (a handler that submits a job must not hang)."""
    store = stream_with_a_line(tmp_path)
    held, release = threading.Event(), threading.Event()

    def count_an_append() -> None:
        with locks.APPENDING:  # another thread's append under way at the fork
            held.set()
            release.wait(10)

    thread = threading.Thread(target=count_an_append)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: append, then leave at once (no pytest teardown here)
        try:
            store.append("job-1", lambda head: [b'{"seq":2}'], expected_seq=1)
            os._exit(0 if locks.APPENDING.count == 0 else 2)
        except BaseException:  # noqa: BLE001 - any failure is the child's exit code
            os._exit(1)
    release.set()
    thread.join()
    deadline = time.monotonic() + 10
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on what another thread held at the fork")
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert [line.raw for line in store.read("job-1")] == [b'{"seq":1}', b'{"seq":2}']


def store_with_a_record(tmp_path: Path) -> tuple[JsonlStore, Path]:
    """A store holding job-1's line and its head record, and the record's path."""
    store = stream_with_a_line(tmp_path)
    store.put_aux("heads", "job-1", b'{"seq":1}')
    return store, tmp_path / "proj" / ".orchestrator" / "heads" / "job-1"


def test_a_record_held_on_is_neither_read_nor_written_past_a_bounded_wait_and_is_read_once_let_go(
        tmp_path: Path) -> None:
    """A writer paused in the middle of a head or lease record's write (between its ``flock`` and its ``close``)
    holds the record's lock for as long as it is stopped: inside a worker's bounded waits a read or a write of it
    gives up (``LockHeldError``, nothing written); until 2026-12-07 both slept in ``flock``, deaf to a stop."""
    store, path = store_with_a_record(tmp_path)
    holder = held_for(path, 1.5)
    try:
        with locks.bounded_waits(lambda: False, seconds=0.2):
            started = time.monotonic()
            with pytest.raises(LockHeldError):
                store.get_aux("heads", "job-1")
            with pytest.raises(LockHeldError):
                store.put_aux("heads", "job-1", b'{"seq":9}')
            assert time.monotonic() - started < 1.0
    finally:
        holder.join()
    assert store.get_aux("heads", "job-1") == b'{"seq":1}'  # outside a bounded wait a read waits, as before


def test_an_append_whose_head_record_stays_held_is_durable_and_says_its_record_was_not_written(
        tmp_path: Path) -> None:
    """The claim's (or a recovery's) head record after its durable event: not written, as on a full disk
    (``AuxNotWrittenError``: the append is acknowledged with ``HEAD_RECORD_NOT_WRITTEN``), never waited for."""
    store, path = store_with_a_record(tmp_path)
    holder = held_for(path, 1.5)
    try:
        with locks.bounded_waits(lambda: False, seconds=0.2), pytest.raises(AuxNotWrittenError, match="held"):
            store.append("job-1", lambda head: [b'{"seq":2}'], expected_seq=1,
                         aux=lambda head: {("heads", "job-1"): b'{"seq":2}'})
    finally:
        holder.join()
    assert [line.raw for line in store.read("job-1")] == [b'{"seq":1}', b'{"seq":2}']
    assert store.get_aux("heads", "job-1") == b'{"seq":1}'  # behind its lines, as after a crash between the two


def test_a_heartbeat_whose_lease_record_stays_held_fails_its_renewal_after_a_bounded_wait(orch) -> None:
    """Only the run's own heartbeats write its lease record, but a reader paused while it reads the record (a
    ``status``, another worker's recovery) holds its lock too: the renewal fails after ``LOCK_WAIT_SECONDS`` and is
    tried again soon (``HEARTBEAT_RETRY_SECONDS``), as when the store cannot be written, instead of the worker
    waiting with its run unwatched."""
    from helpers import make_worker
    from orchestrator.heartbeat import Heartbeat
    from orchestrator.leases import LEASES_AREA, HeldLease, Lease, write_lease

    job = orch.submit("command", {"argv": ["true"]})
    with make_worker(orch, lease_seconds=30) as worker:
        claim = worker.claim()
    assert claim is not None and claim.job_id == job
    now = orch.clock()
    write_lease(orch.store, Lease(job, claim.run_id, claim.epoch, "w1", os.getpid(), now + 30, now))
    heart = Heartbeat(orch, worker_id="w1", lease_seconds=30, held=HeldLease(30, claim.state.lease_expires_at))
    holder = held_for(orch.settings.state_dir / LEASES_AREA / f"{job}.{claim.epoch}", 3.0)
    try:
        started = time.monotonic()
        assert heart.renew(claim) == "failed"
        assert time.monotonic() - started < 2.5
    finally:
        holder.join()
    assert heart.held.failing_since is not None and "held" in heart.held.last_error
