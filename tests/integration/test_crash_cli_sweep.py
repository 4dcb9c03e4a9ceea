"""An operator's command on the command line, or a worker stopping on SIGTERM, SIGKILLed at a named crash point.

``orchestrator/reliability/crash_cli.py``: the real ``python -m orchestrator control approve|revise|resume|cancel``
and ``worker`` processes, armed with ``ORCH_CRASH_AT``; here at one sampled pass of the four points of
``crash_cli.QUICK_POINTS`` each passes, the long version (every pass of every point) in
``scripts/reliability_report.py``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.reliability import crash, crash_cli
from orchestrator.reliability.report import rows

# what each command must be killed at in CI (crash_cli.QUICK_POINTS): a torn write, between its event and its audit
# entry, after the entry; and the stopped worker's hand-back, which it writes after the signal
ACTION_POINTS = {"store.append.mid_write", "append.after_event", "append.after_audit_entry"}


@pytest.mark.slow  # 16 kills, each a command or a worker process, the command run again and a recovery: 20-40 s
def test_a_killed_cli_action_or_stopping_worker_loses_nothing_and_the_action_run_again_is_applied_once(
        tmp_path: Path) -> None:
    result = crash_cli.sweep(tmp_path, points=crash_cli.QUICK_POINTS)
    assert list(result["passes"]) == list(crash_cli.COMMANDS) == ["approve", "revise", "resume", "cancel",
                                                                   "worker-sigterm"]
    for command, passes in result["passes"].items():
        assert set(passes) == ACTION_POINTS | ({"worker.before_outcome"} if command == "worker-sigterm" else set())
    assert result["crashed"] == result["runs"] == 16
    assert result["failed_runs"] == []
    assert result["again_ok"] == result["again_runs"] == 12  # the four actions', each at its three points
    assert (result["acked_lost"], result["jobs_lost"], result["finished_twice"]) == (0, 0, 0)
    assert all(ok for *_, ok in rows({"crash_cli": result}))


def test_the_cli_rows_fail_when_an_action_run_again_did_not_converge() -> None:
    cli = {"mode": "sampled", "seeds": [0], "commands": list(crash_cli.COMMANDS), "points": 5,
           "passes": {c: {"append.after_event": 1} for c in crash_cli.COMMANDS}, "runs": 5, "crashed": 5,
           "acked_lost": 0, "jobs_lost": 0, "finished_twice": 0, "verify_problems": 0, "failed_runs": [],
           "again_runs": 4, "again_ok": 4}
    table = rows({"crash_cli": cli})
    assert table[0] == ("crash the CLI (control approve, revise, resume, cancel; a worker stopped by SIGTERM) at one "
                        "sampled pass of every point per seed (5 points x 1, seed 0): processes killed", "5/5", "all",
                        True)
    assert all(ok for *_, ok in table)
    again = [ok for figure, _, _, ok in rows({"crash_cli": {**cli, "again_ok": 3}}) if "run again" in figure]
    assert again == [False]


def test_a_sweeps_points_count_each_point_of_each_command_as_the_crash_sweeps_count_each_point() -> None:
    """Until 2026-12-07 ``sweep_figures`` counted the command line's commands as its points, and ``crash_cli.sweep``
    wrote its own count over them."""
    by_command = {"control-approve": {"append.after_event": 1, "append.after_head": 1}, "worker": {"a": 2}}
    assert crash.sweep_figures(crash.EVERY_PASS, [], by_command)["points"] == 3
    assert crash.sweep_figures(crash.SAMPLED, [0], {"a": 3, "b": 27})["points"] == 2
