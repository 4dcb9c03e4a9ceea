"""Torn tails in job files *and* the audit log, at (every n-th) byte offset, then repaired by the next append.

``test_torn_tail_and_tamper.py`` covers a job file read at every offset; this adds the audit
log, the repair at each offset, and more garbage tails. The report runs every offset.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.reliability import torn


def test_a_torn_tail_at_any_offset_of_a_job_file_or_the_audit_log_is_ignored_then_repaired(tmp_path: Path) -> None:
    result = torn.campaign(tmp_path, step=5)
    assert result["failures"] == []
    assert result["recovered"] == result["offsets"] > 100
    assert result["garbage_recovered"] == result["garbage"] >= 10
    assert result["complete_garbage_line_reported"]
