"""Worker processes SIGKILLed and restarted mid-run, a SIGSTOPped zombie, and clock jumps.

CI sizes: 4 workers x 150 jobs with a kill every 0.5 s; the report runs 8 x 1,000 with a
kill every second. ``test_worker_processes.py`` holds the single-scenario versions.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.reliability import concurrency


def test_workers_killed_every_half_second_lose_no_job_and_finish_none_twice(tmp_path: Path) -> None:
    result = concurrency.storm(tmp_path, workers=4, jobs=150, kill_every=0.5, timeout=90, job_seconds=0.03)
    assert result["kills"] >= 2
    assert (result["lost"], result["finished_twice"], result["late_writes_accepted"]) == (0, 0, 0), result
    assert result["verify_ok"]


def test_a_zombie_worker_continued_after_a_takeover_writes_nothing(tmp_path: Path) -> None:
    result = concurrency.zombie(tmp_path, rounds=1)
    assert result["completed"] == 1
    assert result["late_writes_accepted"] == 0 and result["finished_twice"] == 0
    assert result["verify_ok"]


@pytest.mark.parametrize("seed", range(4))
def test_clock_jumps_forwards_and_backwards_never_break_safety(tmp_path: Path, seed: int) -> None:
    result = concurrency.clock_jumps(tmp_path, seed=seed, steps=300)
    assert result["jumps"] > 10
    assert (result["lost"], result["finished_twice"], result["late_writes_accepted"]) == (0, 0, 0), result
    assert result["verify_ok"]
