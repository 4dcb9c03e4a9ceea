"""Helpers shared by tests (importable as ``helpers`` thanks to pytest's pythonpath)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, env: dict[str, str], check: bool = False, input: str | None = None):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], env=env,
                          capture_output=True, text=True, input=input, timeout=60, cwd=str(REPO))
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {args} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    return proc
