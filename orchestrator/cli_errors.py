"""The errors of a command line that no command's own code meets, printed in the commands' form: a ``.env`` that
cannot be read (before click parses the options, ``load_dotenv``), and what click raises while it reads the line
(``run_command``): a usage error (with ``--json``, one JSON object like every other error), a setting from the
environment its option refuses (``CONFIG_ERROR``), an unknown option (the command's options listed), ``--json`` given
to a group (where it goes). Each goes to stderr when stdout carries the command's data (``data_on_stdout``).
"""
from __future__ import annotations

import io
import sys

import click

from orchestrator.cli_common import Output, StdoutOption, echo
from orchestrator.cli_values import setting_error, typed_value_error
from orchestrator.config import load_dotenv_file
from orchestrator.errors import OrchestratorError, UsageError
from orchestrator.security import safe_line, sanitize_text, shown


def named_command(command: click.Command, args: list[str]) -> tuple[click.Command, list[str]]:
    """The command the raw command line ``args`` of ``command`` (the group, a script's command) names, and its own
    arguments; a group itself when they name none of its commands. A group's options are flags (``--version``,
    ``-h``), so its first other word names the command."""
    while isinstance(command, click.Group):
        name = next((arg for arg in args if not arg.startswith("-")), None)
        found = command.get_command(click.Context(command), name) if name else None
        if found is None:
            break
        command, args = found, args[args.index(name) + 1:]
    return command, args


def data_on_stdout(command: click.Command, args: list[str]) -> bool:
    """Whether the raw command line ``args`` of ``command`` (the group, a script's command) asks for data on
    stdout (a ``StdoutOption`` given as ``-``)."""
    command, args = named_command(command, args)
    return not isinstance(command, click.Group) and any(
        isinstance(p, StdoutOption) and p.given_as_stdout(args) for p in command.params)


def wants_json(args: list[str]) -> bool:
    """Whether errors found before the command runs (``.env``, usage) print as JSON: click has not parsed yet."""
    return "--json" in args or "--format=json" in args or any(
        a == "--format" and b == "json" for a, b in zip(args, args[1:]))


def load_dotenv(command: click.Command, args: list[str]) -> None:
    """``.env`` is read before click parses the options (they take their defaults from the environment), so
    its errors are reported here, in the form the commands use."""
    try:
        load_dotenv_file()
    except OrchestratorError as exc:
        Output(wants_json(args), data_on_stdout=data_on_stdout(command, args)).error(exc)
        sys.exit(exc.exit_code)


def run_command(command: click.Command, args: list[str], prog_name: str | None) -> None:
    """Run ``command`` as click's standalone mode does, except that with ``--json`` a usage error (exit 2) is
    printed like every other error, as one JSON object on stdout (on stderr when stdout carries data:
    ``export -o -``): a caller that reads stdout gets it too. Without ``--json`` click prints it on stderr."""
    try:
        code = command.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.ClickException as exc:
        if not _name_where_json_goes(exc, args):
            _name_the_options(exc)
        setting = setting_error(exc)
        if setting is not None:
            Output(wants_json(args), data_on_stdout=data_on_stdout(command, args)).error(setting)
            sys.exit(setting.exit_code)
        typed_value_error(exc)
        if isinstance(exc, click.UsageError) and wants_json(args):
            Output(True, data_on_stdout=data_on_stdout(command, args)).error(UsageError(exc.format_message()))
        else:  # click's usage, hint and "Error: ..." lines, which may echo what was typed, sanitized as all output
            shown_by_click = io.StringIO()
            exc.show(file=shown_by_click)
            echo(sanitize_text(shown_by_click.getvalue()), err=True, nl=False)
        sys.exit(exc.exit_code)
    except click.Abort as exc:  # click makes a KeyboardInterrupt an Abort: reported by ``cli._run``
        if isinstance(exc.__cause__, KeyboardInterrupt):
            raise exc.__cause__ from None
        click.echo("Aborted!", err=True)  # an end of input at a prompt
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # ctx.exit(n) returns n; a command that returns exits 0


def _name_where_json_goes(exc: click.ClickException, args: list[str]) -> bool:
    """``--json`` given to a group (``orchestrator --json status``, ``control --json cancel J``) is click's "No such
    option '--json'" (for ``orchestrator``, with "Did you mean '--version'?"), though every command has it: the
    message then says where it goes, after the command's name, and shows the command line with it there. Whether it
    was that error."""
    if (isinstance(exc, click.NoSuchOption) and exc.option_name == "--json" and exc.ctx is not None
            and isinstance(exc.ctx.command, click.Group)):
        import shlex

        rest = [a for a in args if a != "--json"]
        depth = len(exc.ctx.command_path.split()) - len(exc.ctx.find_root().command_path.split())
        if sum(not a.startswith("-") for a in rest) > depth:  # a command is named after the group: show the line
            line = " ".join([exc.ctx.find_root().command_path, *map(shlex.quote, rest), "--json"])
        else:
            line = f"{exc.ctx.command_path} <command> ... --json"
        exc.message = (f"No such option '--json' for {exc.ctx.command_path} itself: give it after the command, "
                       f"{safe_line(line)}")
        exc.possibilities = None  # type: ignore[misc]
        return True
    return False


NEAR_TYPO = 0.8  # how alike an unknown option must be to one of the command's to be suggested (click's cutoff: 0.6)


def _name_the_options(exc: click.ClickException) -> None:
    """An unknown option (``control approve J --token x``): click suggests whatever is alike at 0.6, for ``--token``
    ``--json`` and ``--store``, a hint that leads nowhere. The message lists the command's options instead, and
    suggests one only for a near typo (``--jsno``) or a start of it (``--lease``)."""
    if not isinstance(exc, click.NoSuchOption) or exc.ctx is None:
        return
    import difflib

    options = [p.opts for p in exc.ctx.command.get_params(exc.ctx) if isinstance(p, click.Option) and not p.hidden]
    names = {name: "/".join(opts) for opts in options for name in opts}
    given = exc.option_name
    near = difflib.get_close_matches(given, names, n=3, cutoff=NEAR_TYPO) or [
        name for name in names if len(given) > 4 and name.startswith(given)]
    hint = f" Did you mean {' or '.join(dict.fromkeys(names[n] for n in near))}?" if near else ""
    exc.message = (f"No such option {shown(given)} for {exc.ctx.command_path}.{hint} Its options: "
                   f"{', '.join('/'.join(opts) for opts in options)} (-h says what each does).")
    exc.possibilities = None  # type: ignore[misc]
