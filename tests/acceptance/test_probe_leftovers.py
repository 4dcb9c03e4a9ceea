"""A worker killed inside its start-up probe (``WorkerFolders.probe``) leaves an empty ``artifacts/.probe-*`` folder:
stale recovery's sweep removes it once it is a stray (old, its process gone), never a live worker's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import run_script
from orchestrator.store.files import STRAY_AGE
from orchestrator.worker_folders import WorkerFolders
from worker_process_fixtures import env, orch  # noqa: F401  (fixtures)


def aged(path: Path) -> Path:
    old = time.time() - STRAY_AGE - 1
    os.utime(path, (old, old), follow_symlinks=False)
    return path


def test_a_probe_left_by_a_worker_killed_as_it_started_is_removed_by_the_next_worker(env, orch) -> None:
    # the probe's second folder (artifacts/, after runs/): the runs/ one was removed already
    crashed = run_script("worker", "--once", env={**env, "ORCH_CRASH_AT": "worker.probe.after_mkdir:2"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    artifacts = orch.settings.state_dir / "artifacts"
    (left,) = [p for p in artifacts.iterdir() if p.name.startswith(".probe-")]
    assert run_script("worker", "--once", env=env).returncode == 75
    assert left.exists()  # young: it could be a live worker's (its pid is gone here, but may live elsewhere)
    aged(left)
    assert run_script("worker", "--once", env=env).returncode == 75
    assert list(artifacts.iterdir()) == []  # before the fix: the probe stayed, one more per crash


def test_a_worker_killed_while_it_holds_its_spare_room_leaves_no_byte_of_it_behind(env, orch) -> None:
    """The probe writes the 1 MiB the store keeps into a file of its ``runs/`` folder: a worker killed before it
    removed it left the file, which only a started worker's sweep removes, and on a disk nearly full every worker
    after it refused to start (``no room for the 1.0 MiB ...``). The file cannot outlive its process now."""
    crashed = run_script("worker", "--once", env={**env, "ORCH_CRASH_AT": "worker.probe.room_written"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    runs = orch.settings.state_dir / "runs"
    left = {str(p.relative_to(runs)): p.stat().st_size for p in runs.rglob("*") if p.is_file()}
    assert sum(left.values()) == 0, left
    assert run_script("worker", "--once", env=env).returncode == 75


def test_only_old_empty_probes_whose_process_is_gone_or_is_the_sweeper_are_removed(tmp_path: Path) -> None:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(gone.stdout)
    live = subprocess.Popen(["sleep", "60"])
    try:
        old = [f".probe-{dead}-0a0a0a0a", f".probe-{os.getpid()}-0b0b0b0b", f".probe-{live.pid}-0c0c0c0c",
               f".probe-{dead}-0d0d0d0d", "job-not-a-probe", ".probe-x-0e0e0e0e"]
        for name in old:
            (artifacts / name).mkdir()
        (artifacts / f".probe-{dead}-0d0d0d0d" / "kept.txt").write_text("not the probe's")
        (artifacts / f".probe-{dead}-0f0f0f0f").write_text("a file, not a folder")
        for name in [*old, f".probe-{dead}-0f0f0f0f"]:
            aged(artifacts / name)
        (artifacts / f".probe-{dead}-01010101").mkdir()  # young: may be a probe of a worker in another pid space
        removed = WorkerFolders(tmp_path).sweep_probes()
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted([f".probe-{dead}-0a0a0a0a", f".probe-{os.getpid()}-0b0b0b0b"])
    assert sorted(p.name for p in artifacts.iterdir()) == sorted([
        f".probe-{live.pid}-0c0c0c0c", f".probe-{dead}-0d0d0d0d", "job-not-a-probe", ".probe-x-0e0e0e0e",
        f".probe-{dead}-0f0f0f0f", f".probe-{dead}-01010101"])


def test_a_probe_named_with_an_impossible_pid_is_no_probe_and_never_stops_a_worker(env, orch) -> None:
    # a command job can make these (``$ORCH_ARTIFACTS_DIR/../``); until the fix every worker start ended in a
    # traceback, exit 1: os.kill's OverflowError (a pid past C's int), int()'s ValueError (a superscript digit)
    artifacts = orch.settings.state_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    for name in (".probe-99999999999-abcd", ".probe-\u00b2-abcd", ".probe-4194305-abcd"):
        (artifacts / name).mkdir()
        aged(artifacts / name)
    started = run_script("worker", "--once", env=env)
    assert started.returncode == 75, started.stderr
    assert "Traceback" not in started.stderr
    assert sorted(p.name for p in artifacts.iterdir()) == [".probe-\u00b2-abcd"]  # not a probe's name: left
