"""A process SIGKILLed at every named crash point loses no acknowledged event and no job.

The sweep forks a real process per crash (see ``orchestrator/reliability/crash.py``): here at one sampled pass of
each point; the long version (every pass of every point) runs in ``scripts/reliability_report.py``.
"""
from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.reliability import crash, double_crash
from orchestrator.reliability.report import rows

# the write paths issue 6 names; the sweep must reach every one of them
REQUIRED_POINTS = {
    "store.append.before_write", "store.append.mid_write", "store.append.after_write", "store.append.after_fsync",
    "store.append.after_repair", "store.append.before_aux", "append.after_event", "append.after_head",
    "append.after_audit_entry", "audit.record.after_entry", "audit.heal.before_entry", "worker.before_claim",
    "worker.after_claim", "worker.after_start",
    "worker.before_outcome", "worker.after_outcome", "lease.after_write", "queue.after_put_ready",
    "queue.after_append", "queue.rebuild.each_job",
}


def test_a_crash_at_every_point_loses_no_acknowledged_event_and_no_job(tmp_path: Path) -> None:
    result = crash.sweep(tmp_path, seeds=1)
    assert REQUIRED_POINTS <= set(result["passes"]), REQUIRED_POINTS - set(result["passes"])
    assert result["crashed"] == result["runs"] >= len(REQUIRED_POINTS)
    assert result["failed_runs"] == []
    assert (result["acked_lost"], result["jobs_lost"], result["finished_twice"]) == (0, 0, 0)


@pytest.mark.parametrize("point, nth", [("store.append.mid_write", 3), ("worker.after_start", 2),
                                        ("append.after_event", 7)])
def test_a_crash_at_a_later_pass_recovers_too(tmp_path: Path, point: str, nth: int) -> None:
    run = crash.one_crash(tmp_path, point, nth, "later")
    assert run["ok"], run


def test_a_crash_during_the_recovery_from_a_crash_loses_nothing_either_and_the_same_seed_kills_the_same_pairs(
        tmp_path: Path) -> None:
    """Until 2026-12-07 the recovery was armed at a random point and pass (1 to 4) that most recoveries never reach
    (9 of 30 killed), and the pairs followed the calibration's timing; now at a point and pass its own count found."""
    result = double_crash.sweep(tmp_path / "first", pairs=4, seed=1)
    assert result["runs"] == result["crashed"] == result["recoveries_killed"] == 4, result["failed_runs"]
    assert result["failed_runs"] == []
    assert (result["acked_lost"], result["jobs_lost"], result["finished_twice"]) == (0, 0, 0)
    assert double_crash.sweep(tmp_path / "again", pairs=4, seed=1)["pairs_killed"] == result["pairs_killed"]


