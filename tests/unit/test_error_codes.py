"""Every expected error has a stable code and an exit code, and the README's table tells an operator about it."""
from __future__ import annotations

import re

import pytest

from helpers import REPO
from orchestrator import errors


def all_error_classes() -> list[type[errors.OrchestratorError]]:
    found, todo = [], [errors.OrchestratorError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c is not errors.OrchestratorError]


EXIT_TABLES = {"README.md": "## Exit codes", "docs/runbook.md": "## If you see this exit code"}


def exit_table(page: str = "README.md") -> dict[str, set[int]]:
    """Each error code and the exit codes of the rows naming it (``INTERRUPTED``: 130 and 143, by the signal)."""
    text = (REPO / page).read_text(encoding="utf-8")
    section = text[text.index(EXIT_TABLES[page]):]
    codes: dict[str, set[int]] = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*(\d+(?:,\s*\d+)*)\s*\|([^|]*)\|", line)
        if m:
            for code in re.findall(r"`([A-Z_]+)`", m.group(2)):
                codes.setdefault(code, set()).update(int(n) for n in m.group(1).split(","))
    return codes


@pytest.mark.parametrize("page", sorted(EXIT_TABLES))
def test_every_error_code_is_in_the_exit_tables_with_its_exit_code(page: str) -> None:
    table = exit_table(page)
    for cls in all_error_classes():
        assert cls.code in table, f"{cls.__name__} ({cls.code}) is missing from the exit-code table of {page}"
        assert cls.exit_code in table[cls.code], f"{cls.code}: {page} says {table[cls.code]}, code {cls.exit_code}"
    defined = {cls.code for cls in all_error_classes()} | {errors.OrchestratorError.code}
    assert set(table) <= defined, f"{page} names error codes the code does not have: {set(table) - defined}"
    assert table[errors.CommandInterrupted.code] == {130, 143}  # the only code whose exit depends on the instance
    assert all(len(exits) == 1 for code, exits in table.items() if code != errors.CommandInterrupted.code), table


def test_expected_errors_never_use_the_internal_or_usage_exit_codes() -> None:
    assert errors.UsageError.exit_code == 2  # click's usage errors, in the commands' form with --json
    for cls in all_error_classes():
        if cls is errors.UsageError:
            continue
        assert cls.exit_code >= 3, f"{cls.code} uses exit {cls.exit_code}, kept for internal/usage errors"


def test_the_cli_help_names_every_exit_code_of_the_readme_table() -> None:
    from orchestrator.cli import cli

    text = (REPO / "README.md").read_text(encoding="utf-8")
    readme_exits = {int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", text[text.index("## Exit codes"):], re.M)}
    help_text = " ".join((cli.help or "").split())
    for exit_code in sorted(readme_exits):
        assert re.search(rf"\b{exit_code} [a-z]", help_text), f"`orchestrator -h` does not mention exit {exit_code}"


def test_a_closed_stores_error_says_so_in_one_plain_line() -> None:
    assert errors.StoreClosedError().to_dict() == {
        "error": "STORE_CLOSED", "message": "This Orchestrator (or store) was closed (close(), or the end of its with "
                                            "block): nothing was read or written; make a new one to go on."}


RAISED_WITHOUT_ARGUMENTS = sorted(set(all_error_classes()) - {errors.CommandInterrupted}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", RAISED_WITHOUT_ARGUMENTS, ids=lambda cls: cls.__name__)
def test_every_errors_default_message_is_one_plain_line_of_its_docstring(cls: type[errors.OrchestratorError]) -> None:
    """An error raised without a message shows its docstring, as an operator reads it: no line breaks, indentation
    or reST markup."""
    message = cls().message
    assert message and "\n" not in message and "  " not in message and "``" not in message, message
