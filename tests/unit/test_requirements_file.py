"""``requirements.txt`` (the runbook's ``pip install -r requirements.txt``) installs what the package
needs to run: the same runtime dependencies as ``pyproject.toml``, so that install cannot give a tool
whose every command fails to import."""
from __future__ import annotations

import pytest

from helpers import REPO

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def test_requirements_txt_lists_exactly_the_runtime_dependencies_of_pyproject() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text(encoding="utf-8").splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(listed) == sorted(declared)
