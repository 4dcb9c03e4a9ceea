"""Helpers shared by tests (importable as ``helpers`` thanks to pytest's pythonpath)."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
WAIT = 20.0  # seconds a test waits for another process before failing


def run_script(name: str, *args: str, env: dict[str, str], check: bool = False, input: str | None = None):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], env=env,
                          capture_output=True, text=True, input=input, timeout=60, cwd=str(REPO))
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} {args} exited {proc.returncode}: {proc.stdout}\n{proc.stderr}")
    return proc


def run_module(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python3 -m orchestrator ARGS``: every command, those without a script too."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))


def wait_until(predicate: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
