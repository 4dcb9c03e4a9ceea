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
    is, its ``finally`` and ``with`` blocks run (a temporary folder removed), and it ends with exit 128 + the signal
    (130, 143), no traceback, saying so as a command does: with ``--json`` the ``INTERRUPTED`` object alone on stdout,
    else one line on stderr, ``error[INTERRUPTED]``. A stop that came once the tool had printed its result
    (``json_usage.print_result``) leaves that result stdout's one object and is said on stderr (the object, with
    ``--json``), as a command whose stdout carries data (``export -o -``) says its errors."""
    from orchestrator.json_usage import RESULT, json_asked  # the tool's own import: nothing more to load

    RESULT.printed = False
    try:
        with COMMAND_STOP.handled():
            return main()
    except Interrupted as stop:
        import json  # here, not at the top: every command imports this module before its stop handling

        printed = RESULT.printed
        message = stop.message + (" after the run finished and printed its result" if printed
                                  else " before the run finished; nothing more was measured")
        if json_asked(sys.argv[1:]):
            print(json.dumps(CommandInterrupted(message, stop.signum).to_dict()),
                  file=sys.stderr if printed else sys.stdout, flush=True)
        else:
            print(f"error[INTERRUPTED]: {message}", file=sys.stderr)
        return stop.exit_code
