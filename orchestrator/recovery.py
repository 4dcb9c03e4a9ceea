"""Stale recovery: running jobs whose lease expired, and what killed workers left behind.

``Worker.recover_stale(now)`` calls ``recover_expired`` on every pass and, every
``SWEEP_EVERY`` seconds, ``reload_keys`` and ``sweep_leftovers``. Only the running index is
scanned. A job whose lease expired gets one ``stale_recovered`` event
(``NO_TERMINAL_SIGNAL_STALE``): to ``waiting_human`` if its run left artifacts, else queued
again with a backoff, or failed once its attempts are used up. See ``docs/worker.md``
(Stale recovery).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orchestrator import clock as clock_mod
from orchestrator.artifacts import recorded_names
from orchestrator.errors import ConcurrencyError, InvalidIdError, JobNotFoundError, PathEscapeError, SigningKeyError
from orchestrator.handler_host import sweep_dead_host_folders
from orchestrator.leases import LEASES_AREA, drop_lease_aux, lease_expiry
from orchestrator.leftovers import kill_run_processes
from orchestrator.payload import NO_TERMINAL_SIGNAL_STALE
from orchestrator.queue import QueueIndex, ReadyEntry
from orchestrator.runner import RUN_PREFIX, remove_run_folder
from orchestrator.security import sanitize_text
from orchestrator.state import QUEUED, RUNNING, WAITING_HUMAN, JobState
from orchestrator.untrusted import UntrustedJobs, running_mark

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator
    from orchestrator.worker_folders import WorkerFolders

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0  # how often stale recovery also removes what killed workers left behind and reads the keyring


def reload_keys(orch: Orchestrator) -> bool:
    """``Keyring.reload``, True if a key was added or revoked. A keyring file that cannot be read now (a
    ``.pub`` being written, or damaged since) stops nothing: the keys this worker trusts stay as they were,
    and it says so; a process started now would refuse that keyring (SIGNING_KEY_ERROR)."""
    try:
        return orch.keyring.reload()
    except SigningKeyError as exc:
        log.warning("the keyring could not be read again (%s); the keys read before stay in use", exc.message,
                    extra={"code": exc.code})
        return False


def recover_expired(orch: Orchestrator, queue: QueueIndex, now: float, *, actor: str,
                    backoff: Callable[[int], float], folders: WorkerFolders, untrusted: UntrustedJobs) -> list[str]:
    """Recover the running jobs whose lease expired at ``now``; returns their ids. ``backoff`` gives the delay
    of a retry after that many failures, ``folders`` the jobs' artifact folders (``Worker``'s).

    A job whose only problem is a key this worker does not hold is left as it is, its running entry kept, for
    a worker that holds the key to recover; ``untrusted`` (``Worker``'s) remembers it, so later passes do
    not read it again (``orchestrator/untrusted.py``)."""
    recovered = []
    for job_id, epoch in queue.running_entries():
        mark = running_mark(job_id, epoch)
        if untrusted.passes_over(mark, job_id):
            continue
        try:
            view = orch.load(job_id)
            if not view.ok and reload_keys(orch):  # a key made or revoked since this worker started
                view = orch.load(job_id)
        except (JobNotFoundError, InvalidIdError):  # no such job, or a name no job has (not an entry this code wrote)
            queue.drop_running(job_id, epoch)
            continue
        missing = view.missing_keys()
        if missing:  # whether it runs, and under which epoch, only a worker that holds those keys can tell
            untrusted.leave(mark, job_id, missing)
            continue
        s = view.state
        if not view.ok or s is None or s.state != RUNNING or epoch not in (None, s.epoch):
            if view.ok and s is not None and s.state == QUEUED:
                # the job is queued: make sure it has its ready entry (a crash, or a clock step, may have
                # left it without one); keep the entry of the next epoch, a claim that is being written
                queue.put_ready(ReadyEntry.for_state(s))
                if epoch == s.epoch + 1:
                    continue
            queue.drop_running(job_id, epoch)
            continue
        expiry = lease_expiry(orch.store, s, now)
        if expiry is not None and expiry > now:
            continue
        if recover(orch, view, s, expiry, now, actor=actor, backoff=backoff, folders=folders):
            recovered.append(job_id)
    return recovered


def recover(orch: Orchestrator, view: JobView, s: JobState, expiry: float | None, now: float, *, actor: str,
            backoff: Callable[[int], float], folders: WorkerFolders) -> bool:
    """Append the ``stale_recovered`` event of one job whose lease expired, after killing what its run left
    running on this machine; False if another worker recovered it first (or the run just finished)."""
    try:
        artifacts = run_artifacts(s, folders.artifacts_dir(s.job_id))
    except PathEscapeError as exc:
        if folders.linked():  # ``artifacts/`` itself: the store's fault, and the worker stops (as ``Worker.execute``)
            raise
        # the job's own folder leads out of the store: never walked (nor its files moved); the job's next run
        # fails on it (PATH_ESCAPE, not retried), as a run claimed with that folder does
        log.warning("job %s: its artifact folder is not looked at: %s", s.job_id, exc.message,
                    extra={"job_id": s.job_id, "code": exc.code})
        artifacts = []
    expired = clock_mod.to_iso(expiry) if expiry else None
    data: dict[str, Any] = {"error_code": NO_TERMINAL_SIGNAL_STALE, "stale_worker_id": s.worker_id,
                            "lease_expired_at": expired, "artifacts": artifacts}
    why = f"worker {s.worker_id} stopped renewing its lease (expired {expired}) and left no terminal payload"
    if artifacts:
        data.update(to=WAITING_HUMAN, question=(
            f"Run {s.run_id} ended without a terminal payload but left {len(artifacts)} artifact(s): "
            f"{', '.join(artifacts[:5])}. Check them, then resume with what to do next."))
    elif s.failures + 1 < s.max_attempts:
        data.update(to=QUEUED, retry_at=clock_mod.to_iso(now + backoff(s.failures + 1)))
    else:
        data.update(to="failed")
    data["error"] = sanitize_text(why)
    killed = kill_run_processes(s.run_id)  # on this machine: what the run left running must not meet its retry
    if killed:
        log.warning("killed %d process(es) left by run %s of job %s", len(killed), s.run_id, s.job_id,
                    extra={"job_id": s.job_id, "run_id": s.run_id, "pids": killed})
    try:  # the dead run's lease is dropped with the event (in its transaction where the store can)
        orch.append(view, s.job_id, [("stale_recovered", data)], run_id=s.run_id, actor=actor,
                    now=now, audit=("stale_recovered", f"{why}; to {data['to']}"),
                    fence=s.epoch + 1,  # supersedes the dead run's epoch
                    aux=drop_lease_aux(s.job_id, s.epoch))
    except ConcurrencyError:
        return False  # another worker recovered it, or the run finished just now
    log.warning("recovered stale job %s -> %s", s.job_id, data["to"],
                extra={"job_id": s.job_id, "run_id": s.run_id, "stale_worker_id": s.worker_id})
    return True


def run_artifacts(s: JobState, root: Path) -> list[str]:
    """Files in the job's folder (``root``) written since the run was claimed: what a dead run left behind, named
    as stored (sanitized: a file name may hold a secret, ``token=...``; the file is moved to match)."""
    claimed = [ts for etype, ts in s.history if etype == "job_claimed"]
    since = clock_mod.from_iso(claimed[-1]) if claimed else 0.0
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            try:
                if path.stat().st_mtime >= since - 1.0:  # mtime granularity
                    found.append(path.relative_to(root).as_posix())
            except OSError:
                continue
    return sorted(recorded_names(root, sorted(found)))[:100]  # moved once the walk is over


def sweep_leftovers(orch: Orchestrator, queue: QueueIndex, runs_root: Path) -> None:
    """The handler folders of workers killed before their ``close``, and the run folders and lease
    records of runs that are over."""
    swept = sweep_dead_host_folders(runs_root)
    if swept:
        log.info("removed %d handler folder(s) of workers that are gone", len(swept), extra={"folders": swept})
    sweep_left_over_runs(orch, queue, runs_root)
    sweep_left_over_leases(orch)


def sweep_left_over_runs(orch: Orchestrator, queue: QueueIndex, runs_root: Path) -> list[str]:
    """Remove the ``runs/run-*`` folders of runs that are over. A run's folder is removed by its
    worker once the outcome is recorded; a worker killed before that (SIGKILL, a crash) leaves it,
    with the raw output, context and payload of the run. A run is over unless its job is running
    under that run id now; the folders are listed before the running jobs are read, and a run's
    folder is made only after its claim (and its running entry) is written, so a folder listed
    here whose run is live is seen as running. A run the events say is over but whose handler
    still runs (a worker paused past its lease, a cancel not yet noticed) holds its output's
    lock, and its folder stays (``remove_run_folder``). So the running jobs are read here again
    rather than taken from this pass's recovery, which read them before the listing."""
    try:
        names = [n for n in os.listdir(runs_root) if n.startswith(RUN_PREFIX)]
    except OSError:
        return []
    if not names:
        return []
    live = set()
    for job_id, _epoch in queue.running_entries():
        try:
            s = orch.load(job_id).state
        except (JobNotFoundError, InvalidIdError):
            continue
        if s is not None and s.state == RUNNING:  # even unverified: its run may be live
            live.add(s.run_id)
    removed = [n for n in names if n not in live and remove_run_folder(runs_root / n)]
    if removed:
        log.info("removed %d run folder(s) of runs that are over", len(removed), extra={"folders": removed})
    return removed


def sweep_left_over_leases(orch: Orchestrator) -> list[str]:
    """Remove the lease records of runs that are over. An outcome drops its run's record right
    after its event on files (with it on PostgreSQL), so a worker killed in between leaves one
    behind: harmless (a record counts only for the epoch that runs), but never read again. A
    record of the epoch that runs now is kept; so is every record of a job that fails
    verification (an operator's evidence)."""
    removed = []
    for key in orch.store.aux_keys(LEASES_AREA):
        job_id, _, epoch = key.rpartition(".")
        if not epoch.isdigit() or not job_id:
            continue
        try:
            view: JobView | None = orch.load(job_id)
        except JobNotFoundError:
            view = None
        except InvalidIdError:  # not a job id: not a record this code wrote
            continue
        if view is not None and not view.ok:
            continue
        s = view.state if view is not None else None
        if s is None or s.state != RUNNING or s.epoch != int(epoch):
            orch.store.delete_aux(LEASES_AREA, key)
            removed.append(key)
    if removed:
        log.info("removed %d lease record(s) of runs that are over", len(removed), extra={"leases": removed})
    return removed
