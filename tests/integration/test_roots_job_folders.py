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
from helpers import as_user, folder_of, store_env_in

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
    by_root = subprocess.run([sys.executable, "-m", "orchestrator", "verify"], capture_output=True, text=True,
                             timeout=60, cwd=str(REPO), env={**store_env, "ORCH_KEYRING_DIR": str(tmp_path / "keys")})
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
