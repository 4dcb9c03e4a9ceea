"""``orchestrator export`` / ``import``: move a project between the file backend and PostgreSQL."""
from __future__ import annotations

import sys
from typing import Any, Callable

import click

from orchestrator.cli import cli
from orchestrator.cli_common import CONTEXT, Output, StdoutOption, echo, note_missing_store, project_command
from orchestrator.output_file import OutputFile
from orchestrator.security import sanitize_text


def _progress(out: Output) -> Callable[[str], None]:
    """Progress lines on stderr; when stderr carries the command's JSON (``export -o - --json``), on a terminal only,
    so that a caller reading it finds one JSON object there."""
    if out.as_json and out.data_on_stdout:
        return out.progress
    return lambda message: echo(message, err=True)


@cli.command("export", context_settings=CONTEXT)
@click.option("-o", "--output", cls=StdoutOption, required=True, metavar="FILE",
              help="Bundle file to write ('-' for stdout, e.g. piped into `orchestrator import -`: stdout then "
                   "holds the bundle alone, the summary and every error go to stderr); a path that cannot be "
                   "written is refused (exit 3) before anything is read.")
@click.option("--allow-damaged", is_flag=True,
              help="Carry streams that fail verification as they are (evidence); import still refuses them.")
@project_command
def export_cmd(orch: Any, out: Output, output: str, allow_damaged: bool) -> int:
    """Write the project's whole history (every job, the audit log, head records) to a bundle.

    Lines are copied byte for byte, so every signature verifies after `orchestrator import`.
    Each stream is verified first: a damaged one stops the export (exit 7, no file written).
    """
    from orchestrator.transfer import export_project

    if output == "-":  # the bundle alone: ``out`` prints the summary and any error on stderr (StdoutOption); a
        # disk that refuses it, or a reader gone, is said by stdout itself (``stdout.install``)
        result = export_project(orch, sys.stdout.buffer, allow_damaged=allow_damaged, progress=_progress(out))
    else:
        with OutputFile(output, "the bundle") as fh:
            result = export_project(orch, fh, allow_damaged=allow_damaged, progress=_progress(out))  # type: ignore[arg-type]
    note_missing_store(orch, out)
    text = (f"exported {result['streams']} stream(s), {result['events']} event(s) of project {result['project_id']}"
            + (f" to {output}" if output != "-" else "")
            + (f"; {len(result['damaged'])} problem(s) carried as they are" if result["damaged"] else ""))
    out.emit(result, text)
    if not out.as_json:  # with --json, in its "warnings"
        for warning in result["warnings"]:
            echo(sanitize_text(f"note: {warning}"), err=True)
    return 7 if result["damaged"] else 0


def _written(written: int, events: int) -> str:
    """How many of a bundle's events an import wrote and how many the store held already (an import run again)."""
    if written == events:
        return "all written"
    if written == 0:
        return "all already there, nothing written"
    return f"{written} written, {events - written} already there"


@cli.command("import", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(dir_okay=False, allow_dash=True, exists=True))
@project_command
def import_cmd(orch: Any, out: Output, bundle: str) -> None:
    """Write a bundle from `orchestrator export` into this project's store (--store picks the backend).

    Every stream is verified, with its head record, before it is written; a damaged or
    cut one stops the import (exit 7), a malformed bundle is refused (exit 3). Running it again
    after an interruption completes it; a stream that already holds a different history is a
    conflict, never overwritten: the other jobs are imported, and every conflict is named at the
    end (exit 3). A conflicting audit log stops the import before the jobs. A store error
    (exit 10) names the stream it stopped at and what was imported before it: fix the cause and
    run it again.
    """
    from orchestrator.transfer import import_project

    if bundle == "-":
        result = import_project(orch, sys.stdin.buffer, progress=_progress(out))
    else:
        with open(bundle, "rb") as fh:
            result = import_project(orch, fh, progress=_progress(out))
    out.emit(result, f"imported {result['streams']} stream(s), {result['events']} event(s) into project "
                     f"{result['project_id']} ({_written(result['written'], result['events'])})"
                     + ("; the bundle carried no head record of the audit log (format v1, or none in the "
                        "source), so a cut of its last entries could not be checked: export it again with "
                        "this version" if result["audit_head"] is False else ""))
