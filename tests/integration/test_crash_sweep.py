"""A process SIGKILLed at every named crash point loses no acknowledged event and no job.

The sweep forks a real process per crash (see ``orchestrator/reliability/crash.py``); the
long version (20 seeds per point) runs in ``scripts/reliability_report.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.reliability import crash

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
