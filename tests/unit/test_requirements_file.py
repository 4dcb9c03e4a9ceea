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


def test_the_dependencies_a_python_is_checked_for_are_the_runtime_dependencies_of_pyproject() -> None:
    """``orchestrator.installed`` names what a Python without them lacks (``DEPENDENCIES_MISSING``)."""
    import re

    from orchestrator.installed import RUNTIME_DEPENDENCIES

    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert sorted(RUNTIME_DEPENDENCIES.values()) == sorted(re.match(r"[\w.-]+", dep).group() for dep in declared)
