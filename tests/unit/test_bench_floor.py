"""The benchmark's physical floors must time the operation they name, not a shortcut of the code."""
from __future__ import annotations

import ctypes
import os
import threading
import time

import pytest
from nacl.signing import VerifyKey

from bench import report
from bench.floor import (IDLE_GAP_S, SYNCFS_BATCH, pair_loops, python_work, round_trip_loop, syncfs_batch_loop,
                         verification_loop, w1_ceiling)
from orchestrator.signing import Keyring

RECORD = {"job_id": "J", "type": "job_succeeded", "ts": "2026-11-22T00:00:00.000000Z", "actor": "w",
          "data": {"summary": "ok"}, "seq": 3, "prev": "0" * 64, "v": 1}


def test_the_verification_floor_runs_ed25519_once_per_sample(monkeypatch):
    """A keyring remembers what verified (and what it signed): a floor checking one line again and again measured
    the memo (7 us) instead of a verification (40-70 us) and lifted the W1 ceiling it feeds."""
    calls = []
    real = VerifyKey.verify
    monkeypatch.setattr(VerifyKey, "verify", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    verify = verification_loop(Keyring.generate(), RECORD, 20)
    for i in range(20):
        verify(i)
    assert len(calls) == 20


def test_group_commits_floor_appends_to_two_files_and_makes_both_durable_before_it_returns(tmp_path, monkeypatch):
    """Each pair loop is one job's outcome and the next job's claim: a line in each of two files, and an fdatasync
    of each (the one left to the helper thread included) before the loop returns, or it times less than it names."""
    synced = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:  # the helper thread's is slow: a loop that does not wait for it returns first
        if threading.current_thread() is not threading.main_thread():
            time.sleep(0.02)
        real(fd)
        synced.append(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    one_after_other, at_once, stop = pair_loops(tmp_path, b"x\n")
    try:
        for loop in (one_after_other, at_once):
            synced.clear()
            loop(0)
            assert len(synced) == 2 and len(set(synced)) == 2
    finally:
        stop()
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == [b"x\nx\n", b"x\nx\n"]


def test_the_w1_ceiling_with_group_commit_takes_the_cheaper_pair_and_is_absent_without_one():
    floor = {"sign": {"p50_us": 30.0}, "verify": {"p50_us": 60.0}, "fdatasync_append": {"p50_us": 150.0}}
    without = w1_ceiling(floor)
    assert without["crypto_us"] == 120.0 and without["crypto_and_fsync_jobs_per_s"] == 1e6 / 420.0
    assert "group_commit_jobs_per_s" not in without  # a floor from before the pair loops
    floor.update(fdatasync_pair_one_after_other={"p50_us": 260.0}, fdatasync_pair_at_once={"p50_us": 240.0})
    assert w1_ceiling(floor)["group_commit_jobs_per_s"] == 1e6 / (120.0 + 240.0)


def test_a_failing_fdatasync_in_group_commits_helper_is_raised_not_waited_for(tmp_path, monkeypatch):
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    _, at_once, stop = pair_loops(tmp_path, b"x\n")
    try:
        with pytest.raises(OSError, match="Input/output error"):
            at_once(0)
    finally:
        stop()


def test_the_work_after_a_wait_sleeps_before_each_run_and_times_only_the_work(monkeypatch):
    """``python_work_after_idle`` is the cost of running right after a wait: a sleep before every run, outside the
    timing (timed, it would add the gap itself; missing, the two figures would be the same work timed twice)."""
    slept = []
    monkeypatch.setattr(time, "sleep", lambda s: (slept.append(s), real_sleep(s)))
    result = python_work(RECORD, 20)
    assert slept == [IDLE_GAP_S] * 20  # only the timed runs after a wait sleep, each once
    assert result["python_work_after_idle"]["p50_us"] < IDLE_GAP_S * 1e6  # the gap is not in the figure
    assert result["python_work"]["p50_us"] > 0


real_sleep = time.sleep


def _report_with_floors(**floors: tuple[float, float]) -> str:
    """The suite's report of a run that measured only the floors: ``floors`` (name -> P50, P99 in us) beside the
    three the W1 ceiling needs."""
    given = {"sign": (30.0, 40.0), "verify": (60.0, 80.0), "fdatasync_append": (150.0, 200.0), **floors}
    return report.table({"systems": {"ours": {}},
                         "floor": {name: {"p50_us": p50, "p99_us": p99} for name, (p50, p99) in given.items()}})


def test_the_report_gives_what_a_wait_costs_as_a_ratio_of_the_same_work():
    text = _report_with_floors(python_work=(60.0, 90.0), python_work_after_idle=(150.0, 200.0))
    assert "60 us back to back, 150 us right after a 2 ms sleep (2.50x, P50)" in text


def test_the_round_trip_floor_waits_for_the_other_process_to_answer_each_request_and_ends_it(monkeypatch):
    """A round trip is a request written to another process and its answer read back: a loop that did not wait for
    the answer would time a pipe write (~3 us) instead of the hand-off; the process is ended and reaped after."""
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: (reads.append(fd), real_read(fd, n))[1])
    round_trip, stop = round_trip_loop()
    try:
        for i in range(5):
            round_trip(i)
    finally:
        status = stop()
    assert len(reads) == 5 and len(set(reads)) == 1  # one answer read per request, on the answer pipe
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0  # it ended when the requests did, and is reaped


def test_the_report_gives_what_a_hand_off_costs_back_to_back_and_after_a_wait():
    text = _report_with_floors(round_trip=(87.0, 130.0), round_trip_after_idle=(8.0, 98.0))
    assert "a request and its answer between two processes 87 us back to back, 8 us right after a 2 ms sleep" in text
    assert "round_trip 87 / 130" in text  # with every floor, P50 / P99


class _LibC:
    """What ``ctypes.CDLL(None)`` gives the batch loop: a ``syncfs`` that records the descriptor, or fails as ``errno``."""

    def __init__(self, errno: int = 0) -> None:
        self.errno, self.calls = errno, []

    def syncfs(self, fd: int) -> int:
        self.calls.append(fd)
        if self.errno:
            ctypes.set_errno(self.errno)
            return -1
        return 0


def test_a_batch_commits_floor_appends_to_each_file_then_syncs_their_file_system_once(tmp_path, monkeypatch):
    libc = _LibC()
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: libc)
    loop, close = syncfs_batch_loop(tmp_path, b"x\n")
    try:
        loop(0)
        loop(1)
    finally:
        close()
    assert len(libc.calls) == 2  # one syncfs a batch, never one a file
    files = sorted(tmp_path.iterdir())
    assert len(files) == SYNCFS_BATCH and all(f.read_bytes() == b"x\nx\n" for f in files)


