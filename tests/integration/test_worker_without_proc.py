"""A worker that is not root, on a system without ``/proc`` (a chroot, a container without it), gives a job back the
folder its run took its owner's bits from (``chmod 077``), and runs it: ``run_folder.set_folder_mode`` changed such
a folder through ``/proc/self/fd`` only, and until 2026-12-07 the worker stopped, exit 10, ``/proc/self/fd/3: No such
file or directory``, as did every worker that claimed the job."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO
from helpers import folder_of, store_env_in

STORE_USER = 12345  # no user of the test machine: the test runs as root, who may chown to it and setpriv as it
DONE = 'printf \'{"status":"done","summary":"ok"}\' > "$ORCH_TERMINAL_FILE"'
# the first run leaves its folder 077 (its owner nothing, others everything) and fails; the retry finds "ran"
CHMOD_077_THEN_DONE = f'if [ -e ran ]; then {DONE}; else touch ran; chmod 077 "$ORCH_ARTIFACTS_DIR"; exit 3; fi'


@pytest.fixture
def store_env() -> Iterator[dict[str, str]]:
    """The environment of a store ``STORE_USER`` owns, under ``/tmp`` (pytest's ``tmp_path`` is root's alone)."""
    with folder_of(STORE_USER, "orch-no-proc-") as top:
        yield store_env_in(top, ORCH_RETRY_BASE_SECONDS="0.01")


def as_store_user(*args: str, env: dict[str, str], without_proc: bool = False) -> subprocess.CompletedProcess:
    """``python -m orchestrator ARGS`` run by ``STORE_USER``; ``without_proc``: in a mount namespace of its own whose
    ``/proc`` is an empty folder (``unshare``; the test's own ``/proc`` is left as it is)."""
    command = ["setpriv", "--reuid", str(STORE_USER), "--regid", str(STORE_USER), "--clear-groups", sys.executable,
               "-m", "orchestrator", *args]
    if without_proc:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs tmpfs /proc && exec "$@"', "sh", *command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=str(REPO))


@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("setpriv") and shutil.which("unshare")),
                    reason="a worker that is not root, without /proc: only root can set one up (setpriv, unshare)")
def test_a_worker_that_is_not_root_without_proc_gives_a_job_back_the_folder_its_run_made_077_and_runs_it(
        store_env: dict[str, str]) -> None:
    submitted = as_store_user("submit", "--kind", "command", "--input",
                              json.dumps({"argv": ["sh", "-c", CHMOD_077_THEN_DONE]}), env=store_env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    folder = Path(store_env["BASE_PATH"]) / "proj" / ".orchestrator" / "artifacts" / job
    first = as_store_user("worker", "--once", env=store_env)
    assert first.returncode == 0 and stat.S_IMODE(os.lstat(folder).st_mode) == 0o077, first.stderr
    time.sleep(0.1)  # the retry's backoff
    second = as_store_user("worker", "--once", "--json", env=store_env, without_proc=True)
    assert second.returncode == 0, second.stdout + second.stderr  # before the fix: 10, /proc/self/fd/3: No such file
    assert json.loads(second.stdout.splitlines()[-1])["state"] == "succeeded"
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700 and (folder / "ran").is_file()
    assert f"{folder} was not its owner's to use in full (mode 77, a run's chmod)" in second.stderr
