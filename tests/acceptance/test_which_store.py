"""A command runs against the store the operator meant, or says why not: a `.env` line that cannot be parsed is a
CONFIG_ERROR, and a read of a store that does not exist names the folder it read."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import REPO, run_script


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
