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
from orchestrator import history, import_record, integrity, signing, timeline
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
    return {value for module in (history, integrity, timeline, signing, import_record) for name, value in vars(module).items()
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


def _mib(n: int) -> str:
    return f"{n // 2**20} MiB"


def test_the_readme_limits_table_states_the_limits_the_code_has() -> None:
    """Each row of README "Limits" names the constant's value, so a limit changed in the code cannot leave the
    table saying another."""
    from orchestrator import artifacts_source, config, limits, payload, security

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Limits"):]
    section = section[:section.index("\n## ")]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in section.splitlines() if line.startswith("| ")}
    expected = {
        "a job's input (canonical JSON)": [_mib(limits.MAX_INPUT_BYTES), f"nested at most {limits.MAX_JSON_DEPTH} levels"],
        "a file `submit --input-file` reads (`-`: stdin)": [_mib(limits.MAX_INPUT_BYTES)],
        "a line of an export bundle (`import` reads, `export` writes)": [_mib(limits.MAX_BUNDLE_LINE_BYTES)],
        "a head anchor `verify --against` reads": [_mib(limits.MAX_ANCHOR_BYTES)],
        "a job's kind (`submit --kind`)": [f"1 to {limits.MAX_KIND_LENGTH} characters"],
        "a terminal payload": [_mib(payload.MAX_PAYLOAD_BYTES), f"nested at most {limits.MAX_JSON_DEPTH} levels",
                               f"`summary`/`question` {payload.MAX_TEXT:,} chars", f"{payload.MAX_ARTIFACTS:,} artifacts"],
        "control texts (notes, answers, reasons)": [f"{limits.MAX_TEXT_CHARS:,} characters"],
        "a file `control ... --text-file` or `resume-from-chat --text-file` reads (`-`: stdin)":
            [f"{limits.MAX_TEXT_FILE_BYTES:,} bytes"],
        "`submit --max-attempts` / `--priority`":
            [f"1 to {limits.MAX_ATTEMPTS_LIMIT:,} / -{limits.PRIORITY_LIMIT:,} to {limits.PRIORITY_LIMIT:,}"],
        "durations (`--timeout`, the worker's `--stop-grace-seconds`, `--retry-*-seconds`; `--lease-seconds` "
        f"{config.MIN_LEASE_SECONDS:g} to {config.MAX_LEASE_SECONDS:,.0f} s, a day)": [f"{limits.MAX_DURATION_SECONDS:,.0f} s"],
        "a copy of `artifacts_from` (`worker --artifacts-import`)":
            [f"less {_mib(artifacts_source.SPARE_BYTES)} and 1/{artifacts_source.SPARE_FRACTION} of the copy",
             f"more than {artifacts_source.MAX_PATHS_TO_A_FOLDER:,} paths of links"],
        "job, project, run, worker ids, idempotency keys (`submit --key`)":
            ["{0,%d}" % (security.ID_LENGTH - 1)],
    }
    wrong = [f"{row!r}: {value!r}" for row, values in expected.items() for value in values
             if value not in rows.get(row, "")]
    assert not wrong, f"README's Limits table does not say what the code has: {wrong}"


def _code_names(folders: tuple[str, ...]) -> tuple[set[str], list[tuple[str, str]]]:
    """The ``ORCH_*`` names the code of these folders uses (strings, names, keyword arguments: not its docstrings
    nor comments), and each module docstring with its file."""
    import ast

    used: set[str] = set()
    docstrings: list[tuple[str, str]] = []
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            skip = set()
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = node.body[0] if node.body else None
                    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str):
                        skip.add(id(doc.value))
                        docstrings.append((str(path.relative_to(REPO)), doc.value.value))
            for node in ast.walk(tree):
                text = (node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
                        else node.arg if isinstance(node, ast.keyword) and node.arg
                        else node.id if isinstance(node, ast.Name) else "")
                used.update(re.findall(r"\bORCH_[A-Z0-9_]*[A-Z0-9]\b", text))
    return used, docstrings


def test_every_orch_variable_the_docs_or_a_docstring_name_is_one_the_code_reads() -> None:
    """A variable renamed or never made (``ORCH_VERIFY_KEYS`` in a module docstring) is not left for an operator to
    set in vain. The decisions log and the performance history are records of the past, and may name old ones."""
    used, docstrings = _code_names(("orchestrator", "bench", "scripts", "utils"))
    pages = [page for page in PAGES if page.name not in ("decisions.md", "performance-history.md")]
    named = [(page.name, text) for page in pages for text in [page.read_text(encoding="utf-8")]]
    named += [(path, doc) for path, doc in docstrings if path.startswith("orchestrator")]
    unknown = sorted({f"{where}: {name}" for where, text in named
                      for name in re.findall(r"\bORCH_[A-Z0-9_]*[A-Z0-9]\b", text) if name not in used})
    assert not unknown, f"variables named that no code reads: {unknown}"


