"""The worker: recover stale runs, claim a job, run its handler, record the outcome.

Every decision takes ``now`` (``recover_stale(now)``, ``claim(now)``, ``run_once(now)``);
only the loop reads the clock. The event log stays the truth:

* a claim is an append of ``job_claimed`` with the expected sequence the worker read, so of
  several workers only one wins; it carries a fencing ``epoch`` one higher than the last;
* the outcome is appended with the sequence seen at claim time, so if anything else was
  written meanwhile (stale recovery by another worker, a cancel), the append fails and the
  worker re-reads: a different epoch means its lease was taken over and its late result is
  refused (``LEASE_LOST``);
* heartbeats renew a lease record outside the log (``orchestrator/leases.py``); a run shorter
  than a heartbeat needs none, the claim event carries the first expiry.

See ``docs/worker.md`` for the design and a crash analysis.
"""
from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import socket
import stat
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from orchestrator import audit as audit_log
from orchestrator import clock as clock_mod
from orchestrator import faults
from orchestrator.api import JobView, Orchestrator
from orchestrator.artifacts import recorded_names
from orchestrator.config import (DEFAULT_HANDLER_MAX_RUNS, DEFAULT_HANDLER_PROCESS, DEFAULT_LEASE_SECONDS,
                                 DEFAULT_RETRY_BASE_SECONDS, DEFAULT_RETRY_MAX_SECONDS, DEFAULT_STOP_GRACE_SECONDS,
                                 DEFAULT_STORE_WAIT_SECONDS, HANDLER_PROCESS_MODES, MAX_LEASE_SECONDS,
                                 MIN_LEASE_SECONDS)
from orchestrator.errors import (ConcurrencyError, HandlerNotFoundError, InvalidIdError, InvalidInputError,
                                 JobNotFoundError, LeaseLostError, MalformedPayloadError, PathEscapeError,
                                 SigningKeyError, StorageUnavailableError)
from orchestrator.handlers import RunPaths, call_python_handler, import_modules, lookup, registry_generation, resolve
from orchestrator.leases import LEASES_AREA, Lease, drop_lease_aux, lease_expiry, write_lease
from orchestrator.leftovers import end_exited_run, kill_run, kill_run_processes
from orchestrator.limits import MAX_DURATION_SECONDS
from orchestrator.payload import DONE, FAILED, NEEDS_AUDIT, Payload, parse_payload
from orchestrator.queue import ReadyEntry
from orchestrator.runner import (HOST_PREFIX, Child, HandlerHost, precise_sleeps, remove_run_folder,
                                 sanitized_tail, sweep_dead_host_folders)
from orchestrator.security import one_line, safe_join, sanitize_obj, sanitize_text, validate_id
from orchestrator.store.files import check_folders, linked_folder_error
from orchestrator.state import QUEUED, RUNNING, WAITING_HUMAN, JobState

log = logging.getLogger(__name__)

IDLE_MAX_WAIT = 30.0  # an idle worker still wakes this often to look for stale leases
# A worker that has reached its store waits this long, doubling up to the maximum, before it tries
# again after losing it (a PostgreSQL restart): it stays up instead of exiting with the fleet.
STORE_RETRY_FIRST_SECONDS, STORE_RETRY_MAX_SECONDS = 0.2, 5.0
HEARTBEAT_RETRY_SECONDS = 1.0  # a heartbeat the store missed is tried again this soon (at most a beat later)
SWEEP_EVERY = 60.0  # how often stale recovery also removes what killed workers left behind and reads the keyring
ORPHAN_ENTRY_GRACE = 60.0  # a ready entry whose job has no event yet is kept this long (submit in flight)
EVENT_IN_FLIGHT = 1.0  # an entry this young whose job's event is not there yet: its writer is probably at it
KNOWN_VIEWS = 128  # jobs a worker left unfinished (a question, an audit, a retry) whose last view it keeps
KNOWN_VIEW_MAX_BYTES = 64 * 1024  # ...if their events take no more than this (inputs may be up to 1 MiB)
EVENT_WAIT = 0.05  # how long a claimer waits for that event (the wait ends the moment the line is written)
OUTPUT_TAIL_BYTES = 4000
RUNS_DIR = "runs"
RUN_PREFIX = "run-"  # runs/run-<16 hex>: one run's folder (runs/host-*: a worker's handler process)
ARTIFACTS_DIR = "artifacts"
WORKER_FOLDERS = ("", RUNS_DIR, ARTIFACTS_DIR)  # under the state dir, on any store: checked when a worker starts

NO_TERMINAL_SIGNAL_EXIT = "NO_TERMINAL_SIGNAL_EXIT"
NO_TERMINAL_SIGNAL_TIMEOUT = "NO_TERMINAL_SIGNAL_TIMEOUT"
NO_TERMINAL_SIGNAL_STALE = "NO_TERMINAL_SIGNAL_STALE"


class WorkerStop(BaseException):
    """Raised inside the worker's waits by SIGTERM/SIGINT; a BaseException so no ``except Exception`` eats it."""


