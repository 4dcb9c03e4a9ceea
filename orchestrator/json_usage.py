"""argparse for the tools whose ``--json`` flag means "print JSON" (``scripts/bench_event_costs.py``,
``scripts/reliability_report.py``): a usage error given with ``--json`` is what every command prints then, one
``{"error": "USAGE_ERROR", "message": ...}`` object on stdout, exit 2 (README, "Commands"), not argparse's text on
stderr. Without ``--json``, argparse's usage and message on stderr as before, exit 2 either way. A stop (``entry.run_tool``) asks
``json_asked`` too, and ``RESULT.printed``: a tool prints its result with ``print_result``, a command with
``cli_common.Output`` (both through ``printing_result``), so that a stop after it is not a second object on stdout.

Not for the benchmarks whose ``--json FILE`` names a file to write (``bench.cli_args.add_scratch_and_json``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any, Iterator, NoReturn, Sequence

from orchestrator.command_stop import COMMAND_STOP
from orchestrator.errors import UsageError
from orchestrator.security import sanitize_text


def json_asked(args: Sequence[str]) -> bool:
    """Whether a tool's arguments hold ``--json`` (before a ``--``): its errors, a usage error or a stop
    (``entry.run_tool``), are then one JSON object on stdout, as a command's."""
    given = list(args)
    return "--json" in (given[:given.index("--")] if "--" in given else given)


class Result:
    """Whether the tool or the command printed its result (``printing_result``): its stdout's one object under
    ``--json``. Set False as each begins (``entry.run_tool``, ``cli._run``)."""

    printed = False


RESULT = Result()


@contextlib.contextmanager
def printing_result() -> Iterator[None]:
    """A result being printed (a tool's, ``print_result``; a command's, ``cli_common.Output``), whole: a stop during
    the print is raised once it is printed (``COMMAND_STOP.deferred``), and then said on stderr (``entry.run_tool``,
    ``cli._interrupted``), as a command whose stdout carries data says its errors, not as a second object after the
    result (or in the middle of it). The one rule for both (until 2026-12-07, fix-small4, a command said such a stop
    as a second object on stdout)."""
    with COMMAND_STOP.deferred():
        yield
        RESULT.printed = True


def print_result(text: str) -> None:
    """A tool's result (its JSON object, or its table), printed whole (``printing_result``)."""
    with printing_result():
        print(text, flush=True)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``error`` (a value refused, an unknown option, a check after parsing that
    calls ``parser.error``) prints the command's usage error as JSON when the arguments given hold ``--json``."""

    _given: Sequence[str] = ()

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if json_asked(self._given):
            error = UsageError(sanitize_text(f"{message} (see {self.prog} -h)"))
            print(json.dumps(error.to_dict()), flush=True)
            sys.exit(error.exit_code)
        super().error(message)
