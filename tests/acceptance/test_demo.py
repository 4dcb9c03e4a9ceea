"""The README's first Quick start command: ``python -m orchestrator.demo`` runs a real flow."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path




def test_the_demo_runs_a_real_flow_and_says_what_to_do_next(cli_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator.demo", str(tmp_path / "demo-base")], env=cli_env,
                          cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    states = dict(re.findall(r"^  (command|greet|ask|audit|flaky|broken)\s+\S+\s+(\w+)", out, re.M))
    assert states == {"command": "succeeded", "greet": "succeeded", "ask": "waiting_human",
                      "audit": "awaiting_audit", "flaky": "succeeded", "broken": "failed"}
    assert "retry" in out and "UPSTREAM_503" in out and "attempt=2" in out
    assert "verify: OK" in out and "CONTEXT_SIGNATURE_INVALID" in out
    for command in ("scripts/control.py resume", "scripts/control.py approve", "scripts/status.py",
                    "scripts/audit_timeline.py --job-id"):
        assert command in out
    assert (tmp_path / "demo-base" / "demo" / ".orchestrator" / "artifacts").is_dir()