@dataclass(frozen=True)
class WorkerSettings:
    """Worker options; each has an ``ORCH_*`` variable on the command line (see ``orchestrator worker -h``)."""

    worker_id: str | None = None
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    stop_grace_seconds: float = DEFAULT_STOP_GRACE_SECONDS
    retry_base_seconds: float = DEFAULT_RETRY_BASE_SECONDS
    retry_max_seconds: float = DEFAULT_RETRY_MAX_SECONDS
    imports: tuple[str, ...] = ()
    artifacts_import: bool = False  # ORCH_ARTIFACTS_IMPORT: copy artifacts named by input "artifacts_from"
    handler_process: str = DEFAULT_HANDLER_PROCESS  # "reused" (one HandlerHost) or "per-run" (a fork per run)
    handler_max_runs: int = DEFAULT_HANDLER_MAX_RUNS  # runs one reused handler process serves, then a new one
    store_wait_seconds: float = DEFAULT_STORE_WAIT_SECONDS  # run_once: a store lost in recovery or claim, retried

    def __post_init__(self) -> None:
        if self.handler_process not in HANDLER_PROCESS_MODES:
            raise InvalidInputError(f"handler_process must be one of {', '.join(HANDLER_PROCESS_MODES)}, "
                                    f"not {self.handler_process!r}")
        if self.handler_max_runs < 1:
            raise InvalidInputError("handler_max_runs must be at least 1")
        # a lease's heartbeats are trusted up to MAX_LEASE_SECONDS (leases.lease_expiry); the other durations
        # up to a year: NaN fails both comparisons, inf or a huge value would overflow the ISO timestamps
        for name, least, most in (("lease_seconds", MIN_LEASE_SECONDS, MAX_LEASE_SECONDS),
                                  ("stop_grace_seconds", 0.0, MAX_DURATION_SECONDS),
                                  ("retry_base_seconds", 0.0, MAX_DURATION_SECONDS),
                                  ("retry_max_seconds", 0.0, MAX_DURATION_SECONDS),
                                  ("store_wait_seconds", 0.0, MAX_DURATION_SECONDS)):
            value = getattr(self, name)
            if not least <= value <= most:
                raise InvalidInputError(f"{name} must be a number of seconds from {least:g} to {most:.0f}, "
                                        f"not {value!r}")


@dataclass(frozen=True)
class Claim:
    view: JobView
    run_id: str
    epoch: int
    renewed: bool = False  # a heartbeat of this run wrote its lease record, which the outcome drops (_supervise)

    @property
    def job_id(self) -> str:
        return self.view.job_id

    @property
    def state(self) -> JobState:
        assert self.view.state is not None
        return self.view.state


@dataclass
class RunResult:
    """What one run ended as: the job's new state and how it got there."""

    job_id: str
    run_id: str
    outcome: str  # succeeded, awaiting_audit, waiting_human, retry, failed, timeout, released, lease_lost
    state: str | None
    error_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Unhandled:
    """Queued jobs of one kind that a claim left for another worker, and why this one has no handler for it."""

    reason: str
    job_ids: set[str] = field(default_factory=set)


def new_run_id() -> str:
    return RUN_PREFIX + os.urandom(8).hex()


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"


