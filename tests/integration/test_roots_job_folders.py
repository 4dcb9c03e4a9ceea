"""A job's folder root owns (made by something run as root: a worker, a copy or a restore) under a worker that is not
root: the worker may neither make it its own nor run a job in it, so it hands the job back naming the ``chown`` to run
as root, and ``verify`` warns of it before any worker claims the job. Until 2026-12-07 a folder of mode 700 (or 000)
stopped the worker with a plain "permission denied", one of 755 with advice (``chmod 700``, as root) that left it
as unusable, and ``verify`` said nothing of either."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO
from helpers import as_user, folder_of, run_module, store_env_in

STORE_USER = 12345  # no user of the test machine: the tests run as root, who may chown to it and setpriv as it
DONE = 'printf \'{"status":"done","summary":"ok"}\' > "$ORCH_TERMINAL_FILE"'

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="a worker that is not root and a folder of root's: only root can set both up")


def as_store_user(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m orchestrator ARGS`` run by ``STORE_USER`` (``setpriv``), as a worker that is not root runs."""
    return as_user(STORE_USER, *args, env=env)


@pytest.fixture
def store_env() -> Iterator[dict[str, str]]:
    """The environment of a store ``STORE_USER`` owns, under ``/tmp`` (pytest's ``tmp_path`` is root's alone)."""
    with folder_of(STORE_USER, "orch-roots-folder-") as top:
        yield store_env_in(top)


