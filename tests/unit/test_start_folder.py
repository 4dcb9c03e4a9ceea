"""Which command lines are ``python3 -m orchestrator``: only those have the current folder taken off ``sys.path``
by the package when others could write it (another program run with ``-m`` that imports the package keeps its
path as Python made it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.start_folder import module_run


@pytest.mark.parametrize("args, module", [
    (["-m", "orchestrator", "worker"], "orchestrator"),
    (["-morchestrator"], "orchestrator"),
    (["-OBm", "orchestrator.cli"], "orchestrator.cli"),
    (["-W", "error", "-X", "dev", "-m", "orchestrator"], "orchestrator"),
    (["-Werror", "-Xdev", "--check-hash-based-pycs", "never", "-m", "orchestrator"], "orchestrator"),
    (["-m", "myapp", "-m", "orchestrator"], "myapp"),
    (["-c", "import orchestrator", "-m", "orchestrator"], None),
    (["-Oc", "import orchestrator"], None),
    (["script.py", "-m", "orchestrator"], None),
    (["-"], None),
    ([], None),
])
def test_the_module_a_command_line_runs_is_read_as_python_reads_it(args: list[str], module: str | None) -> None:
    assert module_run(args) == module


def test_python_m_orchestrator_worker_in_a_shared_folder_checks_it_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Until 2026-12-07 the package checked the start folder as ``python3 -m`` put it on the path, and the ``worker``
    command, finding it off the path, checked it again (a stat of it and of each folder above)."""
    from orchestrator import handlers, key_paths, start_folder

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.chdir(shared)
    monkeypatch.setattr(sys, "argv", ["-m", "worker"])  # as ``-m`` leaves it while the package is imported
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "orchestrator", "worker"])
    monkeypatch.setattr(sys, "path", [str(shared), *sys.path])
    monkeypatch.setattr(start_folder, "_CHECKED", None)
    monkeypatch.setattr(handlers, "_START_FOLDER_REFUSED", None)
    checks: list[object] = []
    real = key_paths.only_its_owner_changes
    monkeypatch.setattr(key_paths, "only_its_owner_changes", lambda *args: checks.append(args) or real(*args))

    start_folder.leave_out_if_shared()
    assert handlers.look_in_start_folder() is None and str(shared) not in sys.path
    assert len(checks) == 1
    assert handlers._START_FOLDER_REFUSED is not None  # noqa: SLF001 - a module not found says why
    assert "sticky" in handlers._START_FOLDER_REFUSED[1]  # noqa: SLF001
