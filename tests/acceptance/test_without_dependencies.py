"""A Python without the orchestrator's dependencies (the system's ``python3`` after the README's Quick start, which
installs them into ``.venv`` without activating it) runs no command: every ``scripts/*.py``, ``python3 -m
orchestrator`` and ``python3 test_imports.py`` end with one line on stderr saying to install as the Quick start says
and to run them with ``.venv/bin/python``, exit 1, never a traceback.

``python -S`` stands for that Python here: it does not read the site-packages, where the dependencies are."""
from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO

SCRIPTS = sorted(path.name for path in (REPO / "scripts").glob("*.py"))


def without_dependencies(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", *args], capture_output=True, text=True, timeout=60, cwd=str(REPO))


def says_to_install_in_one_line(done: subprocess.CompletedProcess) -> str:
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    line = done.stderr.strip()
    assert line.startswith("error[DEPENDENCIES_MISSING]: "), line
    assert "pynacl" in line and "Quick start" in line and ".venv/bin/python" in line, line
    return line


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_run_by_a_python_without_the_dependencies_says_to_install_them_in_one_line(script: str) -> None:
    says_to_install_in_one_line(without_dependencies(str(REPO / "scripts" / script), "--json"))


@pytest.mark.parametrize("module", ["orchestrator", "orchestrator.demo"])
def test_python_m_orchestrator_without_the_dependencies_says_to_install_them_in_one_line(module: str) -> None:
    says_to_install_in_one_line(without_dependencies("-m", module, "-h"))


def test_the_import_check_without_the_dependencies_says_to_install_them_in_one_line() -> None:
    says_to_install_in_one_line(without_dependencies(str(REPO / "test_imports.py")))


def test_a_program_that_imports_the_package_without_its_dependencies_gets_an_import_error_it_can_catch() -> None:
    """The package raises an ``ImportError`` (no ``SystemExit``): the one line is how an uncaught one is printed."""
    code = ("try:\n    import orchestrator\nexcept ImportError as exc:\n"
            "    print(type(exc).__name__, sorted(exc.missing))\n")
    done = without_dependencies("-c", code)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.startswith("DependenciesMissing [") and "'pynacl'" in done.stdout
