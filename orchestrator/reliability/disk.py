"""Full disks and failing fsyncs.

``full_disk`` mounts a small tmpfs (when this process may mount, i.e. root on Linux) or,
failing that, limits file sizes with ``RLIMIT_FSIZE`` in a forked child, then writes until
the store refuses. It checks that every acknowledged submit is on disk and verifies, that
the refusal is ``STORAGE_ERROR`` (exit 10 on the command line), and that once space is freed
the store takes new work and the workers finish everything.

``failed_fsync`` makes ``fdatasync`` fail once inside an append: the append must raise,
the lines must be gone (a failed fsync is never taken as success, nor retried into one), and
the next append must land right after the last acknowledged line.
"""
from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.api import Orchestrator
from orchestrator.artifacts_source import SPARE_BYTES
from orchestrator.errors import OrchestratorError, StorageError
from orchestrator.integrity import verify_project
from orchestrator.reliability import handlers  # noqa: F401 - registers rel.* handlers
from orchestrator.reliability.common import FINAL_STATES, Project, progress, run_forked
from orchestrator.worker import Worker, WorkerSettings

# freed once the disk is full, like an operator clearing space: more than the store keeps free for its own writes (a
# worker claims no job with less: ``WorkerFolders.check_room``), and room for the runs of the jobs that filled it
BALLAST = SPARE_BYTES + 1024 * 1024


def _mount_tmpfs(where: Path, size: int) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(project: Project, payload_bytes: int, limit: int = 10_000) -> tuple[list[str], OrchestratorError | None]:
    orch = project.orch()
    acked: list[str] = []
    for i in range(limit):
        try:
            acked.append(orch.submit("rel.echo", {"i": i, "pad": "x" * payload_bytes}))
        except OrchestratorError as exc:
            return acked, exc
    return acked, None


def _cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], env=project.command_env(),
                          capture_output=True, text=True, timeout=60)


def _resume_and_check(project: Project, acked: list[str]) -> dict[str, Any]:
    # a day later: a worker that stopped on the full disk after its claim left a lease to expire first
    orch = project.orch(clock=lambda: time.time() + 86_400)
    present = set(orch.store.job_ids())
    missing = [j for j in acked if j not in present]
    after = orch.submit("rel.echo", {"after": "space freed"})
    worker = Worker(orch, WorkerSettings(worker_id="disk", retry_base_seconds=0))
    for _ in range(len(present) + 5):
        if worker.run_once() is None:
            break
    ids = sorted(orch.store.job_ids())
    return {"acked": len(acked), "acked_missing": len(missing), "resumed": orch.status(after).state == "succeeded",
            "unfinished": sum(orch.status(j).state not in FINAL_STATES for j in ids),
            "verify_ok": verify_project(orch).ok}


def full_disk(root: Path, size: int = BALLAST + 512 * 1024) -> dict[str, Any]:
    mnt = root / "disk" / "mnt"
    if _mount_tmpfs(mnt, size):
        try:
            base = mnt / "base"
            base.mkdir()
            project = Project(base)
            ballast = mnt / "ballast"
            ballast.write_bytes(b"\0" * BALLAST)
            acked, error = _fill(project, 2000)
            cli = _cli(project, "submit", "--kind", "rel.echo", "--input", '{"x": "' + "y" * 8000 + '"}', "--json")
            worker_cli = _cli(project, "worker", "--once")
            ballast.unlink()
            out = {"mode": "tmpfs", "worker_exit_while_full": worker_cli.returncode,
                   "worker_error": (worker_cli.stderr.strip().splitlines() or [""])[-1][:300],
                   **_resume_and_check(project, acked)}
        finally:
            _umount(mnt)
    else:
        out = _rlimit(root)
        cli = None
        error = out.pop("error")
    out["error_code"] = getattr(error, "code", None) if not isinstance(error, str) else error
    if cli is not None:
        out["cli_exit"] = cli.returncode
        # a worker on a full disk stops with STORAGE_ERROR (10) or, if it still found room, ran a job (0)
        out["worker_clear"] = out["worker_exit_while_full"] in (0, StorageError.exit_code)
        out["cli_clear"] = cli.returncode == StorageError.exit_code and StorageError.code in cli.stdout
    progress(f"full disk ({out['mode']}): {out['acked']} acked, {out['acked_missing']} missing, "
             f"error {out['error_code']}, resumed {out['resumed']}")
    return out


