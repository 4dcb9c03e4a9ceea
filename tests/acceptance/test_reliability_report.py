"""``scripts/reliability_report.py``: the figure table, ``--json``, progress on stderr, exit 0 when all met."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import REPO


def test_the_report_prints_the_figures_as_json_and_progress_on_stderr() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reliability_report.py"), "--quick", "--json",
                           "--only", "fsync", "--only", "torn"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["all_met"] and data["fsync"]["acknowledged_anyway"] == 0
    assert data["torn"]["recovered"] == data["torn"]["offsets"]
    assert "[reliability]" in proc.stderr


def test_the_report_table_names_every_figure() -> None:
    from orchestrator.reliability.report import rows

    fake = {"fsync": {"acknowledged_anyway": 1, "lines_kept": 0, "verify_failures_after": 0}}
    assert rows(fake) == [("failed fsync acknowledged anyway / lines left", "1 / 0", "0 / 0", False)]


def test_a_part_the_report_does_not_have_is_a_usage_error_naming_the_parts() -> None:
    """``--only tampr`` ran nothing and printed an empty table, "all met" and exit 0."""
    for args in (["--only", "tampr"], ["--only", "fsync", "--only", "crash,tamper"]):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "reliability_report.py"), "--quick", *args],
                              capture_output=True, text=True, timeout=120)
        assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
        assert f"invalid choice: {args[-1]!r}" in proc.stderr and "'double_crash'" in proc.stderr


# the figures of the quick run of 2026-12-07, each with the verify_ok its campaign computes
STORM = {"workers": 4, "jobs": 150, "kills": 3, "lost": 0, "finished_twice": 0, "reruns": 1, "verify_ok": True}
DISK = {"mode": "tmpfs", "acked": 40, "acked_missing": 0, "error_code": "STORAGE_ERROR", "cli_exit": 10,
        "worker_exit_while_full": 0, "worker_clear": True, "resumed": True, "unfinished": 0, "verify_ok": True}
CLOCK = {"seeds": 3, "jumps": 120, "lost": 0, "finished_twice": 0, "late_writes_accepted": 0, "verify_ok": True}
ZOMBIE = {"rounds": 1, "completed": 1, "late_writes_accepted": 0, "finished_twice": 0, "verify_ok": True}


def test_a_project_failing_verify_fails_the_storm_disk_clock_and_zombie_rows_saying_so() -> None:
    """The storm's and the full disk's rows were met whatever ``verify`` said (until 2026-12-07); the clock's failed
    with every figure shown as promised; the zombie's had no ``verify`` (until the twenty-eighth session)."""
    from orchestrator.reliability.report import rows

    good = {"storm": STORM, "disk": DISK, "clock": CLOCK, "zombie": ZOMBIE}
    assert all(ok for *_, ok in rows(good))
    for part in good:
        broken = {**good, part: {**good[part], "verify_ok": False}}
        failed = [(figure, measured) for figure, measured, _, ok in rows(broken) if not ok]
        assert len(failed) == 1 and failed[0][1].endswith("; verify failed"), (part, failed)


def test_a_campaign_that_raises_is_a_failed_row_naming_the_exception_and_the_other_parts_still_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until 2026-12-07 a part broken by the code it measures ended the report in a traceback, no table."""
    from orchestrator.reliability import disk, report

    def broken(root: Path) -> dict[str, Any]:
        raise RuntimeError("InvalidTransitionError: job_claimed needs a job that is queued")

    monkeypatch.setattr(disk, "failed_fsync", broken)
    monkeypatch.setattr(disk, "full_disk", lambda root: dict(DISK))
    result = report.run_all(tmp_path, only={"fsync", "disk"})
    assert result["disk"]["verify_ok"] and "elapsed_s" in result["fsync"]
    assert report.rows(result)[0] == ("fsync: the campaign itself raised",
                                      "RuntimeError: InvalidTransitionError: job_claimed needs a job that is queued",
                                      "its figures", False)
    assert all(ok for *_, ok in report.rows(result)[1:])


def test_the_crash_option_chooses_the_sweeps_mode_whatever_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.reliability import crash, report

    modes: list[str] = []
    monkeypatch.setattr(crash, "sweep", lambda root, mode, seeds: modes.append(mode) or {"mode": mode})
    monkeypatch.setattr(report, "rows", lambda result: [])
    for argv in (["--quick"], [], ["--quick", "--crash", "every-pass"], ["--crash", "sampled"]):
        report.main([*argv, "--only", "crash"])
    assert modes == ["sampled", "every-pass", "every-pass", "sampled"]  # as the command line spells them


def test_the_pg_url_option_has_the_command_line_sweep_kill_db_migrate_on_that_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.reliability import crash_cli, report

    urls: list[str | None] = []
    monkeypatch.setattr(crash_cli, "sweep", lambda root, mode, points, pg_url: urls.append(pg_url) or {})
    monkeypatch.setattr(report, "rows", lambda result: [])
    for argv in ([], ["--pg-url", "postgresql://db.example/orch"]):
        report.main(["--quick", *argv, "--only", "crash_cli"])
    assert urls == [None, "postgresql://db.example/orch"]


def test_the_fsync_row_says_why_it_failed_when_its_two_figures_are_as_promised() -> None:
    from orchestrator.reliability.report import rows

    fsync = {"trials": 20, "acknowledged_anyway": 0, "lines_kept": 0, "verify_failures_after": 1, "never_synced": 0,
             "refused": 2, "first_refusal": "INVALID_TRANSITION: job_claimed needs a job that is queued"}
    assert rows({"fsync": fsync}) == [(
        "failed fsync acknowledged anyway / lines left", "0 / 0; 1 of 20 trials left a project failing verify; 2 of 20 "
        "trials refused otherwise (INVALID_TRANSITION: job_claimed needs a job that is queued)", "0 / 0", False)]


def test_the_zombie_row_fails_when_the_zombie_finished_its_job_a_second_time() -> None:
    from orchestrator.reliability.report import rows

    assert rows({"zombie": ZOMBIE}) == [(
        "zombie (SIGSTOP past lease, 1/1 rounds): late writes accepted / finished twice", "0 / 0", "0 / 0", True)]
    assert not rows({"zombie": {**ZOMBIE, "finished_twice": 1}})[0][3]


DOUBLE = {"pairs": "all", "seed": 0, "first_points": 21, "runs": 250, "crashed": 250, "recoveries_killed": 250,
          "acked_lost": 0, "jobs_lost": 0, "finished_twice": 0, "verify_problems": 0, "failed_runs": []}


def test_the_double_crash_rows_say_how_the_pairs_were_chosen_and_are_met_only_when_both_crashes_came() -> None:
    """Until 2026-12-07 the row said "200 random pairs" of crashes where most recoveries were never killed."""
    from orchestrator.reliability.report import rows

    assert rows({"double_crash": DOUBLE})[0] == (
        "crash, then crash the recovery at each point it passes (21 points x the recovery's: 250 pairs, passes picked "
        "by seed 0): workloads / recoveries killed", "250 / 250 of 250", "all", True)
    assert all(ok for *_, ok in rows({"double_crash": DOUBLE}))
    sample = {**DOUBLE, "pairs": 8, "runs": 8, "crashed": 8, "recoveries_killed": 8}
    assert rows({"double_crash": sample})[0][:2] == (
        "crash, then crash the recovery (8 pairs sampled by seed 0): workloads / recoveries killed", "8 / 8 of 8")
    assert not rows({"double_crash": {**DOUBLE, "recoveries_killed": 249}})[0][3]
