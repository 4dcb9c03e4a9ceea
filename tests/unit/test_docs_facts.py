"""What the docs say about the command line and the outputs names what the code has, both ways.

Every option and environment variable of every command is documented somewhere; every option a doc gives a
command is one it has; every problem code a history check can report is in docs/format.md's table; the
README's table of `status --json` lists the fields `status` prints.
"""
from __future__ import annotations

import re

import click
import pytest

from helpers import REPO
from orchestrator import history, integrity, signing, timeline
from orchestrator.api import JobStatus
from orchestrator.cli import cli

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def commands() -> dict[str, click.Command]:
    """Every command and subcommand by its full name (`submit`, `keys rotate`, ...), groups included."""
    found: dict[str, click.Command] = {"": cli}
    todo: list[tuple[str, click.Command]] = [("", cli)]
    while todo:
        path, command = todo.pop()
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None
                full = f"{path} {name}".strip()
                found[full] = sub
                todo.append((full, sub))
    return found


def long_options(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def test_every_option_and_environment_variable_of_every_command_is_documented() -> None:
    missing = []
    for name, command in commands().items():
        for option in sorted(long_options(command) - {"--help"}):
            if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", DOCS):
                missing.append(f"orchestrator {name} {option}".replace("  ", " "))
        for param in command.params:
            variables = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
            missing += [f"orchestrator {name}: {v}" for v in variables if not re.search(rf"\b{v}\b", DOCS)]
    assert not missing, f"in --help but in no doc (README.md, docs/*.md): {missing}"


# a command named in a code span or a shell line, with what follows it on that line
INVOCATION = re.compile(r"(?:scripts/(\w+)\.py|orchestrator ([a-z][a-z-]*))((?: [a-z][a-z-]*)?[^`\n|;]*)")


def test_every_option_a_doc_gives_a_command_is_an_option_of_that_command() -> None:
    known = commands()
    wrong = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        spans = re.findall(r"`([^`\n]+)`", text) + [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
                                                   for line in block.splitlines()]
        for span in spans:
            if re.search(r"#\s*exit\s+2\s*$", span):
                continue  # a usage error on purpose (runbook: `--token`)
            span = re.sub(r"'[^']*'|\"[^\"]*\"", "''", span)  # an answer or a reason may mention an option
            for m in INVOCATION.finditer(span):
                name, rest = (m.group(1) or m.group(2)).replace("_", "-"), m.group(3)
                if name not in known:
                    continue
                sub = rest.split()[0] if rest.split() else ""
                if f"{name} {sub}" in known:
                    name = f"{name} {sub}"
                command = known[name]
                allowed = (long_options(command) if not isinstance(command, click.Group)
                           else set().union(*(long_options(c) for n, c in known.items() if n.startswith(f"{name} "))))
                wrong += [f"{page.name}: `{span}`: {o}" for o in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest)
                          if o not in allowed | {"--help"}]
    assert not wrong, f"options the docs give commands that do not have them: {wrong}"


def problem_codes() -> set[str]:
    """The problem codes of history checks: each a module constant whose value is its name."""
    return {value for module in (history, integrity, timeline, signing) for name, value in vars(module).items()
            if isinstance(value, str) and value == name and re.fullmatch(r"[A-Z][A-Z_]+", name)}


def test_every_problem_code_a_history_check_reports_is_in_the_format_pages_table() -> None:
    text = (REPO / "docs" / "format.md").read_text(encoding="utf-8")
    section = text[text.index("## Problem codes"):]
    section = section[:section.index("\n## ")]
    table = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.M))
    assert {"CHAIN_BROKEN", "SIGNATURE_INVALID", "AUDIT_EVENT_MISSING", "AFTER_DAMAGE"} <= problem_codes()
    assert problem_codes() - table == set(), "problem codes missing from docs/format.md, 'Problem codes'"
    assert table - problem_codes() == set(), "docs/format.md lists problem codes the code does not have"


def test_the_readme_table_of_status_json_lists_the_fields_status_prints() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("`status --json` prints these fields"):]
    rows = re.findall(r"^\| (`.*?`) \|", section[:section.index("\n\n", section.index("| field |"))], re.M)
    table = {field for row in rows for field in re.findall(r"`(\w+)`", row)}
    assert table == set(JobStatus.__dataclass_fields__), "README's status --json table and JobStatus differ"


@pytest.mark.parametrize("page", ["README.md", "docs/runbook.md"])
def test_every_command_the_docs_name_runs_from_a_script_or_the_console_script(page: str) -> None:
    """`scripts/<name>.py` exists for every runbook command a page names, and is that command."""
    text = (REPO / page).read_text(encoding="utf-8")
    for script in sorted(set(re.findall(r"scripts/(\w+)\.py", text))):
        path = REPO / "scripts" / f"{script}.py"
        assert path.exists(), f"{page} names scripts/{script}.py"
        source = path.read_text(encoding="utf-8")
        if "run_script(" in source:
            assert f'run_script("{script.replace("_", "-")}")' in source, f"scripts/{script}.py runs another command"