def _rlimit(root: Path, limit: int = 64 * 1024) -> dict[str, Any]:
    """Fallback without mount rights: a child whose files may not grow past ``limit`` bytes."""
    base = root / "disk" / "base"
    base.mkdir(parents=True)
    project = Project(base)
    result_file = root / "disk" / "result"

    def body() -> int:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        acked, error = _fill(project, limit // 4, limit=3)
        big_error = None
        try:
            project.orch().submit("rel.echo", {"pad": "x" * limit})
        except OrchestratorError as exc:
            big_error = exc.code
        result_file.write_text("\n".join([big_error or "none", *acked]))
        return 0

    run_forked(body)
    lines = result_file.read_text().splitlines()
    return {"mode": "rlimit_fsize", "error": lines[0], **_resume_and_check(project, lines[1:])}


def failed_fsync(root: Path, trials: int = 20) -> dict[str, Any]:
    """fdatasync fails once per trial: the append raises, its lines are gone, the next one lands cleanly.

    A build that breaks this (no ``fdatasync``, or one whose failure is ignored) is measured, not a traceback: an
    append acknowledged anyway is counted and its claim handed back, so every trial starts from a queued job; an
    append that never called ``fdatasync`` is counted (``never_synced``), and one refused for another reason too."""
    from orchestrator import audit as audit_log
    from orchestrator.store.base import AUDIT_STREAM

    base = root / "fsync" / "base"
    base.mkdir(parents=True)
    orch = Project(base).orch()
    job = orch.submit("rel.ask", {})
    raised = kept = bad_after = never_synced = refused = 0
    first_refusal = ""
    real = os.fdatasync
    for t in range(trials):
        path = orch.store.path(job if t % 2 == 0 else AUDIT_STREAM)
        before = _bytes(path)
        calls = [0]

        def failing(fd: int) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise OSError(errno.EIO, "injected fsync failure")
            real(fd)

        os.fdatasync = failing  # type: ignore[assignment]
        try:
            audit_log.record(orch, job_id=job, action="note", actor="rel", note=f"fsync trial {t}") if t % 2 else \
                _claim(orch, job, f"run-{t}")
        except StorageError:
            raised += 1
        except OrchestratorError as exc:  # neither acknowledged nor the storage error a failed fsync is
            refused += 1
            first_refusal = first_refusal or f"{exc.code}: {exc.message}"[:300]
        finally:
            os.fdatasync = real  # type: ignore[assignment]
        never_synced += calls[0] == 0
        kept += _bytes(path) != before
        # the next append works and chains onto the last acknowledged line
        if t % 2 == 0:
            if orch.status(job).state == "running":  # the claim was acknowledged anyway: handed back
                _release(orch, job, f"run-{t}")
            else:
                _claim(orch, job, f"ok-{t}")
                _release(orch, job, f"ok-{t}")
        bad_after += not verify_project(orch).ok
    out = {"trials": trials, "raised": raised, "acknowledged_anyway": trials - raised - refused, "lines_kept": kept,
           "verify_failures_after": bad_after, "never_synced": never_synced, "refused": refused,
           "first_refusal": first_refusal}
    progress(f"failed fsync: {raised}/{trials} appends raised STORAGE_ERROR, {kept} left lines behind, "
             f"{never_synced} never called fdatasync")
    return out


def _bytes(path: Path) -> bytes:
    return path.read_bytes() if path.exists() else b""  # the audit log, before its first entry


def _claim(orch: Orchestrator, job: str, run_id: str) -> None:
    view = orch.load(job)
    orch.append(view, job, [("job_claimed", {"worker_id": "w", "epoch": view.state.epoch + 1, "attempt": 1,
                                             "lease_expires_at": "2030-01-01T00:00:00Z"})], run_id=run_id)


def _release(orch: Orchestrator, job: str, run_id: str) -> None:
    orch.append(orch.load(job), job, [("job_released", {"error_code": "X", "worker_id": "w", "error": "back"})],
                run_id=run_id)
