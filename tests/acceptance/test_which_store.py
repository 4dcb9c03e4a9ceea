"""A command runs against the store the operator meant, or says why not: a `.env` line that cannot be parsed is a
CONFIG_ERROR, and a read of a store that does not exist names the folder it read."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, run_module, run_script


def in_folder(folder: Path, script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{script}.py"), *args], env=env, cwd=folder,
                          capture_output=True, text=True, timeout=60)


def test_a_dotenv_line_that_cannot_be_parsed_is_a_config_error_naming_the_file_and_line(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    # the closing quote forgotten, after blank lines (python-dotenv's statement starts at the first of them)
    (work / ".env").write_text(f'# settings\nPROJECT_ID=p2\n\n  \nBASE_PATH="{tmp_path}/base\n')
    env = {k: v for k, v in cli_env.items() if k not in ("BASE_PATH", "PROJECT_ID")}
    text = in_folder(work, "submit", "--kind", "k", env=env)
    assert text.returncode == 3 and "Traceback" not in text.stderr, text.stderr
    assert text.stderr.startswith(f"error[CONFIG_ERROR]: {work / '.env'}, line 5: cannot be parsed"), text.stderr
    as_json = in_folder(work, "submit", "--kind", "k", "--json", env=env)
    assert as_json.returncode == 3 and json.loads(as_json.stdout)["error"] == "CONFIG_ERROR"
    assert f"{work / '.env'}, line 5" in json.loads(as_json.stdout)["message"]
    assert sorted(p.name for p in work.iterdir()) == [".env"]  # no ./p2/.orchestrator in the current folder


def test_a_dotenv_switched_off_with_python_dotenv_disabled_is_neither_read_nor_checked(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text('PROJECT_ID=from-dotenv\nBASE_PATH="unterminated\n')
    env = {**cli_env, "PYTHON_DOTENV_DISABLED": "true"}
    done = in_folder(work, "submit", "--kind", "k", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert (Path(cli_env["BASE_PATH"]) / cli_env["PROJECT_ID"] / ".orchestrator").is_dir()  # the environment's


def test_verify_and_status_all_of_a_store_that_does_not_exist_say_so_and_exit_0(
        cli_env: dict[str, str], base: Path) -> None:
    env = {**cli_env, "PROJECT_ID": "typo"}
    store = base / "typo" / ".orchestrator"
    for args in (("verify",), ("status", "--all"), ("metrics",)):
        proc = run_script(*args, env=env)
        assert proc.returncode == 0 and f"note: no store at {store}" in proc.stderr, (args, proc.stderr)
        as_json = run_script(*args, "--json", env=env)
        assert as_json.returncode == 0 and as_json.stderr == "" and json.loads(as_json.stdout), args
    assert not (base / "typo").exists()
    run_script("submit", "--kind", "k", env=env, check=True)
    assert "no store" not in run_script("verify", env=env, check=True).stderr


WHERE = [("PROJECT_ID", "the project default"), ("BASE_PATH", "the current folder"),
         ("ORCH_STORE_URL", "the file store")]


@pytest.mark.parametrize("variable, meaning", WHERE, ids=[w[0] for w in WHERE])
def test_a_setting_that_chooses_the_store_set_empty_is_refused_never_read_as_its_default(
        cli_env: dict[str, str], tmp_path: Path, variable: str, meaning: str) -> None:
    """``export PROJECT_ID=$PROJ`` with ``PROJ`` unset, as the runbook's first block sets it, sent every command to
    project ``default`` (or ``./default``, or files for ``ORCH_STORE_URL=$PGURL``) and exited 0: refused, exit 3."""
    work = tmp_path / "work"
    work.mkdir()
    env = {**cli_env, variable: ""}
    for command in (("submit", "--kind", "k", "--input", "{}"), ("status", "--all")):
        text = in_folder(work, *command, env=env)
        assert text.returncode == 3 and "Traceback" not in text.stderr, (command, text.stdout, text.stderr)
        assert text.stderr.startswith(f"error[CONFIG_ERROR]: {variable} is set but empty (in the environment): "
                                      f"an empty {variable} never means {meaning}"), text.stderr
        as_json = in_folder(work, *command, "--json", env=env)
        assert as_json.returncode == 3 and json.loads(as_json.stdout)["error"] == "CONFIG_ERROR", as_json.stdout
    assert list(work.iterdir()) == [] and list(Path(cli_env["BASE_PATH"]).iterdir()) == []  # nothing written


@pytest.mark.parametrize("variable, meaning", WHERE, ids=[w[0] for w in WHERE])
def test_a_dotenv_line_that_leaves_a_store_setting_empty_is_refused_naming_the_file_and_line(
        cli_env: dict[str, str], tmp_path: Path, variable: str, meaning: str) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / ".env").write_text(f"# where\n{variable}=\n")
    env = {k: v for k, v in cli_env.items() if k != variable}
    text = in_folder(work, "submit", "--kind", "k", env=env)
    assert text.returncode == 3, (text.stdout, text.stderr)
    assert text.stderr.startswith(f"error[CONFIG_ERROR]: {variable} is set but empty ({work / '.env'}, line 2): "
                                  f"an empty {variable} never means {meaning}"), text.stderr
    assert sorted(p.name for p in work.iterdir()) == [".env"]
    # the environment's value wins over the .env line, as for every variable: nothing empty is used then
    if variable != "ORCH_STORE_URL":
        done = in_folder(work, "submit", "--kind", "k", env=cli_env)
        assert done.returncode == 0, done.stderr


def test_db_refuses_an_empty_store_url_as_every_command_does(cli_env: dict[str, str], tmp_path: Path) -> None:
    for command in (("db", "status"), ("db", "migrate")):
        proc = run_module(*command, "--json", env={**cli_env, "ORCH_STORE_URL": ""})
        error = json.loads(proc.stdout)
        assert (proc.returncode, error["error"]) == (3, "CONFIG_ERROR"), proc.stdout
        assert error["message"].startswith("ORCH_STORE_URL is set but empty (in the environment)"), error


def test_the_benchmark_refuses_an_empty_base_path_rather_than_measuring_elsewhere(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """``--keep`` without a base path measures in the current folder, and a scratch run in a temporary one."""
    work = tmp_path / "work"
    work.mkdir()
    proc = in_folder(work, "bench_terminal_latency", "--samples", "1", "--keep", "--json",
                     env={**cli_env, "BASE_PATH": ""})
    error = json.loads(proc.stdout)
    assert (proc.returncode, error["error"]) == (3, "CONFIG_ERROR"), proc.stdout
    assert error["message"].startswith("BASE_PATH is set but empty (in the environment)"), error
    assert list(work.iterdir()) == []
