"""The command line's ways in: the ``orchestrator`` console script, ``python3 -m orchestrator``, ``scripts/<name>.py``;
and the tools' (``python -m bench``, ``scripts/reliability_report.py``, ``scripts/bench_event_costs.py``): ``tool_started``
then ``run_tool``.

Each handles the stop signals first (``command_stop.COMMAND_STOP.early``), then imports the command line (``cli``),
which with the package's own import was 88-237 ms of a command's start in which a signal met Python's defaults.
Nothing here but that order: this module imports only what the stop handling needs (the package imports nothing
until a name of it is used, ``orchestrator/__init__.py``).
"""
from __future__ import annotations

import sys
from typing import Callable

from orchestrator.command_stop import COMMAND_STOP
from orchestrator.errors import CommandInterrupted, Interrupted


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


def tool_started() -> None:
    """A tool's first step, before its imports (``python -m bench``, ``scripts/reliability_report.py``,
    ``scripts/bench_event_costs.py``): a stop from here on is held until its run begins (``run_tool``, or the
    ``COMMAND_STOP.handled`` of its own), then raised, as a command's. Until 2026-12-07 their 0.2-0.8 s of start met
    Python's defaults: SIGTERM killed the process by the signal, Ctrl-C printed a traceback."""
    COMMAND_STOP.early()


def run_tool(main: Callable[[], int | None]) -> int | None:
    """A tool's ``main()`` with the stop signals handled (after ``tool_started``): the first one raises where the run
    is, its ``finally`` and ``with`` blocks run (a temporary folder removed), and it ends with one line on stderr,
    ``error[INTERRUPTED]``, and exit 128 + the signal (130, 143), no traceback. With ``--json``, stdout also holds
    the command line's ``INTERRUPTED`` object, as ``bench_terminal_latency``'s: a caller parsing it finds one."""
    try:
        with COMMAND_STOP.handled():
            return main()
    except Interrupted as stop:
        message = f"{stop.message} before the run finished; nothing more was measured"
        print(f"error[INTERRUPTED]: {message}", file=sys.stderr)
        import json  # here, not at the top: every command imports this module before its stop handling

        from orchestrator.json_usage import json_asked

        if json_asked(sys.argv[1:]):
            print(json.dumps(CommandInterrupted(message, stop.signum).to_dict()), flush=True)
        return stop.exit_code
