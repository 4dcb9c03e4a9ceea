"""The benchmark commands' arguments, checked before anything is measured.

A full suite runs for ten minutes or more: a count that cannot be (``--w2-samples -5``, ``--repeat 0``), a folder that
cannot hold the scratch projects, or a results file that cannot be written is refused at once, as a usage error
(exit 2, argparse's), instead of being run, or found out when the results are to be written and lost. The results
file is an ``OutputFile`` (the product's): opened before the run, written whole at its end, and left as it was if
the run fails or is stopped (docs/performance.md, "How to reproduce").
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from orchestrator.output_file import OutputFile


def positive_int(text: str) -> int:
    """A count of jobs, samples or runs: a whole number, at least 1."""
    return _whole(text, 1)


def count(text: str) -> int:
    """A number of things that may be none (jobs other workers left running): a whole number, at least 0."""
    return _whole(text, 0)


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def seconds(text: str) -> float:
    """A wait or a pause: a number of seconds (or milliseconds), at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, not {text}")
    return value


def sizes(text: str, example: str = "1000,10000,100000") -> tuple[int, ...]:
    """A comma list of project sizes (finished jobs), or of other counts, each at least 1; ``example``: the list an
    empty one is told to look like."""
    values = tuple(positive_int(part.strip()) for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError(f"give at least one ({example})")
    return values


def choices(known: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """A comma list of names, each one of ``known`` (a system, a workload), in the order given; an empty one is
    refused (``--only ''`` was taken for "every workload", and ran the whole suite at full size)."""
    names = tuple(known)

    def parse(text: str) -> list[str]:
        given = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in given if name not in names]
        if unknown or not given:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {', '.join(unknown)}; choose from {', '.join(names)}"
                                             if unknown else f"give at least one {what}: {', '.join(names)}")
        return given
    return parse


def results_file(parser: argparse.ArgumentParser, path: str | os.PathLike[str] | None,
                 what: str) -> OutputFile | contextlib.nullcontext[None]:
    """``path`` opened for the results (``OutputFile``: refused now if it cannot be written; written whole when the
    ``with`` block around the run ends, left as it was if the block fails), or the usage error that says why not;
    an empty context (``None`` in the ``with``) when no path was given."""
    if path is None:
        return contextlib.nullcontext()
    from orchestrator.errors import OrchestratorError
    from orchestrator.output_file import OutputFile

    try:
        return OutputFile(path, what)
    except OrchestratorError as exc:
        parser.error(exc.message)


def add_scratch_and_json(parser: argparse.ArgumentParser) -> None:
    """``--base-path`` (where the scratch projects go) and ``--json`` (the figures' file), as the tools that drain a
    queue with worker processes take them; ``scratch_folder`` checks the first."""
    parser.add_argument("--base-path", default=None, help="where the scratch projects go (default: the system's "
                        "temporary folder)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE")


def scratch_folder(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--base-path``, if given, checked as ``measured_folder`` checks ``--base``."""
    if args.base_path is not None:
        measured_folder(parser, Path(args.base_path), "--base-path")


def measured_folder(parser: argparse.ArgumentParser, base: Path, option: str = "--base") -> None:
    """``option`` (``--base``): a folder the scratch projects can be made in (made if missing, as the suite always
    did), or the usage error that says why not, naming the option given."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix="bench-probe-", dir=base))
    except OSError as exc:
        parser.error(f"{option} {base}: cannot make the scratch folders there: {exc.strerror or exc}")