class Worker:
    """Runs jobs of one project; ``run_once`` for one job, ``run`` for the loop."""

    def __init__(self, orch: Orchestrator, settings: WorkerSettings | None = None, *,
                 rng: random.Random | None = None) -> None:
        self.orch = orch
        self.settings = settings or WorkerSettings()
        self.worker_id = validate_id(self.settings.worker_id or default_worker_id(), "worker id")
        self.actor = f"worker:{self.worker_id}"
        self.rng = rng or random.Random()
        self.queue = orch.queue
        self.next_due: float | None = None  # earliest delayed job this worker could run
        self._stop_at: float | None = None
        self._in_wait = False
        self._warned_kinds: set[str] = set()
        self.unhandled: dict[str, Unhandled] = {}  # kind -> the jobs the last claim left queued for want of a handler
        self._host: HandlerHost | None = None
        self._known: OrderedDict[str, tuple[JobView, Any]] = OrderedDict()  # see ``_remember``
        self._runs_root: Path | None = None
        self._artifacts_root: str | None = None  # ``artifacts_dir``: the folder's path,
        self._artifacts_root_id: tuple[int, int] | None = None  # ...and the (device, inode) last checked in full
        self._next_sweep = 0.0  # time.monotonic() of the next sweep of leftovers (the first recovery does one)
        self._reached = False  # run_once reached the store once: losing it from then on is waited out (a while)
        check_folders(orch.settings.state_dir, WORKER_FOLDERS)  # a link: PATH_ESCAPE before any job is claimed
        import_modules(self.settings.imports)

    # -- paths ----------------------------------------------------------------------------------
    def artifacts_dir(self, job_id: str) -> Path:
        """``artifacts/<job_id>``, never outside the store. Resolving it (``safe_join``: two ``realpath``
        walks) cost ~0.2 ms per run, so it is resolved in full only when something is not as last
        checked: the ``artifacts`` folder must be the very folder (device, inode) that passed the full
        check; the job's folder must not be a symlink (or not exist yet). ``artifacts`` itself is never
        a symlink (``PathEscapeError``), wherever it leads: one planted while the worker runs is met here."""
        if self._artifacts_root is None:  # the path only: what it leads to is checked below, every time
            self._artifacts_root = os.path.join(self.orch.settings.state_dir, ARTIFACTS_DIR)
        root = self._artifacts_root
        path = os.path.join(root, validate_id(job_id))  # an id is one plain name
        try:
            st: os.stat_result | None = os.lstat(root)
        except FileNotFoundError:
            return Path(path)  # no folder yet: the handler makes real ones, inside the store
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise linked_folder_error(root)
        real_dir = st is not None and stat.S_ISDIR(st.st_mode)
        if real_dir and (st.st_dev, st.st_ino) == self._artifacts_root_id:  # type: ignore[union-attr]
            try:
                if not stat.S_ISLNK(os.lstat(path).st_mode):
                    return Path(path)
            except FileNotFoundError:
                return Path(path)
            except OSError:
                pass
        checked = safe_join(self.orch.settings.state_dir, ARTIFACTS_DIR, job_id)  # PathEscapeError if out
        if real_dir:
            self._artifacts_root_id = (st.st_dev, st.st_ino)  # type: ignore[union-attr]
        return checked

    @property
    def runs_root(self) -> Path:
        """``runs/``, checked once (it must not lead out of the store)."""
        if self._runs_root is None:
            self._runs_root = safe_join(self.orch.settings.state_dir, RUNS_DIR)
        return self._runs_root

    def run_dir(self, run_id: str) -> Path:
        """``runs/<run_id>``: a run id is this worker's own random name, so its folder is not resolved
        again on every run."""
        return self.runs_root / validate_id(run_id, "run id")

    # -- stale recovery -----------------------------------------------------------------------
    def recover_stale(self, now: float | None = None) -> list[str]:
        """Recover running jobs whose lease expired; only the running index is scanned. Now and then,
        also remove what killed workers left behind (``_sweep_leftovers``) and read the keyring folders
        again (``Keyring.reload``): a worker whose key was revoked since it started then refuses to write
        (SIGNING_KEY_ERROR)."""
        now = self.orch.clock() if now is None else now
        self.queue.ensure_built(self.orch)
        recovered = self._recover_expired(now)
        if time.monotonic() >= self._next_sweep:  # after the recoveries: the runs they ended are over
            self._next_sweep = time.monotonic() + SWEEP_EVERY
            self._reload_keys()
            self._sweep_leftovers()
        return recovered

    def _reload_keys(self) -> bool:
        """``Keyring.reload``, True if a key was added or revoked. A keyring file that cannot be read now (a
        ``.pub`` being written, or damaged since) stops nothing: the keys this worker trusts stay as they were,
        and it says so; a process started now would refuse that keyring (SIGNING_KEY_ERROR)."""
        try:
            return self.orch.keyring.reload()
        except SigningKeyError as exc:
            log.warning("the keyring could not be read again (%s); the keys read before stay in use", exc.message,
                        extra={"code": exc.code})
            return False

    def _recover_expired(self, now: float) -> list[str]:
        recovered = []
        for job_id, epoch in self.queue.running_entries():
            try:
                view = self.orch.load(job_id)
                if not view.ok and self._reload_keys():  # a key made or revoked since this worker started
                    view = self.orch.load(job_id)
            except JobNotFoundError:
                self.queue.drop_running(job_id, epoch)
                continue
            s = view.state
            if not view.ok or s is None or s.state != RUNNING or epoch not in (None, s.epoch):
                if view.ok and s is not None and s.state == QUEUED:
                    # the job is queued: make sure it has its ready entry (a crash, or a clock step, may have
                    # left it without one); keep the entry of the next epoch, a claim that is being written
                    self.queue.put_ready(ReadyEntry.for_state(s))
                    if epoch == s.epoch + 1:
                        continue
                self.queue.drop_running(job_id, epoch)
                continue
            expiry = lease_expiry(self.orch.store, s, now)
            if expiry is not None and expiry > now:
                continue
            if self._recover(view, s, expiry, now):
                recovered.append(job_id)
        return recovered

    def _sweep_leftovers(self) -> None:
        """The handler folders of workers killed before their ``close``, and the run folders and lease
        records of runs that are over."""
        swept = sweep_dead_host_folders(self.runs_root)
        if swept:
            log.info("removed %d handler folder(s) of workers that are gone", len(swept), extra={"folders": swept})
        self._sweep_left_over_runs()
        self._sweep_left_over_leases()

    def _sweep_left_over_runs(self) -> list[str]:
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
            names = [n for n in os.listdir(self.runs_root) if n.startswith(RUN_PREFIX)]
        except OSError:
            return []
        if not names:
            return []
        live = set()
        for job_id, _epoch in self.queue.running_entries():
            try:
                s = self.orch.load(job_id).state
            except (JobNotFoundError, InvalidIdError):
                continue
            if s is not None and s.state == RUNNING:  # even unverified: its run may be live
                live.add(s.run_id)
        removed = [n for n in names if n not in live and remove_run_folder(self.runs_root / n)]
        if removed:
            log.info("removed %d run folder(s) of runs that are over", len(removed), extra={"folders": removed})
        return removed

    def _sweep_left_over_leases(self) -> list[str]:
        """Remove the lease records of runs that are over. An outcome drops its run's record right
        after its event on files (with it on PostgreSQL), so a worker killed in between leaves one
        behind: harmless (a record counts only for the epoch that runs), but never read again. A
        record of the epoch that runs now is kept; so is every record of a job that fails
        verification (an operator's evidence)."""
        removed = []
        for key in self.orch.store.aux_keys(LEASES_AREA):
            job_id, _, epoch = key.rpartition(".")
            if not epoch.isdigit() or not job_id:
                continue
            try:
                view: JobView | None = self.orch.load(job_id)
            except JobNotFoundError:
                view = None
            except InvalidIdError:  # not a job id: not a record this code wrote
                continue
            if view is not None and not view.ok:
                continue
            s = view.state if view is not None else None
            if s is None or s.state != RUNNING or s.epoch != int(epoch):
                self.orch.store.delete_aux(LEASES_AREA, key)
                removed.append(key)
        if removed:
            log.info("removed %d lease record(s) of runs that are over", len(removed), extra={"leases": removed})
        return removed

    def _recover(self, view: JobView, s: JobState, expiry: float | None, now: float) -> bool:
        artifacts = self._run_artifacts(s)
        expired = clock_mod.to_iso(expiry) if expiry else None
        data: dict[str, Any] = {"error_code": NO_TERMINAL_SIGNAL_STALE, "stale_worker_id": s.worker_id,
                                "lease_expired_at": expired, "artifacts": artifacts}
        why = f"worker {s.worker_id} stopped renewing its lease (expired {expired}) and left no terminal payload"
        if artifacts:
            data.update(to=WAITING_HUMAN, question=(
                f"Run {s.run_id} ended without a terminal payload but left {len(artifacts)} artifact(s): "
                f"{', '.join(artifacts[:5])}. Check them, then resume with what to do next."))
        elif s.failures + 1 < s.max_attempts:
            data.update(to=QUEUED, retry_at=clock_mod.to_iso(now + self.backoff(s.failures + 1)))
        else:
            data.update(to="failed")
        data["error"] = sanitize_text(why)
        killed = kill_run_processes(s.run_id)  # on this machine: what the run left running must not meet its retry
        if killed:
            log.warning("killed %d process(es) left by run %s of job %s", len(killed), s.run_id, s.job_id,
                        extra={"job_id": s.job_id, "run_id": s.run_id, "pids": killed})
        try:  # the dead run's lease is dropped with the event (in its transaction where the store can)
            self.orch.append(view, s.job_id, [("stale_recovered", data)], run_id=s.run_id, actor=self.actor,
                             now=now, audit=("stale_recovered", f"{why}; to {data['to']}"),
                             fence=s.epoch + 1,  # supersedes the dead run's epoch
                             aux=drop_lease_aux(s.job_id, s.epoch))
        except ConcurrencyError:
            return False  # another worker recovered it, or the run finished just now
        log.warning("recovered stale job %s -> %s", s.job_id, data["to"],
                    extra={"job_id": s.job_id, "run_id": s.run_id, "stale_worker_id": s.worker_id})
        return True

    def _run_artifacts(self, s: JobState) -> list[str]:
        """Files in the job's folder written since the run was claimed: what a dead run left behind, named
        as stored (sanitized: a file name may hold a secret, ``token=...``; the file is moved to match)."""
        claimed = [ts for etype, ts in s.history if etype == "job_claimed"]
        since = clock_mod.from_iso(claimed[-1]) if claimed else 0.0
        root = self.artifacts_dir(s.job_id)
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

    # -- claiming ---------------------------------------------------------------------------------
    def claim(self, now: float | None = None) -> Claim | None:
        """Claim the first runnable job (priority, then FIFO); None if there is none."""
        now = self.orch.clock() if now is None else now
        self.queue.ensure_built(self.orch)
        self.next_due = None
        self.unhandled = {}
        for entry in self.queue.candidates(now):
            if entry.runnable_at > now:  # delayed (retry backoff): the sorted names tell, no read needed
                self.next_due = min(self.next_due or entry.runnable_at, entry.runnable_at)
                continue
            claim = self._try_claim(entry, now)
            if claim is not None:
                return claim
        return None

    def _load_for_claim(self, entry: ReadyEntry, now: float) -> JobView | None:
        """The entry's job, read and verified; None if it has no event yet.

        An entry is written before the event that makes its job queued (a submit, a resume, a
        revise), so a worker woken by a new entry usually arrives before that event. For a young
        entry it waits for the event (``EventStore.wait_for_more``) and reads the job again, rather
        than going back to sleep until the writer announces the job (~0.5 ms later).
        """
        waited = now - entry.runnable_at > EVENT_IN_FLIGHT  # an old entry: nothing is in flight
        view = self._kept_view(entry.job_id)  # what this worker last wrote of it
        while True:
            try:  # from a view already verified (after a wait, or written here), only the new lines are checked
                # every signature: a line the head record vouches for is taken on its word by reads,
                # never by a run (docs/format.md)
                view = (self.orch.load(entry.job_id, every_signature=True) if view is None
                        else self.orch.load_more(view, every_signature=True))
            except JobNotFoundError:
                view = None
            s = view.state if view is not None else None
            pending = view is None or (view.ok and s is not None and s.state != QUEUED
                                       and entry.runnable_at > s.updated_at)  # its event is not there yet
            if not pending or waited:
                return view
            waited = True
            if not self.orch.store.wait_for_more(entry.job_id, view.head.seq if view else 0, EVENT_WAIT):
                return view

    def _try_claim(self, entry: ReadyEntry, now: float) -> Claim | None:
        view = self._load_for_claim(entry, now)
        if view is None:
            if now - entry.runnable_at > ORPHAN_ENTRY_GRACE:  # its submit never completed
                self.queue.drop_ready(entry)
            return None
        if not view.ok:
            if self._reload_keys():  # a key made (keys rotate) or revoked since this worker started
                return self._try_claim(entry, now)
            self._refuse(view, entry, now)
            return None
        s = view.state
        if s is None or s.state != QUEUED:
            if entry.runnable_at > (s.updated_at if s else 0.0) and now - entry.runnable_at < ORPHAN_ENTRY_GRACE:
                return None  # newer than the job's last event: its event (a resume, a revise) may be in flight
            self.queue.drop_ready(entry)
            return None
        expected = ReadyEntry.for_state(s)
        if expected != entry:  # a left-over entry from a crash: put the right one in place
            self.queue.put_ready(expected)
            self.queue.drop_ready(entry)
            if expected.runnable_at > now:
                self.next_due = min(self.next_due or expected.runnable_at, expected.runnable_at)
                return None
        if self._no_handler(s):
            return None
        run_id, epoch = new_run_id(), s.epoch + 1
        data = {"worker_id": self.worker_id, "epoch": epoch, "attempt": s.attempt + 1,
                "lease_expires_at": clock_mod.to_iso(now + self.settings.lease_seconds)}
        # the claim event carries the first lease expiry: a run shorter than a heartbeat writes no lease record
        faults.point("worker.before_claim")
        try:
            claimed = self.orch.append(view, s.job_id, [("job_claimed", data)], run_id=run_id, actor=self.actor,
                                       now=now, fence=epoch)
        except ConcurrencyError:
            return None  # another worker won this one
        faults.point("worker.after_claim")
        return Claim(claimed, run_id, epoch)

    def _no_handler(self, s: JobState) -> bool:
        """True if this worker has no handler for the job's kind: the job stays queued for a worker that has
        one (workers with different ``--import`` modules share a queue). Warned once per kind; counted for
        ``handler_not_found``; a kind is looked up once per pass (a ``module:function`` kind is an import)."""
        left = self.unhandled.get(s.kind)
        if left is None:
            try:
                lookup(s.kind)
                return False
            except HandlerNotFoundError as exc:
                left = self.unhandled[s.kind] = Unhandled(exc.details["reason"])
                if s.kind not in self._warned_kinds:
                    self._warned_kinds.add(s.kind)
                    log.warning("%s; leaving job %s queued for a worker that has one (--import MODULE / "
                                "ORCH_HANDLERS)", sanitize_text(exc.message), s.job_id,
                                extra={"job_id": s.job_id, "kind": s.kind})
        left.job_ids.add(s.job_id)  # a set: a pass may meet an entry twice (queue.candidates)
        return True

    def handler_not_found(self) -> HandlerNotFoundError | None:
        """The jobs the last ``claim`` left queued for want of a handler, by kind and why, as the error
        ``worker --once`` exits with (11) when it ran nothing; None if it left none."""
        if not self.unhandled:
            return None
        kinds = {kind: {"jobs": len(left.job_ids), "reason": left.reason} for kind, left in self.unhandled.items()}
        jobs = sum(k["jobs"] for k in kinds.values())
        listed = "; ".join(f"{kind!r} ({k['jobs']} job(s)): {k['reason']}" for kind, k in list(kinds.items())[:5])
        more = f"; {len(kinds) - 5} more kind(s)" if len(kinds) > 5 else ""
        return HandlerNotFoundError(
            f"{jobs} queued job(s) left for a worker with a handler for their kind: {listed}{more}. "
            "Start a worker that has it (--import MODULE / ORCH_HANDLERS; for a module:function kind, the module "
            "on its PYTHONPATH), or cancel the job and submit it with the right --kind",
            worker_id=self.worker_id, jobs=jobs, kinds=kinds)

    def _refuse(self, view: JobView, entry: ReadyEntry, now: float) -> None:
        """A job whose history failed verification is never run: audit the refusal, drop its entry."""
        err = view.integrity_error() or {}
        audit_log.record(self.orch, job_id=view.job_id, action="run_refused", actor=self.actor,
                         note=sanitize_text(f"{err.get('code')}: {err.get('message')}"), now=now)
        self.queue.drop_ready(entry)
        log.error("refusing to run job %s: %s", view.job_id, err.get("message"),
                  extra={"job_id": view.job_id, "code": err.get("code")})

    # -- running ----------------------------------------------------------------------------------
    def run_once(self, now: float | None = None) -> RunResult | None:
        """Recover stale jobs, then claim and run at most one job; None if nothing was runnable.

        A store lost during the recovery or the claim (a PostgreSQL restart) is tried again, as the loop
        does, for up to ``store_wait_seconds``; then, or on a stop request, its error is raised, saying so.
        A store this worker never reached (its first call here: a wrong URL) is raised at once, as by ``run``.
        The run itself is never tried again: its heartbeat and outcome wait for the store on their own."""
        claim = self._recover_and_claim(now)
        return self.execute(claim) if claim else None

    def _recover_and_claim(self, now: float | None) -> Claim | None:
        wait = self.settings.store_wait_seconds
        give_up_at, pause, lost = time.monotonic() + wait, STORE_RETRY_FIRST_SECONDS, False
        while True:
            at = self.orch.clock() if now is None else now
            try:
                with self.orch.store.calls_end_by(give_up_at if wait else None):  # no call outlasts the wait
                    if wait and not self._reached:  # a store that cannot be reached now is a setting to fix:
                        self.orch.store.has_jobs()  # raised at once (one call)
                        self._reached = True
                    self.recover_stale(at)
                    claim = self.claim(at)
            except StorageUnavailableError as exc:
                if not wait or not self._reached:
                    raise
                lost, left = True, give_up_at - time.monotonic()
                if left > 0 and not self.stopping:
                    pause = self._wait_for_store(exc, min(pause, left))
                    if not self.stopping:
                        continue
                why = ("a stop was requested while waiting for it" if self.stopping else
                       f"still out of reach after {wait:g}s of retries (store_wait_seconds, ORCH_STORE_WAIT_SECONDS)")
                raise StorageUnavailableError(f"{exc.message}; {why} during stale recovery or the claim: "
                                              "no job was run", **exc.details) from None
            # After a loss, a job due before the wait is over is waited for, as the loop would: on PostgreSQL the
            # candidate whose claim the loss interrupted stays reserved (skipped) for a moment (pg_queue.candidates).
            due = self.next_due
            if claim is None and lost and now is None and due is not None and due - at < give_up_at - time.monotonic():
                self._pause(max(0.0, due - at))
                if not self.stopping:
                    continue
            return claim

    def execute(self, claim: Claim) -> RunResult:
        """Run a claimed job's handler under its lease and timeout, then record the outcome."""
        s = claim.state
        try:
            paths = RunPaths.create(self.run_dir(claim.run_id), self.artifacts_dir(s.job_id))
        except PathEscapeError as exc:
            if self._store_folder_linked():  # the store's fault, not the job's: hand it back, and stop
                self._hand_back(claim, exc)
                raise
            return self._fail(claim, exc.code, exc.message, retryable=False)  # its own folder, a link out
        handler = resolve(s.kind)
        try:
            if handler is None:
                raise InvalidInputError(f"no handler for kind {s.kind!r}")
            self._import_artifacts(s, paths.artifacts_dir)
            context = {**s.context(), "artifacts_dir": str(paths.artifacts_dir)}
            child = handler.start(context, paths, host=self._handler_host())
            faults.point("worker.after_start")
        except (InvalidInputError, PathEscapeError) as exc:  # bad input: not retried
            return self._not_started(claim, paths, exc.code, exc.message, retryable=False)
        except OSError as exc:
            # a command's program that is missing or not executable is bad input too; any other OS
            # error (the worker's own folders, the handler process) may pass: retried
            missing = isinstance(exc, (FileNotFoundError, PermissionError)) and handler.name == "command"
            return self._not_started(claim, paths, "COMMAND_NOT_FOUND" if missing else "HANDLER_START_FAILED",
                                     f"cannot start the handler: {exc}", retryable=not missing)
        log.info("running job %s (%s) as %s", s.job_id, s.kind, claim.run_id,
                 extra={"job_id": s.job_id, "run_id": claim.run_id, "pid": child.pid})
        try:
            how, code, claim = self._supervise(claim, child)
            if how == "lost":
                return self._lost(claim, "the job changed while it ran (taken over or cancelled)")
            if how == "timeout":
                return self._fail(claim, NO_TERMINAL_SIGNAL_TIMEOUT, f"killed after its timeout of {s.timeout:g}s",
                                  output=child.output, event="job_timeout")
            if how == "stopped":
                return self._release(claim, child.output)
            return self._record_exit(claim, code, child, paths.artifacts_dir)
        finally:
            child.finish(paths)

    def _not_started(self, claim: Claim, paths: RunPaths, code: str, message: str, *, retryable: bool) -> RunResult:
        """The handler could not start: record the failed attempt and remove the run's folder."""
        try:
            return self._fail(claim, code, message, retryable=retryable, output=paths.output_file)
        finally:
            paths.remove()

    def _handler_host(self) -> HandlerHost | None:
        """The reused handler process (created on first use), or None with ``handler_process="per-run"``."""
        if self.settings.handler_process != "reused":
            return None
        if self._host is None:
            folder = self.run_dir(f"{HOST_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
            self._host = HandlerHost(folder, call_python_handler, max_runs=self.settings.handler_max_runs,
                                     generation=registry_generation)
            # a worker used through run_once and dropped (or the interpreter exiting) still ends it
            weakref.finalize(self, self._host.close)
        return self._host

    def close(self) -> None:
        """Let the reused handler process exit and remove its folder; ``run`` does this when it returns
        (``with orch.worker() as w:`` too; a worker that is dropped does it when collected)."""
        if self._host is not None:
            self._host.close()
            self._host = None

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _supervise(self, claim: Claim, child: Child) -> tuple[str, int | None, Claim]:
        """Wait for the child; renew the lease; enforce the timeout and the stop grace period. Returns how
        it ended, its exit status, and the claim to record its outcome under: marked ``renewed`` once a
        heartbeat wrote a lease record, so the flag belongs to this run and cannot reach the next."""
        start = time.monotonic()
        beat = max(0.05, self.settings.lease_seconds / 3)
        next_beat = start + beat
        timeout = claim.state.timeout
        deadline = start + timeout if timeout else None
        stop_deadline: float | None = None
        while True:
            if self._stop_at is not None and stop_deadline is None:
                stop_deadline = time.monotonic() + self.settings.stop_grace_seconds
            limits = [next_beat] + [t for t in (deadline, stop_deadline) if t is not None]
            try:
                self._in_wait = True
                code = child.wait(max(0.0, min(limits) - time.monotonic()))
            except WorkerStop:
                if stop_deadline is not None:  # a second signal: do not wait any longer
                    stop_deadline = time.monotonic()
                continue
            finally:
                self._in_wait = False
            if code is not None:
                return "exited", code, claim
            now_m = time.monotonic()
            if deadline is not None and now_m >= deadline:
                kill_run(child, claim.run_id)
                return "timeout", None, claim
            if stop_deadline is not None and now_m >= stop_deadline:
                kill_run(child, claim.run_id)
                return "stopped", None, claim
            if now_m >= next_beat:
                renewed = self._renew(claim)
                if renewed is False:
                    kill_run(child, claim.run_id)
                    return "lost", None, claim
                # a heartbeat the store missed is tried again soon: a whole beat later may be past the lease
                next_beat = time.monotonic() + (beat if renewed else min(beat, HEARTBEAT_RETRY_SECONDS))
                claim = replace(claim, renewed=True)

    def _renew(self, claim: Claim) -> bool | None:
        """Heartbeat: True when the lease was renewed, False if the job's log grew since the claim (taken over,
        cancelled), None when the store is out of reach. That is not a takeover: the run goes on, and if the
        lease runs out meanwhile the fence refuses its outcome (``_append_outcome``)."""
        try:
            if self.orch.store.read(claim.job_id, from_seq=claim.view.head.seq + 1):
                return False
            now = self.orch.clock()
            write_lease(self.orch.store, Lease(claim.job_id, claim.run_id, claim.epoch, self.worker_id, os.getpid(),
                                               now + self.settings.lease_seconds, now))
        except StorageUnavailableError as exc:
            log.warning("job %s: the lease could not be renewed (%s); the run goes on", claim.job_id,
                        one_line(exc.message),
                        extra={"job_id": claim.job_id, "run_id": claim.run_id})
            return None
        return True

    def _record_exit(self, claim: Claim, code: int | None, child: Child, artifacts_dir: Path) -> RunResult:
        s = claim.state
        if not child.answered:  # a command, or a handler process that died: what the run left is ended here
            end_exited_run(child.pid, claim.run_id)
        try:
            raw = child.payload()
        except MalformedPayloadError as exc:  # too large to read, or not a file
            return self._fail(claim, exc.code, exc.message, output=child.output)
        if raw is None:
            return self._fail(claim, NO_TERMINAL_SIGNAL_EXIT,
                              f"the process exited with status {code} without writing a terminal payload",
                              output=child.output)
        try:
            payload = parse_payload(raw, artifacts_dir)
        except MalformedPayloadError as exc:
            return self._fail(claim, exc.code, exc.message, output=child.output)
        if payload.status == FAILED:
            return self._fail(claim, payload.error_code or "HANDLER_FAILED", payload.summary, output=child.output,
                              retryable=payload.retryable, payload=payload)
        # the artifact paths were checked as given (parse_payload); what is stored is their sanitized text,
        # and a file whose name that changes is moved to match (artifacts.recorded_names)
        result = {"summary": sanitize_text(payload.summary), "output": sanitize_obj(payload.output),
                  "artifacts": recorded_names(artifacts_dir, payload.artifacts)}
        if payload.status == DONE and not s.options.get("audit"):
            return self._finish(claim, [("job_succeeded", result)], "succeeded")
        if payload.status in (DONE, NEEDS_AUDIT):
            return self._finish(claim, [("audit_requested", result)], "awaiting_audit")
        question = sanitize_text(payload.question or "")  # needs_human, the one status left
        return self._finish(claim, [("human_input_requested", {**result, "question": question})], "waiting_human")

    def backoff(self, failures: int) -> float:
        """Exponential backoff with jitter: base * 2^(failures-1), capped, times a factor in [0.5, 1)."""
        delay = min(self.settings.retry_max_seconds, self.settings.retry_base_seconds * 2 ** max(0, failures - 1))
        return delay * (0.5 + self.rng.random() / 2)

    def _fail(self, claim: Claim, code: str, message: str, *, output: Path | None = None, retryable: bool = True,
              event: str = "job_failed", payload: Payload | None = None) -> RunResult:
        """Record a failed attempt (a retry while attempts remain); ``output`` holds what the run printed."""
        s = claim.state
        now = self.orch.clock()
        failures = s.failures + 1
        data: dict[str, Any] = {"error_code": code, "error": sanitize_text(message)[:4000]}
        if retryable and failures < s.max_attempts:
            data["retry_at"] = clock_mod.to_iso(now + self.backoff(failures))
        if event == "job_timeout":
            data["timeout"] = s.timeout
        else:
            data["summary"] = sanitize_text(payload.summary if payload else "")[:4000]
        data["output_tail"] = sanitized_tail(output, OUTPUT_TAIL_BYTES) if output else ""
        outcome = "retry" if "retry_at" in data else "failed"
        # a timeout is the worker's decision, so it has its audit entry (``audit.AUDITED_EVENTS``)
        audit = (event, data["error"]) if event == "job_timeout" else None
        return self._finish(claim, [(event, data)], outcome, error_code=code, audit=audit)

    def _store_folder_linked(self) -> bool:
        """Whether ``runs/`` or ``artifacts/`` became a symbolic link since this worker started (checked then)."""
        state = self.orch.settings.state_dir
        return any(os.path.islink(os.path.join(state, name)) for name in WORKER_FOLDERS if name)

    def _hand_back(self, claim: Claim, exc: PathEscapeError) -> None:
        """Give a claimed job back, not counted as a failure, when this worker cannot run anything (a folder
        of the store became a link): as a worker that refuses to start would never have claimed it."""
        data = {"error_code": exc.code, "worker_id": self.worker_id, "output_tail": "",
                "error": f"worker {self.worker_id} stopped before running it: {exc.message}"}
        self._finish(claim, [("job_released", data)], "released", error_code=exc.code,
                     audit=("job_released", data["error"]))

    def _release(self, claim: Claim, output: Path) -> RunResult:
        data = {"error_code": "WORKER_STOPPED", "worker_id": self.worker_id,
                "error": f"worker {self.worker_id} stopped; the run was killed after the "
                         f"{self.settings.stop_grace_seconds:g}s grace period and handed back",
                "output_tail": sanitized_tail(output, OUTPUT_TAIL_BYTES)}
        return self._finish(claim, [("job_released", data)], "released", error_code="WORKER_STOPPED",
                            audit=("job_released", data["error"]))

    def _finish(self, claim: Claim, events: list[tuple[str, dict[str, Any]]], outcome: str,
                *, error_code: str | None = None, audit: tuple[str, str] | None = None) -> RunResult:
        """Append the outcome with the claim's expected sequence; refuse it if the lease was taken over."""
        faults.point("worker.before_outcome")
        view = claim.view
        # a renewed lease record is dropped with the outcome (in its transaction where the store can)
        drop = drop_lease_aux(claim.job_id, claim.epoch) if claim.renewed else None
        try:
            view = self._append_outcome(claim, events, audit, drop)
        except LeaseLostError as exc:
            return self._lost(claim, exc.message)
        except UnicodeEncodeError as exc:  # text no event can hold (a lone surrogate) past every check: nothing
            if error_code == MalformedPayloadError.code:  # was written; the run failed, the worker goes on
                raise
            return self._fail(claim, MalformedPayloadError.code,
                              f"the outcome holds text that cannot be written as UTF-8 ({exc.reason})")
        faults.point("worker.after_outcome")
        self._remember(view)
        state = view.state.state if view.state else None
        log.info("job %s run %s: %s", claim.job_id, claim.run_id, outcome,
                 extra={"job_id": claim.job_id, "run_id": claim.run_id, "outcome": outcome})
        return RunResult(claim.job_id, claim.run_id, outcome, state, error_code)

    def _append_outcome(self, claim: Claim, events: list[tuple[str, dict[str, Any]]],
                        audit: tuple[str, str] | None, drop: Any) -> JobView:
        """Append the outcome on the claim's head. After a conflict or a lost connection the job is read
        again (the view is kept afterwards: ``_remember``): the outcome is appended again while this run
        still holds the job, taken as written when it is there (the connection broke after the commit),
        and refused (``LeaseLostError``) when another run has the job. A store out of reach is waited
        for, since the result exists only in this process; a stop request gives it up to stale recovery."""
        view, conflicts, pause = claim.view, 0, STORE_RETRY_FIRST_SECONDS
        while True:
            try:
                return self.orch.append(view, claim.job_id, events, run_id=claim.run_id, actor=self.actor,
                                        audit=audit, fence=claim.epoch, aux=drop)
            except ConcurrencyError:
                conflicts += 1
                if conflicts >= 3:
                    raise LeaseLostError(f"job {claim.job_id}: could not record the outcome") from None
            except StorageUnavailableError as exc:
                pause = self._wait_for_store(exc, pause, giving_up=True)
            view, pause = self._read_back(claim.job_id, pause)
            since_claim = [(r["type"], r.get("run_id")) for r in view.stream.records[len(claim.view.stream.records):]]
            if view.ok and since_claim == [(etype, claim.run_id) for etype, _ in events]:
                return view  # written before the connection broke
            cur = view.state
            if not (view.ok and cur is not None and cur.state == RUNNING and (cur.epoch, cur.run_id) == (
                    claim.epoch, claim.run_id)):
                raise LeaseLostError(f"job {claim.job_id}: run {claim.run_id} (epoch {claim.epoch}) was "
                                     f"taken over; its result is not recorded", job_id=claim.job_id)

    def _read_back(self, job_id: str, pause: float) -> tuple[JobView, float]:
        """The job read again, every signature checked (the store waited for while out of reach), and the next
        pause (``_wait_for_store``)."""
        while True:
            try:
                return self.orch.load(job_id, every_signature=True), pause
            except StorageUnavailableError as exc:
                pause = self._wait_for_store(exc, pause, giving_up=True)

    def _wait_for_store(self, exc: StorageUnavailableError, pause: float, *, giving_up: bool = False) -> float:
        """Wait ``pause`` seconds before trying a store that could not be reached; returns the next pause.
        A stop request ends the wait, and with ``giving_up`` (a run's outcome in hand) raises ``exc``."""
        if not (giving_up and self.stopping):
            log.warning("the store cannot be reached (%s); trying again in %.1fs", one_line(exc.message), pause,
                        extra={"code": exc.code})
            self._pause(pause)
        if giving_up and self.stopping:
            log.warning("stopping with the store out of reach: the outcome of the run in progress is not recorded; "
                        "the job is recovered when its lease expires")
            raise exc
        return min(pause * 2, STORE_RETRY_MAX_SECONDS)

    def _pause(self, seconds: float) -> None:
        """Sleep, unless a stop was requested; a stop signal ends the sleep."""
        try:
            self._in_wait = True
            if not self.stopping:
                threading.Event().wait(seconds)
        except WorkerStop:
            pass
        finally:
            self._in_wait = False

    def _remember(self, view: JobView) -> None:
        """Keep the view of a job this worker left unfinished: a resume, a revise or a retry brings it
        back, often to this worker, whose claim then checks only the lines written since (``load_more``
        compares the rest byte for byte with this view) instead of the whole job again."""
        self._known.pop(view.job_id, None)
        if view.state is None or view.state.is_final or sum(len(x.raw) for x in view.stream.lines) > KNOWN_VIEW_MAX_BYTES:
            return
        self._known[view.job_id] = (view, self.orch.keyring.trust_state())
        if len(self._known) > KNOWN_VIEWS:
            self._known.popitem(last=False)

    def _kept_view(self, job_id: str) -> JobView | None:
        """The view ``_remember`` kept, if the keys trusted and revoked are still those it was checked with."""
        kept = self._known.pop(job_id, None)
        if kept is None or kept[1] != self.orch.keyring.trust_state():
            return None
        return kept[0]

    def _lost(self, claim: Claim, why: str) -> RunResult:
        log.warning("lease lost for job %s run %s: %s", claim.job_id, claim.run_id, why,
                    extra={"job_id": claim.job_id, "run_id": claim.run_id})
        return RunResult(claim.job_id, claim.run_id, "lease_lost", None, LeaseLostError.code, {"message": why})

    def _import_artifacts(self, s: JobState, target: Path) -> None:
        """Only with ``artifacts_import`` on: copy (never move) the folders of jobs named in input ``artifacts_from``."""
        names = s.input.get("artifacts_from") if isinstance(s.input, dict) else None
        if not names:
            return
        if not self.settings.artifacts_import:
            log.info("job %s names artifacts_from, but ORCH_ARTIFACTS_IMPORT is off: nothing copied", s.job_id)
            return
        for other in [names] if isinstance(names, str) else list(names):
            src = self.artifacts_dir(validate_id(str(other)))
            if src.is_dir() and other != s.job_id:
                shutil.copytree(src, safe_join(target, "inputs", other), dirs_exist_ok=True)

    # -- the loop -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to stop: no new claims; a running job gets the grace period."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop()
        log.warning("signal %d: stopping (no new claims)", signum, extra={"signal": signum})
        if self._in_wait:
            raise WorkerStop(signum)

    def handle_signals(self) -> "_SignalScope":
        """Context manager: SIGTERM/SIGINT stop the worker gracefully (main thread only)."""
        return _SignalScope(self._on_signal)

    def run(self, max_jobs: int | None = None, idle_exit: bool = False,
            on_result: Callable[[RunResult], None] | None = None) -> int:
        """Loop until stopped (or ``max_jobs`` runs, or idle with ``idle_exit``); returns the runs done."""
        done = 0
        precise_sleeps()
        self.orch.store.has_jobs()  # a store that cannot be reached now is a setting to fix: exit (one call)
        pause = STORE_RETRY_FIRST_SECONDS  # from here on, losing the store is waited out
        self.queue.wait(0)  # start watching before the first scan, so no announcement is missed
        next_recovery = 0.0
        recovery_every = min(max(self.settings.lease_seconds / 2, 0.05), 5.0)
        try:
            while not self.stopping and (max_jobs is None or done < max_jobs):
                try:
                    now = self.orch.clock()
                    if time.monotonic() >= next_recovery:
                        self.recover_stale(now)
                        next_recovery = time.monotonic() + recovery_every
                    claim = self.claim(now)
                    pause = STORE_RETRY_FIRST_SECONDS
                    if claim is not None:
                        result = self.execute(claim)
                        done += 1
                        if on_result:
                            on_result(result)
                        continue
                    if idle_exit and self.next_due is None:
                        break
                    wait = IDLE_MAX_WAIT
                    if self.queue.running():  # another worker may die: look at its lease again soon
                        wait = min(wait, max(0.0, next_recovery - time.monotonic()))
                    if self.next_due is not None:
                        wait = min(wait, max(0.0, self.next_due - now))
                    self._idle(wait)
                except StorageUnavailableError as exc:
                    pause = self._wait_for_store(exc, pause)
        finally:
            self.queue.close()
            self.close()
        return done

    def _idle(self, timeout: float) -> None:
        if self.stopping:
            return
        try:
            self._in_wait = True
            self.queue.wait(timeout)
        except WorkerStop:
            pass
        finally:
            self._in_wait = False


class _SignalScope:
    def __init__(self, handler: Callable[[int, Any], None]) -> None:
        self.handler = handler
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> "_SignalScope":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.saved[sig] = signal.signal(sig, self.handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self.saved.items():
            signal.signal(sig, old)

