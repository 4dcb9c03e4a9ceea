"""What another user could have written is never taken as the operator's: a ``.env`` they own or may write (or in a
folder they may write, but for a sticky one) is a CONFIG_ERROR, nothing of it loaded; a worker never imports handler
modules from a current folder they may write, nor does ``python3 -m orchestrator`` import anything from it
(``key_paths``' rule, the signing keys')."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_script

OTHER_UID = 65534  # nobody
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")


def dotenv_env(cli_env: dict[str, str]) -> dict[str, str]:
    """The tests' environment without what the ``.env`` sets (a variable already set wins over a ``.env`` line)."""
    return {k: v for k, v in cli_env.items() if k not in ("BASE_PATH", "ORCH_SIGNING_KEY")}


def hostile_dotenv(folder: Path, cli_env: dict[str, str]) -> Path:
    dotenv = folder / ".env"
    dotenv.write_text(f"BASE_PATH={folder / 'evil'}\nORCH_SIGNING_KEY={cli_env['ORCH_SIGNING_KEY']}\n")
    return dotenv


def shared_folder(tmp_path: Path, mode: int = 0o1777) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, mode)
    return folder


def refused(proc, *words: str) -> str:
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    message = json.loads(proc.stdout)["message"]
    assert json.loads(proc.stdout)["error"] == "CONFIG_ERROR" and "nothing was loaded from it" in message, message
    assert all(word in message for word in words), message
    return message


@as_root
def test_a_dotenv_another_user_owns_in_a_sticky_folder_is_refused_and_nothing_of_it_is_loaded(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    """The hunt's case: ``nobody`` writes a ``.env`` in a shared folder; root runs a command there. It signed with
    their key (trusted from then on) and wrote its store where their BASE_PATH said."""
    folder = shared_folder(tmp_path)
    dotenv = hostile_dotenv(folder, cli_env)
    os.chown(dotenv, OTHER_UID, -1)
    proc = run_script("submit", "--kind", "k", "--json", env=dotenv_env(cli_env), cwd=folder)
    refused(proc, f".env file {dotenv} is owned by uid {OTHER_UID}", "ORCH_SIGNING_KEY", f"chown 0 {dotenv}")
    assert not (folder / "evil").exists()
    os.chown(dotenv, 0, -1)  # root's own .env in a sticky folder: no one else may rename or replace it
    done = run_script("submit", "--kind", "k", "--json", env=dotenv_env(cli_env), cwd=folder)
    assert done.returncode == 0 and (folder / "evil" / "proj" / ".orchestrator").is_dir(), done.stderr


def test_a_dotenv_others_may_write_or_in_a_folder_others_may_write_is_refused(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    folder = shared_folder(tmp_path, 0o755)
    dotenv = hostile_dotenv(folder, cli_env)
    os.chmod(dotenv, 0o666)
    proc = run_script("submit", "--kind", "k", "--json", env=dotenv_env(cli_env), cwd=folder)
    refused(proc, f".env file {dotenv} may be written by others", f"chmod go-w {dotenv}")
    os.chmod(dotenv, 0o644)
    os.chmod(folder, 0o777)  # not sticky: others may rename the .env away and put theirs in its place
    proc = run_script("submit", "--kind", "k", "--json", env=dotenv_env(cli_env), cwd=folder)
    refused(proc, f"the folder {folder} above the .env file {dotenv} may be written by others", "chmod go-w")
    assert not (folder / "evil").exists()


MODULE = "import pathlib; pathlib.Path(__file__).with_name('imported').write_text('yes')\n"


@pytest.mark.parametrize("how", ["sticky", "theirs"])
def test_a_worker_never_imports_handler_modules_from_a_current_folder_others_may_write(
        cli_env: dict[str, str], tmp_path: Path, how: str) -> None:
    if how == "theirs" and os.geteuid() != 0:
        pytest.skip("only root can give a folder to another user")
    folder = shared_folder(tmp_path, 0o1777 if how == "sticky" else 0o755)
    (folder / "theirmod.py").write_text(MODULE)
    if how == "theirs":
        os.chown(folder, OTHER_UID, -1)
    proc = run_script("worker", "--once", "--import", "theirmod", env=cli_env, cwd=folder)
    assert proc.returncode == 3 and not (folder / "imported").exists(), proc.stderr
    why = (f"the current folder {folder} is a shared folder (sticky, as /tmp) others may add files to" if how ==
           "sticky" else f"the current folder {folder} is owned by uid {OTHER_UID}")
    assert ("no module 'theirmod' can be imported here: it is not on the Python path, and the current folder is "
            f"never looked in when others may write it: {why}") in " ".join(proc.stderr.split()), proc.stderr
    os.chown(folder, os.geteuid(), -1)
    os.chmod(folder, 0o755)  # the same folder, the user's own: looked in
    assert run_script("worker", "--once", "--import", "theirmod", env=cli_env, cwd=folder).returncode == 75  # none queued
    assert (folder / "imported").read_text() == "yes"


def run_as_module(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``python3 -m orchestrator ARGS`` started in ``cwd``, which Python puts first on ``sys.path`` itself."""
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(cwd))


@pytest.mark.parametrize("mode", [0o1777, 0o777], ids=["sticky", "open"])
def test_python_m_orchestrator_in_a_folder_others_may_write_imports_nothing_from_it(
        cli_env: dict[str, str], tmp_path: Path, mode: int) -> None:
    """Another user's ``json.py`` in a shared folder (``/tmp`` itself, sticky, or one others may write): until the
    fix ``python3 -m orchestrator`` started there imported it as the user running it (the README said to use
    ``python3 -P -m``). The package takes the folder off the path as its first act, before even a ``from __future__``
    import (which imports a module too: caught here only where Python has not loaded ``__future__`` already, as an
    editable install's path finder does); the same folder made the user's own stays first on it, as ``python -m``
    puts it (a worker's ``--import`` module found there)."""
    folder = shared_folder(tmp_path, mode)
    for planted in ("json.py", "__future__.py"):
        (folder / planted).write_text(MODULE)
    proc = run_as_module("status", "--all", "--json", env=cli_env, cwd=folder)
    assert proc.returncode == 0 and not (folder / "imported").exists(), proc.stderr
    (folder / "__future__.py").unlink()
    (folder / "json.py").rename(folder / "ourmod.py")
    os.chmod(folder, 0o755)
    assert run_as_module("worker", "--once", "--import", "ourmod", env=cli_env, cwd=folder).returncode == 75
    assert (folder / "imported").read_text() == "yes"
