"""``scripts/reliability_report.py``: the figure table, ``--json``, progress on stderr, exit 0 when all met."""
from __future__ import annotations

import json
import subprocess
import sys

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
