"""Which command lines are ``python3 -m orchestrator``: only those have the current folder taken off ``sys.path``
by the package when others could write it (another program run with ``-m`` that imports the package keeps its
path as Python made it)."""
from __future__ import annotations

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