def test_the_readme_python_api_table_gives_each_method_the_parameters_and_defaults_it_has() -> None:
    """Both ways: a parameter the table gives a method is one it has, with that default; every parameter of the
    method is named in its row (``now``, a test's virtual time, and ``actor``, aside)."""
    import ast
    import inspect

    from orchestrator import Orchestrator

    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("| method | returns | command |"):]
    rows = section[:section.index("\n\n")].splitlines()[2:]
    wrong, before = [], ""
    for row in rows:
        first = row.split(" | ")[0]
        for name, given in re.findall(r"`orch\.(\w+)\((.*?)\)`", first):
            params = inspect.signature(getattr(Orchestrator, name)).parameters
            spread = any(p.kind is p.VAR_KEYWORD for p in params.values())
            told = row if given != "..." else before + row  # `orch.submit_job(...)`: the arguments of the row above
            for piece in [] if given in ("...", "") else [p.strip() for p in given.split(",")]:  # "": `orch.close()`
                arg, _, default = piece.lstrip("*").partition("=")
                if piece == "*" or piece.startswith("**") and spread:
                    continue
                if arg not in params:
                    if not spread:
                        wrong.append(f"orch.{name} has no parameter {arg}")
                elif default and ast.literal_eval(default) != params[arg].default:
                    wrong.append(f"orch.{name}({arg}=...) defaults to {params[arg].default!r}, not {default}")
            wrong += [f"orch.{name}: {p} is not in its row" for p, param in params.items()
                      if p not in ("self", "now", "actor") and param.kind not in (param.VAR_KEYWORD, param.VAR_POSITIONAL)
                      and not re.search(rf"\b{p}\b", told)]
        before = row
    assert not wrong, f"README's Python API table and the code differ: {wrong}"


@pytest.mark.parametrize("exit_code", [0, 2, 3, 7, 8, 10, 11, 75])
def test_the_worker_help_names_each_exit_code_a_worker_exits_with(exit_code: int) -> None:
    """7: a stale recovery or a refusal over a cut audit log stops the worker (docs/runbook.md, section E)."""
    help_text = " ".join((commands()["worker"].help or "").split())
    assert re.search(rf"\b{exit_code} [a-z]", help_text), f"`worker -h` does not name exit {exit_code}"


@pytest.mark.parametrize("cause", ["refused a write", "could not be reached", "owned by another user",
                                   "writable by others", "below such a folder", "job's folder", "quota",
                                   "failed with the disk full"])
def test_the_worker_help_names_each_cause_of_exit_10_the_readme_table_names(cause: str) -> None:
    """README's exit table gives a worker more causes of exit 10 than a refused write or a store out of reach: store
    folders another user owns or others may write, or below such a folder, a job's folder another user owns, a
    quota used up (met at start), a run that failed with the disk full."""
    help_text = " ".join((commands()["worker"].help or "").split())
    exit_10 = help_text[help_text.index(" 10 "):]
    assert cause in exit_10, f"`worker -h` does not name {cause!r} under exit 10"


def test_every_upper_case_code_the_operator_pages_name_is_one_the_code_has() -> None:
    """An error, problem, alert or event code (`LEASE_NOT_RENEWED`, `TRUNCATED`, ...) renamed or dropped in the code
    is not left in a table an operator acts on. postgres.md also names the operator's own variables and libpq's."""
    import ast

    names: set[str] = set()
    for folder in ("orchestrator", "bench", "scripts"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                text = (node.value if isinstance(node, ast.Constant) and isinstance(node.value, str)
                        else node.id if isinstance(node, ast.Name) else "")
                names.update(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", text))
    pages = [REPO / "README.md"] + [REPO / "docs" / f"{name}.md" for name in
                                    ("runbook", "worker", "format", "guarantees", "metrics", "ADR-state-source")]
    unknown = sorted({f"{page.name}: {code}" for page in pages
                      for code in re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", page.read_text(encoding="utf-8"))
                      if code not in names})
    assert not unknown, f"codes the docs name that the code does not have: {unknown}"
