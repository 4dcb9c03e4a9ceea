"""The command line's ways in: the ``orchestrator`` console script, ``python3 -m orchestrator``, ``scripts/<name>.py``.

Each handles the stop signals first (``command_stop.COMMAND_STOP.early``), then imports the command line (``cli``),
which with the package's own import was 88-237 ms of a command's start in which a signal met Python's defaults.
Nothing here but that order: this module imports only what the stop handling needs (the package imports nothing
until a name of it is used, ``orchestrator/__init__.py``).
"""
from __future__ import annotations

from orchestrator.command_stop import COMMAND_STOP


def main(argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """The console script and ``python3 -m orchestrator``: ``cli.main``."""
    COMMAND_STOP.early()
    from orchestrator import cli

    cli.main(argv, prog_name)


def run_script(command: str) -> None:
    """``scripts/<name>.py``: ``cli.run_script``."""
    COMMAND_STOP.early()
    from orchestrator import cli

    cli.run_script(command)
