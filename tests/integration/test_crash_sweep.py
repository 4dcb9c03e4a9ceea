"""A process SIGKILLed at every named crash point loses no acknowledged event and no job.

The sweep forks a real process per crash (see ``orchestrator/reliability/crash.py``): here at one sampled pass of
each point; the long version (every pass of every point) runs in ``scripts/reliability_report.py``.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from orchestrator.reliability import crash
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


def test_a_crash_during_the_recovery_from_a_crash_loses_nothing_either(tmp_path: Path) -> None:
    result = crash.double_sweep(tmp_path, runs=8, seed=1)
    assert result["failed_runs"] == []
    assert (result["acked_lost"], result["jobs_lost"], result["finished_twice"]) == (0, 0, 0)


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

    def dropping_early(self: queue.QueueIndex, job_id: str, old: Any, new: Any) -> Any:
        change = queue.IndexChange.of(old, new)
        if change.drop_ready is not None:
            self.drop_ready(change.drop_ready)
        return real(self, job_id, old, new)

    monkeypatch.setattr(queue.QueueIndex, "before_append", dropping_early)


@pytest.mark.slow  # 27 kills, 5-13 s
def test_killing_at_every_pass_catches_a_ready_entry_dropped_before_its_event(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only 2 of this point's 27 passes (the cancels of two queued jobs) show the fault: 1 seed never met it, 20 seeds
    only at the other point that shows it. Every pass of one point here (27 kills); the report's long run, all 20."""
    _drop_ready_before_the_event(monkeypatch)
    point = "store.append.before_write"
    result = crash.sweep(tmp_path, points=[point], every_pass=True)
    assert result["mode"] == "every_pass" and result["crashed"] == result["runs"] == result["passes"][point] > 2
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
    every = crash.sweep(tmp_path, every_pass=True)
    assert killed == [("a", n) for n in (1, 2, 3)] + [("b", n) for n in range(1, 28)]
    assert [r["nth"] for r in every["failed_runs"]] == [23, 26] and every["jobs_lost"] == 2
    assert rows({"crash": every})[0] == ("crash at every pass of every point (2 points, 30 passes): processes killed",
                                         "30/30", "all", True)
    assert not all(ok for *_, ok in rows({"crash": every}))
    killed.clear()
    sampled = crash.sweep(tmp_path, seeds=1)  # seed 0 picks pass 13 of b: the fault goes unseen
    assert killed == [("a", 1), ("b", 13)] and sampled["failed_runs"] == []
    assert rows({"crash": sampled})[0] == (
        "crash points x seeds, one sampled pass each (2 x 1): processes killed", "2/2", "all", True)
    assert all(ok for *_, ok in rows({"crash": sampled}))
    every["runs"] = every["crashed"] = 29  # a pass left out is not every pass
    assert not rows({"crash": every})[0][3]
