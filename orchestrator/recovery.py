"""Stale recovery: running jobs whose lease expired, and what killed workers left behind.

``Worker.recover_stale(now)`` calls ``recover_expired`` on every pass and, every
``SWEEP_EVERY`` seconds, ``reload_keys`` and ``sweep_leftovers``. Only the running index is
scanned, and not at every pass: a worker's ``StaleWatch`` remembers until when each lease it read
holds, and lists the index at most once a second unless one of those is due. A job whose lease
expired gets one ``stale_recovered`` event (``NO_TERMINAL_SIGNAL_STALE``): to ``waiting_human`` if
its run left artifacts, else queued again with a backoff, or failed once its attempts are used up. The run of a
job cancelled while its worker was gone has what it left killed once its lease expired (``end_cancelled_run``).
See ``docs/worker.md`` (Stale recovery).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from orchestrator import audit
from orchestrator import clock as clock_mod
from orchestrator.artifacts import recorded_names
from orchestrator.artifacts_import import imported_folders
from orchestrator.config import MIN_LEASE_SECONDS
from orchestrator.errors import (ConcurrencyError, InvalidIdError, JobNotFoundError, LockHeldError, PathEscapeError,
                                 SigningKeyError, StorageError)
from orchestrator.handler_host import sweep_dead_host_folders
from orchestrator.leases import LEASES_AREA, drop_lease_aux, lease_expiry
from orchestrator.killed import Killed, logged_killed
from orchestrator.leftovers import kill_run_processes
from orchestrator.limits import LATEST_TIME
from orchestrator.notices import Notify, log_warning, tell
from orchestrator.payload import NO_TERMINAL_SIGNAL_STALE
from orchestrator.queue import QueueIndex, ReadyEntry, run_left_running
from orchestrator.run_folder import FOLDER_NO_LINK, RUN_PREFIX, output_held, remove_run_folder, walk_folders
from orchestrator.security import sanitize_text
from orchestrator.state import CANCELLED, QUEUED, RUNNING, WAITING_HUMAN, JobState, replay
from orchestrator.untrusted import UntrustedJobs, running_mark

if TYPE_CHECKING:
    from orchestrator.api import JobView, Orchestrator
    from orchestrator.worker_folders import WorkerFolders

log = logging.getLogger(__name__)

SWEEP_EVERY = 60.0  # how often stale recovery also removes what killed workers left behind and reads the keyring
LIST_EVERY_MAX = 1.0  # a busy worker lists the running index at most this often (or every half lease, if shorter)
IDLE_LOOK_MAX = 5.0  # an idle worker looks at the running index at least this often while jobs run (or half a lease)
EXPIRY_TRUSTED_FOR = 60.0  # a lease expiry read is relied on for at most this long (it may move earlier: StaleWatch)
LOCKED_RETRY_SECONDS = 5.0  # a job whose lock stayed held (a writer paused mid-append: LockHeldError) is tried again
EXPIRIES_KEPT = 4096  # running entries whose expiry one worker remembers (more are read at every listing)

RunningEntry = tuple[str, int | None]  # (job id, epoch), as ``QueueIndex.running_entries`` lists them


class StaleWatch:
    """What one worker's stale recovery knows between passes, so that a pass reads only what may have expired.

    Only its holder extends a lease (heartbeats), each time from a later time: the expiry a read of a running
    entry (job, epoch) found is when the job may be recovered at the earliest, so the entry is not read again
    before then (``due``, ``to_read``). Nothing is recovered without a fresh read, so what is remembered can
    only make a recovery later, never recover a live job. The running index is listed when a remembered expiry is due, and
    otherwise at most every ``list_every``: half this worker's lease (the deployment's, usually), at most
    ``LIST_EVERY_MAX``. A job claimed since the last listing is met at the next one, in time unless its lease
    is shorter than that (then at most ``list_every`` late). An idle worker wakes when a remembered expiry is
    due, and looks at the index every ``idle_every`` (half a lease, at most ``IDLE_LOOK_MAX``) while jobs run
    (``next_look``).

    An expiry can still move earlier: its holder's clock stepped back between two heartbeats (the next
    record is written from the earlier time), or its record was lost (the claim's expiry counts again).
    So an expiry is relied on for at most ``EXPIRY_TRUSTED_FOR`` after it was read, and everything is read
    again when ``now`` is earlier than at the last listing (a clock stepped back, or a test's ``now``).
    Entries no longer listed are forgotten; at most ``EXPIRIES_KEPT`` are remembered. Times are ``now``,
    the caller's (``Orchestrator.clock``, or a test's), never the monotonic clock."""

    def __init__(self, lease_seconds: float) -> None:
        half = max(lease_seconds / 2, MIN_LEASE_SECONDS / 2)
        self.list_every = min(half, LIST_EVERY_MAX)
        self.idle_every = min(half, IDLE_LOOK_MAX)
        self._listed_at: float | None = None  # ``now`` of the last pass that listed the index and read what was due
        self._found = False  # whether that listing held any entry
        self._until: dict[RunningEntry, float] = {}  # entry -> when it is read again
        self._next_due: float | None = None  # the earliest of those

    def due(self, now: float) -> bool:
        """Whether a pass at ``now`` lists the index: no listing yet (or the last one did not finish), ``now`` is
        earlier than at the last listing, ``list_every`` passed since, or a remembered expiry did."""
        last = self._listed_at
        return (last is None or now < last or now >= last + self.list_every
                or (self._next_due is not None and now >= self._next_due))

    def to_read(self, entries: list[RunningEntry], now: float) -> list[RunningEntry]:
        """Of ``entries``, listed at ``now``, those to read: every one not remembered as holding at ``now``.
        Forgets the entries not listed; until ``listed`` is called, the next pass lists again."""
        if self._listed_at is not None and now < self._listed_at:
            self._until = {}
        self._listed_at = None
        kept: dict[RunningEntry, float] = {}
        read = []
        for entry in entries:
            until = self._until.get(entry)
            if until is not None and now < until:
                kept[entry] = until
            else:
                read.append(entry)
        self._until = kept
        self._next_due = min(kept.values(), default=None)
        return read

    def holds_until(self, entry: RunningEntry, expiry: float, now: float) -> None:
        """``entry`` was read at ``now`` and its lease holds until ``expiry`` (later than ``now``)."""
        if len(self._until) >= EXPIRIES_KEPT and entry not in self._until:
            return  # read at every listing, as before 2026-12-02
        until = min(expiry, now + EXPIRY_TRUSTED_FOR)
        self._until[entry] = until
        self._next_due = until if self._next_due is None else min(self._next_due, until)

    def listed(self, now: float, found: bool) -> None:
        """The pass at ``now`` read every entry ``to_read`` gave; ``found``: the listing held any entry."""
        self._listed_at, self._found = now, found

    def next_look(self, now: float) -> float | None:
        """When an idle worker, after a pass at ``now``, looks at the running index again: at the earliest
        remembered expiry, and ``idle_every`` after the last listing; None if the pass at ``now`` listed it and
        found no entry (no job runs: the worker may wait for news), ``list_every`` after an earlier listing
        that found none."""
        last = self._listed_at
        if last is None or now < last:
            return now
        if not self._found:
            return None if last == now else last + self.list_every
        at = last + self.idle_every
        return at if self._next_due is None else min(at, self._next_due)


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
                    backoff: Callable[[int], float], folders: WorkerFolders, untrusted: UntrustedJobs,
                    watch: StaleWatch, on_recovered: Callable[[dict[str, Any]], None] | None = None,
                    notify: Notify | None = None) -> list[str]:
    """Recover the running jobs whose lease expired at ``now``; returns their ids. ``backoff`` gives the delay
    of a retry after that many failures, ``folders`` the jobs' artifact folders (``Worker``'s);
    ``on_recovered`` is given each recovery's record (``recover``), as it is written, and ``notify`` its line,
    ``recovered stale job J -> STATE`` (``notices``).

    ``watch`` (``Worker``'s) says whether the running index is listed at this pass, and which of its entries
    are read: not one whose lease it read holds at ``now``. A job whose only problem is a key this worker
    does not hold is left as it is, its running entry kept, for a worker that holds the key to recover;
    ``untrusted`` (``Worker``'s) remembers it, so later passes do not read it again
    (``orchestrator/untrusted.py``)."""
    if not watch.due(now):
        return []
    queue.ensure_built(orch)
    entries = queue.running_entries()
    recovered = []
    for job_id, epoch in watch.to_read(entries, now):
        mark = running_mark(job_id, epoch)
        if untrusted.passes_over(mark, job_id):
            continue
        # a lock held past the bounded wait: the job's events file's (a writer paused mid-append), or its head or
        # lease record's (paused in the middle of writing or reading one): not this pass's to wait for
        try:
            view = _running_view(orch, queue, untrusted, job_id, epoch, now, watch)
            if view is None:
                continue
            s = view.state
            expiry = lease_expiry(orch.store, s, now)
            if expiry is not None and expiry > now:
                watch.holds_until((job_id, epoch), expiry, now)
                continue
            record = recover(orch, view, s, expiry, now, actor=actor, backoff=backoff, folders=folders, notify=notify)
        except LockHeldError as exc:
            log.warning("passing over stale job %s for now: %s", job_id, exc.message, extra={"job_id": job_id})
            watch.holds_until((job_id, epoch), now + LOCKED_RETRY_SECONDS, now)
            continue
        if record is not None:
            recovered.append(job_id)
            if on_recovered is not None:
                on_recovered(record)
    watch.listed(now, bool(entries))
    return recovered


def _running_view(orch: Orchestrator, queue: QueueIndex, untrusted: UntrustedJobs, job_id: str,
                  epoch: int | None, now: float, watch: StaleWatch) -> JobView | None:
    """The job of the running entry ``job_id@epoch``, read and verified, when it is running under that epoch; else
    None, the index put right (an orphan entry dropped, a queued job's ready entry put back, a cancelled run's
    entry dropped once what it left is ended: ``end_cancelled_run``) or the job left for a worker that holds the
    keys it needs (``untrusted``)."""
    try:
        view = orch.load(job_id)
        if not view.ok and reload_keys(orch):  # a key made or revoked since this worker started
            view = orch.load(job_id)
    except (JobNotFoundError, InvalidIdError):  # no such job, or a name no job has (not an entry this code wrote);
        queue.drop_orphan_running(job_id, epoch, orch.store)  # or its first line landing: looked for again
        return None
    missing = view.missing_keys()
    if missing:  # whether it runs, and under which epoch, only a worker that holds those keys can tell
        untrusted.leave(running_mark(job_id, epoch), job_id, missing)
        return None
    s = view.state
    if not view.ok or s is None or s.state != RUNNING or epoch not in (None, s.epoch):
        if view.ok and s is not None and s.state == QUEUED:
            # the job is queued: make sure it has its ready entry (a crash, or a clock step, may have
            # left it without one); keep the entry of the next epoch, a claim that is being written
            queue.put_ready(ReadyEntry.for_view(view))
            if epoch == s.epoch + 1:
                return None
        if (view.ok and s is not None and s.state == CANCELLED
                and not end_cancelled_run(orch, view, (job_id, epoch), now, watch)):
            return None  # the cancelled run's lease holds: its worker, if alive, ends the run itself
        if view.ok:
            end_recovered_run(view, epoch)
        queue.drop_running(job_id, epoch)
        return None
    return view


def recover(orch: Orchestrator, view: JobView, s: JobState, expiry: float | None, now: float, *, actor: str,
            backoff: Callable[[int], float], folders: WorkerFolders, notify: Notify | None = None
            ) -> dict[str, Any] | None:
    """Append the ``stale_recovered`` event of one job whose lease expired, then kill what its run left
    running on this machine, and return what was done (``job_id``, ``run_id``, ``to``, ``stale_worker_id``,
    ``lease_expired_at``, ``retry_at``, ``artifacts``, ``warnings``: what ``worker --once --json`` shows under
    ``recovered``);
    None if another worker recovered it first (or the run just finished).

    Its audit entry must be writable first (``audit.require_writable``: on files, an audit log cut against its head
    record, or ending in a corrupt line, is ``IntegrityError`` before anything is written, and the worker stops,
    exit 7; a FIFO or a folder holding files in its place, ``StorageError``, exit 10), else the event would stand
    without it; on PostgreSQL, as for a control action, the entry's own check refuses after the event."""
    audit.require_writable(orch, f"cannot recover stale job {s.job_id}: its audit entry could not be written, so "
                                 "nothing was written and this worker stops")
    notes: list[dict[str, str]] = []  # what the recovery met besides its append, reported with it (``warnings``)
    try:  # checked as before a run: what another user could put there is no dead run's, nor renamed here
        artifacts = run_artifacts(s, folders.artifacts_dir(s.job_id, trusted=True), local_ahead(orch))
    except (PathEscapeError, StorageError) as exc:
        if folders.linked():  # ``artifacts/`` itself: the store's fault, and the worker stops (as ``Worker.execute``)
            raise
        # the job's own folder leads out of the store, or another user could change it: never walked (nor its files
        # moved); the job's next run fails on it (PATH_ESCAPE, not retried) or is handed back, its worker stopped
        # (STORAGE_ERROR), as a run claimed with that folder is
        notes.append({"code": exc.code, "message": f"job {s.job_id}: its artifact folder is not looked at "
                                                   f"(none listed for a human to check): {exc.message}"})
        log_warning(log, notes[-1], job_id=s.job_id)
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
        # at the latest time an event can hold, as a run's retry (``outcome``): the clock's own time is not checked
        data.update(to=QUEUED, retry_at=clock_mod.to_iso(min(now + backoff(s.failures + 1), LATEST_TIME)))
    else:
        data.update(to="failed")
    data["error"] = sanitize_text(why)
    try:  # the dead run's lease is dropped with the event (in its transaction where the store can)
        written = orch.append(view, s.job_id, [("stale_recovered", data)], run_id=s.run_id, actor=actor,
                              now=now, audit=("stale_recovered", audit.note_of("stale_recovered", data)),
                              fence=s.epoch + 1,  # supersedes the dead run's epoch
                              aux=drop_lease_aux(s.job_id, s.epoch))
    except LockHeldError:
        raise  # not recovered by another: passed over for now (``recover_expired``)
    except ConcurrencyError:
        return None  # another worker recovered it, or the run finished just now: nothing of the run is touched
    # On this machine: what the run left running must not meet its retry, its Python handler's process included. Only
    # once the event stands: a run still alive (its lease record deleted, its worker paused) can no longer record an
    # outcome of its own (the fence), where a kill before the append had its worker record the kill's failure first,
    # and this append lose, the run killed by no recovery (docs/worker.md, "Stale recovery")
    killed = kill_left_processes(s, "after its worker stopped renewing its lease")
    if killed is not None:
        notes.append(killed)
    drop_recovered_entry(orch.queue, written, s.epoch)
    retry = f" (retry at {data['retry_at']})" if data.get("retry_at") else ""  # why `--once` may then run nothing
    tell(notify, log, f"recovered stale job {s.job_id} -> {data['to']}{retry}", job_id=s.job_id, run_id=s.run_id,
         stale_worker_id=s.worker_id)
    return {"job_id": s.job_id, "run_id": s.run_id, "to": data["to"], "stale_worker_id": s.worker_id,
            "lease_expired_at": expired, "retry_at": data.get("retry_at"), "artifacts": artifacts,
            "warnings": [*notes, *written.warnings]}


def drop_recovered_entry(queue: QueueIndex, view: JobView, epoch: int) -> None:
    """Drop the running entry of the run a stale recovery ended (``view``: the job with its event), which the event
    kept (``queue.run_left_running``), now that what the run left is killed: a worker that died in between leaves it
    for the next pass (``end_recovered_run``). A job queued again is announced once more: while the entry was there
    it looked claimed, and a ready entry a claimer dropped meanwhile was not put back (``FileQueueIndex.announce``)."""
    queue.drop_running(view.job_id, epoch)
    if view.state is not None and view.state.state == QUEUED:
        queue.announce(ReadyEntry.for_view(view))


def end_recovered_run(view: JobView, epoch: int | None) -> None:
    """Kill what the run of ``epoch`` left, if a stale recovery ended it: its running entry, met again, says that the
    worker that recovered it died between its event and its kill (``recover``), which leave no other trace. Until
    2026-12-07 (twenty-ninth session) the event dropped the entry, and those processes ran on for good."""
    events = view.events
    for claim, ended in zip(events, events[1:]):  # only a claim makes a job running: a recovery follows one
        if ended.type == "stale_recovered" and claim.type == "job_claimed" and claim.data.get("epoch") == epoch:
            assert view.state is not None
            kill_left_processes(replace(view.state, run_id=claim.run_id),
                                "after its worker stopped renewing its lease (the worker that recovered the job "
                                "stopped before it killed them)")
            return


def kill_left_processes(run: JobState, when: str) -> dict[str, str] | None:
    """Kill what the run of ``run`` (a state that names it) left running on this machine (``kill_run_processes``,
    ``named``: a Python handler's process too), and log it; the ``RUN_PROCESSES_KILLED`` warning, or None if nothing
    was. ``when`` says why the run is over, in the warning."""
    assert run.run_id is not None
    return logged_killed(log, Killed.of(kill_run_processes(run.run_id, named=True)), run.job_id, run.run_id, when)


def cancelled_run(view: JobView) -> JobState | None:
    """The run a cancel ended, as the cancel found it (running, with its claim's lease), when the job's last event is
    the cancel of a running job; None otherwise. The cancelled state keeps the run's id and epoch, not its lease."""
    if view.state is None or view.state.state != CANCELLED or not run_left_running(view.state):
        return None  # told by the state's history, without the replay below: a job cancelled while queued
    before = replay(view.events[:-1])
    return before if before is not None and before.state == RUNNING else None


def end_cancelled_run(orch: Orchestrator, view: JobView, entry: RunningEntry, now: float, watch: StaleWatch) -> bool:
    """Whether the running ``entry`` of a cancelled job may be dropped at ``now``. A cancel keeps the entry of the run
    it ended (``queue.IndexChange``): a live worker kills its run at its next heartbeat, but one that died (SIGKILL, a
    crash) or is paused leaves what the run started running, which no one else would meet again. So, once the run's
    lease expired (its record as a heartbeat left it, else the claim's), what the run left on this machine is killed,
    as stale recovery kills a dead run's (``kill_left_processes``), and the entry may go; False while the lease holds
    (remembered in ``watch``). An entry of another run than the one the cancel ended (a claim that lost to it) may go."""
    run = cancelled_run(view)
    if run is None or entry[1] not in (None, run.epoch):
        return True
    expiry = lease_expiry(orch.store, run, now)
    if expiry is not None and expiry > now:
        watch.holds_until(entry, expiry, now)
        return False
    kill_left_processes(run, "after the job was cancelled while its worker was gone (dead, or paused past its lease)")
    return True


def local_ahead(orch: Orchestrator) -> float:
    """How far this machine's clock (its files' times) is ahead of ``orch.clock``: 0 unless that is the store's
    ``shared_clock`` (PostgreSQL's server's), which this machine's may differ from by any amount."""
    if orch.clock is not orch.store.shared_clock:
        return 0.0
    return time.time() - orch.clock()


def run_artifacts(s: JobState, root: Path, ahead: float = 0.0) -> list[str]:
    """Files in the job's folder (``root``) written since the run was claimed: what a dead run left behind, named
    as stored (sanitized: a file name may hold a secret, ``token=...``; the file is moved to match). ``ahead``: how
    far the files' clock is ahead of the claim's (``local_ahead``). The copies of other jobs' folders its input
    names (``artifacts_from``: ``imported_folders``) are not walked: the run did not produce them, and a copy keeps
    its source's times, or has the run's own when the worker died in the middle of a file."""
    claimed = [ts for etype, ts in s.history if etype == "job_claimed"]
    since = clock_mod.from_iso(claimed[-1]) + ahead if claimed else 0.0
    found = [path for path, mtime in files_below(root, imported_folders(s.job_id, s.input))
             if mtime >= since - 1.0]  # mtime granularity
    return sorted(recorded_names(root, sorted(found)))[:100]  # moved once the walk is over


def files_below(root: Path, skip: set[str]) -> list[tuple[str, float]]:
    """(path relative to ``root``, modification time) of each file below the folder ``root`` (a link to a file among
    them, timed by what it leads to, as listed before), but for the folders ``skip`` (relative paths). Walked by
    descriptor: each folder opened from the one above it, never through a link (``FOLDER_NO_LINK``), so a folder that
    a process of the dead run (alive until the recovery's kill) swaps for a link between its listing and its
    entering is not entered: walked by path (``os.walk``) until 2026-12-07, the folder the link led to was listed,
    outside the job's. Walked by ``run_folder.walk_folders``, as ``run_folder.folders_given_back`` is. ``root``
    itself may be a link (inside the store: ``WorkerFolders.artifacts_dir`` checked it)."""
    try:
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # none made, or gone
        return []
    found: list[tuple[str, float]] = []

    def enter(fd: int, name: str, path: str, is_folder: bool) -> tuple[int, list[tuple[str, bool]]] | None:
        if not is_folder:
            with contextlib.suppress(OSError):  # gone meanwhile, a link to nothing
                found.append((path, os.stat(name, dir_fd=fd).st_mtime))
        elif path not in skip:
            try:
                below = os.open(name, FOLDER_NO_LINK, dir_fd=fd)
            except OSError:  # a link (ELOOP), one to a folder listed so too, gone, not to be read
                return None
            return below, _listed(below)
        return None

    walk_folders(top, _listed(top), enter)
    return found


def _listed(fd: int) -> list[tuple[str, bool]]:
    """(name, whether it is a folder or a link to one) of each entry of the folder ``fd``, as ``os.walk`` told its
    folders from its files; nothing when it cannot be listed."""
    listed = []
    try:
        with os.scandir(fd) as listing:
            for entry in listing:
                try:
                    is_folder = entry.is_dir()
                except OSError:
                    is_folder = False
                listed.append((entry.name, is_folder))
    except OSError:
        return []
    return listed


def sweep_leftovers(orch: Orchestrator, queue: QueueIndex, folders: WorkerFolders, look_again: bool = True) -> None:
    """The handler folders of workers killed before their ``close``, the probes of workers killed while they started
    (``WorkerFolders.sweep_probes``; one in ``runs/`` is swept as a run's folder), and the run folders and lease
    records of runs that are over; first, with ``look_again``, who may change the store's folders and those above the
    project folder is looked at again, as when the worker started (``WorkerFolders.trust_again``: ``StorageError``,
    the worker stops): not at a worker's first sweep, right after it started (``Worker.recover_stale``)."""
    if look_again:
        folders.trust_again()
    runs_root = folders.runs_root
    swept = sweep_dead_host_folders(runs_root)
    if swept:
        log.info("removed %d handler folder(s) of workers that are gone", len(swept), extra={"folders": swept})
    probes = folders.sweep_probes()
    if probes:
        log.info("removed %d probe folder(s) of workers killed as they started", len(probes),
                 extra={"folders": probes})
    sweep_left_over_runs(orch, queue, runs_root)
    sweep_left_over_leases(orch, queue)


def sweep_left_over_runs(orch: Orchestrator, queue: QueueIndex, runs_root: Path) -> list[str]:
    """Remove the ``runs/run-*`` folders of runs that are over. A run's folder is removed by its
    worker once the outcome is recorded; a worker killed before that (SIGKILL, a crash) leaves it,
    with the raw output, context and payload of the run. A run is over unless its job is running
    under that run id now; the folders are listed before the running jobs are read, and a run's
    folder is made only after its claim (and its running entry) is written, so a folder listed
    here whose run is live is seen as running. A run the events say is over but whose handler
    still runs (a worker paused past its lease, a cancel not yet noticed) holds its output's
    lock, and its folder stays (``remove_run_folder``). So the running jobs are read here again
    rather than taken from this pass's recovery, which read them before the listing.

    What a run that is over left running on this machine is killed first (``kill_run_processes``: a process of its
    ``ORCH_RUN_ID``, and, while a process of the run still holds its output, one named after it: ``named``), unless
    its job still holds a running entry, which a recovery meets and ends (a cancelled run whose lease may hold: its
    worker, alive, ends it). On PostgreSQL the recovery of a dead run is made by the first worker of any machine, and
    kills only on its own: until 2026-12-07 (pg3) what the run left on its machine ran on for good, unless a worker
    there met the entry first. Its folder, on this machine's disk, names the run: a worker there kills them at its
    first sweep (as it starts) or within ``SWEEP_EVERY``: one read of ``/proc`` (~3 ms) per such folder while it is
    there."""
    try:
        names = [n for n in os.listdir(runs_root) if n.startswith(RUN_PREFIX)]
    except OSError:
        return []
    if not names:
        return []
    live, ending = set(), set()
    for job_id, _epoch in queue.running_entries():
        try:
            s = orch.load(job_id).state
        except (JobNotFoundError, InvalidIdError):
            continue
        if s is not None and s.state == RUNNING:  # even unverified: its run may be live
            live.add(s.run_id)
        elif s is not None and s.run_id is not None:  # its entry kept: a recovery still ends that run
            ending.add(s.run_id)
    for name in names:
        if name not in live and name not in ending:
            logged_killed(log, Killed.of(kill_run_processes(name, named=output_held(runs_root / name))), "", name,
                          "after the run was over (its worker gone, its job recovered or cancelled by a worker of "
                          "another machine), found by this machine's sweep of run folders")
    removed = [n for n in names if n not in live and remove_run_folder(runs_root / n)]
    if removed:
        log.info("removed %d run folder(s) of runs that are over", len(removed), extra={"folders": removed})
    return removed


def sweep_left_over_leases(orch: Orchestrator, queue: QueueIndex) -> list[str]:
    """Remove the lease records of runs that are over. An outcome drops its run's record right
    after its event on files (with it on PostgreSQL), so a worker killed in between leaves one
    behind: harmless (a record counts only for the epoch that runs), but never read again. A
    record of the epoch that runs now is kept; so is the record of a cancelled run whose running entry
    is still there (``end_cancelled_run`` reads it: without it, the claim's expiry would end a lease its
    worker renewed), and every record of a job that fails verification (an operator's evidence)."""
    entries = functools.cache(lambda: set(queue.running_entries()))  # listed only if a cancelled run's record is met
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
        if s is None or not lease_still_read(s, int(epoch), entries):
            orch.store.delete_aux(LEASES_AREA, key)
            removed.append(key)
    if removed:
        log.info("removed %d lease record(s) of runs that are over", len(removed), extra={"leases": removed})
    return removed


def lease_still_read(s: JobState, epoch: int, entries: Callable[[], set[RunningEntry]]) -> bool:
    """Whether the lease record of the job's ``epoch`` may still be read: that run is the job's current one and runs,
    or was cancelled and its running entry (in ``entries()``) is still there, for ``end_cancelled_run``."""
    if s.epoch != epoch:
        return False
    return s.state == RUNNING or (s.state == CANCELLED and (s.job_id, epoch) in entries())
