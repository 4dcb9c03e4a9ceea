"""`export -o -` keeps stdout for the bundle: every error goes to stderr, also one found before the export
starts (a `.env` line, the settings, a store that cannot be opened, the command line), and stdout stays empty
(docs/decisions.md, CLI). The exit codes are those of the same error with `-o FILE`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO
from orchestrator.cli_common import StdoutOption


def run(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator", "export", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def dotenv_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / ".env").write_text('BASE_PATH="unterminated\n')
    return folder


def store_is_a_file(base: Path) -> None:
    (base / "proj").mkdir()
    (base / "proj" / ".orchestrator").write_text("")


# (case, arguments besides -o, exit code, error code); a setup gets (base, tmp_path) and may return a cwd
EARLY_ERRORS = [
    ("a .env line that cannot be parsed", (), 3, "CONFIG_ERROR", lambda base, tmp: dotenv_folder(tmp)),
    ("a bad project id", ("--project-id", "../x"), 3, "INVALID_ID", None),
    ("a file where the store folder belongs", (), 10, "STORAGE_ERROR", lambda base, tmp: store_is_a_file(base)),
    ("PostgreSQL not reachable", ("--store", "postgresql://127.0.0.1:1/none?connect_timeout=5"), 10, "STORAGE_ERROR",
     None),
    ("an unknown option", ("--bogus",), 2, "USAGE_ERROR", None),
    ("a value for a flag", ("--allow-damaged=yes",), 2, "USAGE_ERROR", None),
    ("an option without its value", ("--store",), 2, "USAGE_ERROR", None),
]


@pytest.mark.parametrize("case, args, exit_code, code, setup", EARLY_ERRORS, ids=[e[0] for e in EARLY_ERRORS])
def test_an_error_before_an_export_to_stdout_goes_to_stderr_and_leaves_stdout_empty(
        cli_env: dict[str, str], base: Path, tmp_path: Path, case: str, args: tuple[str, ...], exit_code: int,
        code: str, setup) -> None:
    cwd = (setup(base, tmp_path) if setup else None) or REPO
    for stdout_given_as in (("-o", "-"), ("-o-",), ("--output=-",)):
        as_json = run(*stdout_given_as, "--json", *args, env=cli_env, cwd=cwd)
        assert as_json.returncode == exit_code and as_json.stdout == "", (stdout_given_as, as_json.stdout)
        assert json.loads(as_json.stderr)["error"] == code, as_json.stderr
    text = run("-o", "-", *args, env=cli_env, cwd=cwd)
    assert text.returncode == exit_code and text.stdout == "", text.stdout
    if code == "USAGE_ERROR":
        assert "Error: " in text.stderr, text.stderr  # click's text (with the usage line when click has it)
    else:
        assert text.stderr.startswith(f"error[{code}]: "), text.stderr
    to_file = run("-o", str(tmp_path / "out.bundle"), "--json", *args, env=cli_env, cwd=cwd)  # unchanged
    assert to_file.returncode == exit_code and json.loads(to_file.stdout)["error"] == code, to_file.stderr
    assert not (tmp_path / "out.bundle").exists()


@pytest.mark.parametrize("args, to_stdout", [
    (["-o", "-"], True), (["-o-"], True), (["--output=-"], True), (["--output", "-", "--json"], True),
    (["--bogus", "-o", "-"], True), (["-o", "-", "-o", "b.bundle"], False), (["-o", "b.bundle", "-o", "-"], True),
    (["-o", "b.bundle"], False), (["-o", "-x"], False), (["--", "-o", "-"], False), (["-o"], False), ([], False),
])
def test_the_raw_command_line_names_stdout_as_click_would_read_it(args: list[str], to_stdout: bool) -> None:
    option = StdoutOption(["-o", "--output"])
    assert option.given_as_stdout(args) is to_stdout


def test_an_export_to_stdout_on_a_full_disk_is_storage_error_on_stderr_not_a_traceback(
        cli_env: dict[str, str]) -> None:
    if not Path("/dev/full").is_char_device():
        pytest.skip("no /dev/full (a file whose every write fails with ENOSPC)")
    subprocess.run([sys.executable, "-m", "orchestrator", "submit", "--kind", "k"], env=cli_env, cwd=REPO,
                   check=True, capture_output=True)
    with open("/dev/full", "wb") as full:  # `export -o - > bundle` on a full disk
        proc = subprocess.run([sys.executable, "-m", "orchestrator", "export", "-o", "-", "--json"], env=cli_env,
                              cwd=REPO, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 10, proc.stderr
    error = json.loads(proc.stderr)
    assert error["error"] == "STORAGE_ERROR" and "stdout" in error["message"], error


def test_an_export_to_stdout_with_json_of_a_thousand_jobs_prints_one_json_object_on_stderr(
        cli_env: dict[str, str], base: Path) -> None:
    """stderr carries the summary as JSON there: a progress line before it (every 1,000 streams) made it unreadable
    for a caller that reads it, which cannot be a terminal (progress still goes to one)."""
    from orchestrator import Orchestrator
    from orchestrator.key_files import load_keyring
    from orchestrator.transfer import PROGRESS_EVERY

    orch = Orchestrator(base_path=base, project_id="proj", keyring=load_keyring(cli_env, announce=False))
    for i in range(PROGRESS_EVERY):
        orch.submit("k", {"i": i})
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "export", "-o", "-", "--json"], env=cli_env,
                          cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr)["streams"] == PROGRESS_EVERY
    assert proc.stdout.endswith(b'"streams":%d}\n' % PROGRESS_EVERY)
