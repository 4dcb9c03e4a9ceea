"""argparse for the tools whose ``--json`` flag means "print JSON" (``scripts/bench_event_costs.py``,
``scripts/reliability_report.py``): a usage error given with ``--json`` is what every command prints then, one
``{"error": "USAGE_ERROR", "message": ...}`` object on stdout, exit 2 (README, "Commands"), not argparse's text on
stderr. Without ``--json``, argparse's usage and message on stderr as before, exit 2 either way. A stop (``entry.run_tool``) asks
``json_asked`` too.

Not for the benchmarks whose ``--json FILE`` names a file to write (``bench.cli_args.add_scratch_and_json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn, Sequence

from orchestrator.errors import UsageError
from orchestrator.security import sanitize_text


def json_asked(args: Sequence[str]) -> bool:
    """Whether a tool's arguments hold ``--json`` (before a ``--``): its errors, a usage error or a stop
    (``entry.run_tool``), are then one JSON object on stdout, as a command's."""
    given = list(args)
    return "--json" in (given[:given.index("--")] if "--" in given else given)


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