def test_a_failing_syncfs_in_the_batch_floor_is_raised(tmp_path, monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: _LibC(errno=5))
    loop, close = syncfs_batch_loop(tmp_path, b"x\n")
    try:
        with pytest.raises(OSError, match="Input/output error"):
            loop(0)
    finally:
        close()


def test_the_w1_ceiling_with_a_batch_commit_shares_each_durable_write_among_the_batchs_jobs():
    floor = {"sign": {"p50_us": 30.0}, "verify": {"p50_us": 60.0}, "fdatasync_append": {"p50_us": 150.0}}
    assert "batch_commit_jobs_per_s" not in w1_ceiling(floor)  # a floor from before the batch loop
    floor["syncfs_batch"] = {"p50_us": 200.0}
    assert w1_ceiling(floor)["batch_commit_jobs_per_s"] == 1e6 / (120.0 + 2 * 200.0 / SYNCFS_BATCH)


def test_the_report_gives_the_batch_commits_ceiling_and_what_our_code_would_allow_with_it():
    given = {"sign": (30.0, 40.0), "verify": (60.0, 80.0), "fdatasync_append": (150.0, 200.0),
             "syncfs_batch": (200.0, 300.0)}
    text = report.table({"systems": {"ours": {"W1": {"jobs_per_s": 1000.0}}},
                         "floor": {name: {"p50_us": p50, "p99_us": p99} for name, (p50, p99) in given.items()}})
    assert f"with a batch commit (not built: {SYNCFS_BATCH} jobs' claims, then their outcomes" in text
    assert f"{1e6 / (120.0 + 50.0):,.0f} jobs/s" in text
    # 1,000 us a job, of which the floor 420 us: the same 580 us of our code beside the batch's floor of 170 us
    assert f"at most {1e6 / (580.0 + 170.0):,.0f} jobs/s" in text
