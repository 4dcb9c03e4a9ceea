"""What every command of the command line is built from: click's settings, the output (``Output``, ``echo``), expected
errors printed in the commands' form (``reported_errors``), the options every command on a project takes
(``project_command``), and the two kinds of option and command that change how a command line is read or where its
output goes (``StdoutOption``, ``JobIdOptionCommand``). The commands themselves are in ``cli`` and ``commands/``.
"""
from __future__ import annotations

import contextlib
import functools
import json
import sys
from typing import Any, Callable, Iterator

import click

from orchestrator.cli_values import store_option
from orchestrator.config import DEFAULT_BASE_PATH, DEFAULT_PROJECT_ID
from orchestrator.errors import OrchestratorError
from orchestrator.json_usage import printing_result
from orchestrator.security import safe_line, sanitize_text, shown
from orchestrator.stdout import outcome

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_INTEGRITY = 7


def echo(message: str, *, err: bool = False, nl: bool = True) -> None:
    """``click.echo``, with what a write to stdout can meet made an outcome (``stdout.outcome``): said here too for
    a stdout that ``stdout.install`` did not replace (a test's), and for a stderr whose reader went away."""
    try:
        click.echo(message, err=err, nl=nl)
    except OSError as exc:
        raise outcome(exc, err) from None


class Output:
    """Prints results as text or JSON, always sanitized.

    ``data_on_stdout``: stdout carries the command's data (``export -o -``), so results and errors go to stderr.
    """

    def __init__(self, as_json: bool, data_on_stdout: bool = False) -> None:
        self.as_json = as_json
        self.data_on_stdout = data_on_stdout

    def emit(self, data: Any, text: str | Callable[[], str]) -> None:
        """The command's result, printed whole: a stop after it is said on stderr (``json_usage.printing_result``)."""
        with printing_result():
            if self.as_json:
                self._json(data)
            else:
                echo(sanitize_text(text() if callable(text) else text), err=self.data_on_stdout)

    def error(self, exc: OrchestratorError) -> None:
        """The command's error, its result (``emit``)."""
        with printing_result():
            if self.as_json:
                self._json(exc.to_dict())
            else:
                echo(sanitize_text(f"error[{exc.code}]: {exc.message}"), err=True)

    def _json(self, data: Any) -> None:
        text = json.dumps(data, ensure_ascii=False, default=str)
        clean = sanitize_text(text)
        if clean != text:
            # A value redacted in the serialized text can run past its string's closing quote (`token='abc`, a
            # private key's BEGIN line: to the end of the text) and cut the object short. Redact value by value
            # then (slower, and only when there is something new to redact: stored texts are redacted already).
            from orchestrator.redaction_objects import sanitize_obj  # here: only then (a command's cold start)

            clean = json.dumps(sanitize_obj(json.loads(text)), ensure_ascii=False)
        echo(clean, err=self.data_on_stdout)

    def progress(self, message: str) -> None:
        if sys.stderr.isatty():
            echo(message, err=True)


class JobIdOptionCommand(click.Command):
    """A command that takes its job as ``--job-id`` (``verify``, ``audit-timeline``, ``audit heal``): a bare JOB_ID,
    as ``status`` and ``control`` take it, is a usage error that shows the option to use, not click's bare
    "unexpected extra argument"."""

    allow_extra_args = True  # kept in ctx.args and refused below; an unknown option is still click's error

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        if ctx.args:
            given = shown(ctx.args[0])
            raise click.UsageError(f"unexpected argument {given}: this command takes the job as an option, "
                                   f"--job-id {safe_line(ctx.args[0])}", ctx)
        return rest


class StdoutOption(click.Option):
    """An option naming a file where ``-`` means stdout (``export -o -``). Stdout then carries data for a
    reader that expects nothing else (``import -``), so every result and error of the command goes to
    stderr, also those found before it runs: a ``.env`` error, a usage error (``given_as_stdout``), the
    settings or the store (``project_command``)."""

    def given_as_stdout(self, args: list[str]) -> bool:
        """Whether the raw ``args`` of the command give this option as ``-`` (the last time it is given,
        as click keeps the last value): read before click parses them, or after it failed to."""
        value = None
        rest = iter(args)
        for arg in rest:
            if arg == "--":  # only arguments follow
                break
            if arg in self.opts:  # -o - / --output -
                value = next(rest, None)
                continue
            for name in self.opts:  # --output=- / -o-
                attached = f"{name}=" if name.startswith("--") else name
                if arg.startswith(attached) and len(arg) > len(attached):
                    value = arg[len(attached):]
        return value == "-"


@contextlib.contextmanager
def reported_errors(out: Output) -> Iterator[None]:
    """Print an expected error in the commands' form and exit with its code, never with a traceback."""
    try:
        yield
    except OrchestratorError as exc:
        error = exc
    except (NotADirectoryError, IsADirectoryError, PermissionError) as exc:  # a path the store did not map itself
        from orchestrator.store.files import path_error

        error = path_error(exc)
    else:
        return
    out.error(error)
    click.get_current_context().exit(error.exit_code)


def project_command(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Add the common options, build the ``Orchestrator`` lazily, and map errors to exit codes."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @click.option("--project-id", envvar="PROJECT_ID", show_envvar=True, default=None,
                  help=f"Project under the base path.  [default: {DEFAULT_PROJECT_ID}]")
    @click.option("--base-path", envvar="BASE_PATH", show_envvar=True, default=None,
                  type=click.Path(file_okay=False), help=f"Folder holding projects.  [default: {DEFAULT_BASE_PATH}]")
    @store_option()
    @functools.wraps(fn)
    def wrapper(base_path: str | None, project_id: str | None, as_json: bool, store_url: str | None,
                **kwargs: Any) -> None:
        ctx = click.get_current_context()
        as_json = as_json or ctx.params.get("fmt") == "json"  # ``metrics --format json`` is ``--json``, errors too
        out = Output(as_json, data_on_stdout=any(  # known before the settings or the store can fail
            isinstance(p, StdoutOption) and ctx.params.get(p.name) == "-" for p in ctx.command.params))
        with reported_errors(out):
            from orchestrator.api import Orchestrator

            orch = Orchestrator(base_path=base_path, project_id=project_id, store_url=store_url)
            try:
                code = fn(orch, out, **kwargs)
            finally:  # a PostgreSQL store's connections and watchdog thread, also for a command run in process
                orch.close()
        click.get_current_context().exit(code or 0)

    return wrapper


def note_missing_store(orch: Any, out: Output) -> None:
    """A project-wide read of a store that does not exist finds nothing, as a fresh project's does (its first
    submit creates the store), so it is not an error; but the text names the folder read (on stderr, the
    output itself unchanged), so a mistyped --base-path or --project-id shows."""
    root = getattr(orch.store, "root", None)  # the file backend's folder; PostgreSQL has no such thing
    if root is not None and not out.as_json and not root.exists():
        echo(sanitize_text(f"note: no store at {root} (nothing written to this project yet); "
                                 "check --base-path and --project-id"), err=True)