def job_with_roots_folder(env: dict[str, str], mode: int) -> tuple[str, Path]:
    """A job the store's user submitted, whose folder (``artifacts/<job_id>``) root made, of ``mode``."""
    submitted = as_store_user("submit", "--kind", "command", "--input", json.dumps({"argv": ["sh", "-c", DONE]}),
                              env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    artifacts = Path(env["BASE_PATH"]) / "proj" / ".orchestrator" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    os.chown(artifacts, STORE_USER, STORE_USER)
    folder = artifacts / job
    folder.mkdir()
    os.chmod(folder, mode)  # root's: the test runs as root
    return job, folder


@pytest.mark.parametrize("mode", [0o700, 0o755, 0o000], ids=["700", "755", "000"])
def test_a_worker_that_is_not_root_hands_back_a_job_whose_folder_root_owns_naming_the_chown_to_run_as_root(
        store_env: dict[str, str], mode: int) -> None:
    """Before the fix: 700 and 000, ``... permission denied; run the command as the store's owner, or fix the owner
    and mode`` (whose folder, and what to run, unsaid); 755, ``as its owner (uid 0) run: chmod 700``, after which
    the folder is no more usable than before."""
    job, folder = job_with_roots_folder(store_env, mode)
    ran = as_store_user("worker", "--once", env=store_env)
    assert ran.returncode == 10, ran.stdout + ran.stderr
    assert ran.stderr.startswith(f"error[STORAGE_ERROR]: {folder} is owned by root (mode {mode:03o}), not by this user "
                                 f"(uid {STORE_USER})"), ran.stderr
    assert ran.stderr.rstrip().endswith(f"no job is run in it; check what it holds, then, as root: chown -R "
                                        f"{STORE_USER} {folder}"), ran.stderr
    shown = as_store_user("status", job, "--json", env=store_env)
    assert json.loads(shown.stdout)["state"] == "queued", shown.stdout + shown.stderr  # handed back, no attempt used
    assert os.stat(folder).st_uid == 0 and stat.S_IMODE(os.stat(folder).st_mode) == mode  # left as it is


@pytest.mark.parametrize("mode", [0o700, 0o755], ids=["700", "755"])
def test_verify_warns_of_a_job_folder_root_owns_which_the_stores_worker_would_refuse(
        store_env: dict[str, str], mode: int, tmp_path: Path) -> None:
    """Run by the store's user and by root (an auditor, judging for the owner of ``.orchestrator``): before the fix
    neither said anything, root being trusted as an owner like this user."""
    job, folder = job_with_roots_folder(store_env, mode)
    by_root = run_module("verify", env={**store_env, "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    for shown, user in ((as_store_user("verify", env=store_env), f"this user (uid {STORE_USER})"),
                        (by_root, f"uid {STORE_USER}")):
        assert shown.returncode == 0, shown.stdout + shown.stderr
        warnings = [line for line in shown.stdout.splitlines() if line.startswith("warning: ")]
        assert len(warnings) == 1, shown.stdout
        assert warnings[0].startswith(f"warning: {folder}:0: STORE_FOLDER_LOOSE: {folder} is owned by root (mode "
                                      f"{mode:03o}), not by {user}: a worker run by {user} refuses to run the job in "
                                      f"it"), warnings[0]
        assert warnings[0].endswith(f"as root: chown -R {STORE_USER} {folder}"), warnings[0]
    assert os.stat(folder).st_uid == 0 and stat.S_IMODE(os.stat(folder).st_mode) == mode  # nothing changed


def store_with_roots_folder(env: dict[str, str], which: str, mode: int) -> Path:
    """The store's folder ``which`` (".orchestrator", "runs", "artifacts" or "project"), made root's of ``mode`` (as
    something run as root leaves it), with a job queued; the other folders are the store's user's."""
    submitted = as_store_user("submit", "--kind", "command", "--input", json.dumps({"argv": ["sh", "-c", DONE]}),
                              env=env)
    assert submitted.returncode == 0, submitted.stderr
    project = Path(env["BASE_PATH"]) / "proj"
    for name in ("runs", "artifacts"):
        (project / ".orchestrator" / name).mkdir(exist_ok=True)
        os.chown(project / ".orchestrator" / name, STORE_USER, STORE_USER)
    state = project / ".orchestrator"
    folder = {"project": project, ".orchestrator": state}.get(which, state / which)
    os.chown(folder, 0, 0)
    os.chmod(folder, mode)
    return folder


@pytest.mark.parametrize("which", [".orchestrator", "runs", "artifacts"])
def test_a_worker_that_is_not_root_refuses_to_start_in_a_store_folder_root_owns_naming_the_chown_to_run_as_root(
        store_env: dict[str, str], which: str, tmp_path: Path) -> None:
    """Before the fix: ``<folder or a folder in it>: permission denied; run the command as the store's owner, or fix
    the owner and mode`` (whose folder, and what to run, unsaid), and ``verify`` said nothing."""
    folder = store_with_roots_folder(store_env, which, 0o755)
    ran = as_store_user("worker", "--once", env=store_env)
    assert ran.returncode == 10, ran.stdout + ran.stderr
    assert ran.stderr.startswith(f"error[STORAGE_ERROR]: {folder} is owned by root (mode 755), not by this user (uid "
                                 f"{STORE_USER}), who may not write in it"), ran.stderr
    assert ran.stderr.rstrip().endswith(f"no job is run; check what it holds (verify), then, as root: chown -R "
                                        f"{STORE_USER} {folder}, or run the worker as root"), ran.stderr
    by_root = run_module("verify", env={**store_env, "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
    verifies = [(as_store_user("verify", env=store_env), f"this user (uid {STORE_USER})")]
    if which != ".orchestrator":  # root's verify judges a store whose .orchestrator root owns for root (store_user)
        verifies.append((by_root, f"uid {STORE_USER}"))
    for shown, user in verifies:
        assert shown.returncode == 0, shown.stdout + shown.stderr
        warnings = [line for line in shown.stdout.splitlines() if line.startswith("warning: ")]
        assert warnings == [f"warning: {folder}:0: STORE_FOLDER_LOOSE: {folder} is owned by root (mode 755), not by "
                            f"{user}, who may not write in it, as a worker must (the store's files, its runs, its "
                            f"jobs' folders): a worker run by {user} refuses to run jobs (STORAGE_ERROR, exit 10); "
                            f"check what it holds, then, as root: chown -R {STORE_USER} {folder}, or run the worker as "
                            f"root"], shown.stdout
    assert os.stat(folder).st_uid == 0 and stat.S_IMODE(os.stat(folder).st_mode) == 0o755  # left as it is


def test_a_project_folder_root_owns_or_a_store_folder_of_roots_its_user_may_write_is_no_error(
        store_env: dict[str, str]) -> None:
    """A worker writes nothing in the project folder (root may keep it, ``.orchestrator`` being the user's); a folder
    of root's that the worker's user may write (here through root's group, which it is in) is used as it is."""
    folder = store_with_roots_folder(store_env, "project", 0o755)
    ran = as_store_user("worker", "--once", env=store_env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "warning: " not in as_store_user("verify", env=store_env).stdout
    os.chown(folder, STORE_USER, STORE_USER)
    runs = store_with_roots_folder(store_env, "runs", 0o775)  # root:root, group-writable: root's group is root's own
    in_roots_group = ["setpriv", "--reuid", str(STORE_USER), "--regid", str(STORE_USER), "--groups", "0",
                      sys.executable, "-m", "orchestrator"]
    for args in (["worker", "--once"], ["verify"]):
        shown = subprocess.run([*in_roots_group, *args], env=store_env, capture_output=True, text=True, timeout=60,
                               cwd=str(REPO))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "warning: " not in shown.stdout and "error" not in shown.stderr, shown.stdout + shown.stderr
    assert os.stat(runs).st_uid == 0