def test_the_sweep_catches_a_writer_that_appends_after_a_torn_tail(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # Remove the protection (the repair of a torn tail before appending): the sweep must notice.
    import orchestrator.store.jsonl as jsonl

    real = jsonl._complete_end

    def no_repair(fd: int, size: int) -> tuple[int, bytes]:
        _end, last = real(fd, size)
        return size, last

    monkeypatch.setattr(jsonl, "_complete_end", no_repair)
    run = crash.one_crash(tmp_path, "store.append.mid_write", 8, "unprotected")
    assert not run["ok"] and run["verify_problems"] > 0


def test_the_two_audit_entry_points_each_fire_only_where_their_name_says(orch: Any) -> None:
    """Until 2026-12-07 both were ``audit.after_entry``: after an audited append's entry (``Orchestrator.append``) and
    after an entry on its own (``audit.record``), so arming it killed at whichever came first."""
    from orchestrator import audit as audit_log
    from orchestrator import faults

    class Fired(Exception):
        pass

    def fire() -> None:
        raise Fired

    jobs = [orch.submit("t.any", {}) for _ in range(2)]
    try:
        faults.arm("append.after_audit_entry", fire)
        audit_log.record(orch, job_id=jobs[0], action="note", actor="t", note="an entry on its own")
        with pytest.raises(Fired):
            orch.cancel(jobs[0], "an audited append")
        faults.arm("audit.record.after_entry", fire)
        orch.cancel(jobs[1], "an audited append")
        with pytest.raises(Fired):
            audit_log.record(orch, job_id=jobs[1], action="note", actor="t", note="an entry on its own")
    finally:
        faults.disarm_all()


def _drop_ready_before_the_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken code of the 2026-12-07 crash hunt: the ready entry a job leaves dropped before its event is written
    (not after it, ``QueueIndex.after_append``), so a crash between the two leaves a queued job no worker finds."""
    from orchestrator import queue

    real = queue.QueueIndex.before_append

    def dropping_early(self: queue.QueueIndex, job_id: str, old: Any, new: Any, *keys: Any) -> Any:
        change = queue.IndexChange.of(old, new)
        if change.drop_ready is not None:
            self.drop_ready(change.drop_ready)
        return real(self, job_id, old, new, *keys)  # the signer and signers, as the append gives them

    monkeypatch.setattr(queue.QueueIndex, "before_append", dropping_early)


@pytest.mark.slow  # 27 kills, 5-13 s
def test_killing_at_every_pass_catches_a_ready_entry_dropped_before_its_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only 2 of this point's 27 passes (the cancels of two queued jobs) show the fault: 1 seed never met it, 20 seeds
    only at the other point that shows it. Every pass of one point here (27 kills); the report's long run, all 20."""
    _drop_ready_before_the_event(monkeypatch)
    point = "store.append.before_write"
    result = crash.sweep(tmp_path, points=[point], mode=crash.EVERY_PASS)
    assert result["mode"] == "every-pass" and result["crashed"] == result["runs"] == result["passes"][point] > 2
    failed = result["failed_runs"]
    assert 0 < len(failed) < result["runs"] and all(r["jobs_lost"] for r in failed), failed
    table = {figure.strip(): ok for figure, _, _, ok in rows({"crash": result})}
    assert not table["jobs lost / finished twice"] and not table["runs breaking any invariant"], table


def test_every_pass_mode_kills_once_at_each_pass_where_a_sampled_pass_misses_the_one_that_breaks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A double for the forked run (``one_crash``): a fault that breaks only passes 23 and 26 of point ``b``."""
    monkeypatch.setattr(crash, "calibrate", lambda root: Counter({"a": 3, "b": 27}))
    killed: list[tuple[str, int]] = []

    def one_crash(root: Path, point: str, nth: int, name: str) -> dict[str, Any]:
        killed.append((point, nth))
        broken = (point, nth) in {("b", 23), ("b", 26)}
        return {"point": point, "nth": nth, "crashed": True, "ok": not broken, "acked_lost": 0,
                "jobs_lost": int(broken), "finished_twice": 0, "verify_problems": 0}

    monkeypatch.setattr(crash, "one_crash", one_crash)
    every = crash.sweep(tmp_path, mode="every-pass")
    assert every["mode"] == "every-pass" and "seeds" not in every  # the command line's spelling; no seed picks a pass
    assert killed == [("a", n) for n in (1, 2, 3)] + [("b", n) for n in range(1, 28)]
    assert [r["nth"] for r in every["failed_runs"]] == [23, 26] and every["jobs_lost"] == 2
    assert rows({"crash": every})[0] == ("crash at every pass of every point (2 points, 30 passes): processes killed",
                                         "30/30", "all", True)
    assert not all(ok for *_, ok in rows({"crash": every}))
    killed.clear()
    sampled = crash.sweep(tmp_path, seeds=1)  # seed 0 picks pass 13 of b: the fault goes unseen
    assert killed == [("a", 1), ("b", 13)] and sampled["failed_runs"] == [] and sampled["seeds"] == [0]
    assert rows({"crash": sampled})[0] == (
        "crash at one sampled pass of every point per seed (2 points x 1, seed 0): processes killed", "2/2", "all",
        True)
    assert all(ok for *_, ok in rows({"crash": sampled}))
    every["runs"] = every["crashed"] = 29  # a pass left out is not every pass
    assert not rows({"crash": every})[0][3]


def test_counting_passes_counts_the_runs_own_and_not_a_forked_childs_or_an_earlier_counts(tmp_path: Path) -> None:
    """The in-process sweeps count as the command-line sweep does (``counting.count_into``): until 2026-12-07 they
    kept a second count of their own. A pass in a process the run forks (a handler's) is not one a kill reaches."""
    import os

    from orchestrator import faults

    def run() -> None:
        faults.point("a")
        faults.point("b")
        faults.point("a")
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the grandchild
            faults.point("a")
            os._exit(0)
        os.waitpid(child, 0)

    counts_file = tmp_path / "counts"
    assert crash.counted(run, counts_file) == Counter({"a": 2, "b": 1})
    assert crash.counted(run, counts_file) == Counter({"a": 2, "b": 1})  # the same file again: counted afresh


def _slow_lease_writes(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """A loaded host, as the sweep's workload meets it: each heartbeat's lease write late by ``seconds``."""
    from orchestrator import heartbeat

    real = heartbeat.write_lease

    def late(*args: Any) -> None:
        time.sleep(seconds)
        real(*args)

    monkeypatch.setattr(heartbeat, "write_lease", late)


def test_the_workloads_long_run_renews_its_lease_as_often_as_the_sweep_counts_however_late_its_heartbeats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until 2026-12-07 the run slept 0.25 s under a 0.3 s lease: a heartbeat made late by a loaded host left one
    renewal where the calibration had counted two, and every-pass mode's kill at the second never came."""
    _slow_lease_writes(monkeypatch, 0.2)
    assert crash.calibrate(tmp_path / "slow")["lease.after_write"] == crash.LEASE_BEATS == 2
    result = crash.sweep(tmp_path / "sweep", mode=crash.EVERY_PASS, points=["lease.after_write"])
    assert result["crashed"] == result["runs"] == 2 and result["failed_runs"] == [], result["failed_runs"]


def test_a_sampled_sweep_reports_the_seeds_it_ran_and_its_row_holds_it_to_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until 2026-12-07 the row made its seed count up (runs / points) when the seeds were missing, and said nothing of
    which seeds ran: a sweep of seeds 5 and 6 read as one of seeds 0 and 1."""
    monkeypatch.setattr(crash, "calibrate", lambda root: Counter({"a": 3, "b": 27}))
    monkeypatch.setattr(crash, "one_crash", lambda root, point, nth, name: {
        "point": point, "nth": nth, "crashed": True, "ok": True, "acked_lost": 0, "jobs_lost": 0, "finished_twice": 0,
        "verify_problems": 0})
    result = crash.sweep(tmp_path, seeds=2, first_seed=5)
    assert result["mode"] == "sampled" and result["seeds"] == [5, 6] and result["runs"] == 4
    assert rows({"crash": result})[0] == (
        "crash at one sampled pass of every point per seed (2 points x 2, seeds 5-6): processes killed", "4/4", "all",
        True)
    for broken in ({k: v for k, v in result.items() if k != "seeds"}, {**result, "runs": 3, "crashed": 3},
                   {**result, "mode": "every_pass"}):
        assert not rows({"crash": broken})[0][3], broken
