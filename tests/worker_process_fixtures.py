"""Fixtures of the tests that run real worker processes beside an in-process Orchestrator on the same store."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import REPO


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return {**cli_env, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "ORCH_HANDLERS": "worker_handlers"}


@pytest.fixture
def orch(env: dict[str, str], base: Path, monkeypatch: pytest.MonkeyPatch):
    """An in-process Orchestrator on the same store and key as the worker processes."""
    from orchestrator import Orchestrator

    monkeypatch.setenv("ORCH_SIGNING_KEY", env["ORCH_SIGNING_KEY"])
    return Orchestrator(base_path=base, project_id="proj")
