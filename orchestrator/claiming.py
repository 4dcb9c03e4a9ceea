"""The claim side of a worker: find the first runnable job and append its ``job_claimed``.

What a worker's claim passes decide and remember is apart from running the job (``orchestrator/worker.py``):
the jobs it left for other workers (no handler here, a kind it does not run, a key it does not hold: those
``UntrustedJobs`` holds, shared with stale recovery), the kinds it found no handler for, the delayed job due
next, and the views of the jobs it left unfinished. ``Claimer`` holds that state, one per ``Worker``, which
exposes it as before (``Worker.claim``, ``next_due``, ``unhandled``, ``handler_not_found``, ``untrusted_keys``).
"""
from __future__ import annotations

import heapq
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from orchestrator import audit as audit_log
from orchestrator import clock as clock_mod
from orchestrator import faults
from orchestrator.api import JobView, Orchestrator
from orchestrator.errors import (ConcurrencyError, HandlerNotFoundError, InvalidIdError, JobNotFoundError,
                                 KeyNotTrustedError, LockHeldError, OrchestratorError)
from orchestrator.handlers import lookup, registry_generation
from orchestrator.history import submitted_kind
from orchestrator.leases import lease_end
from orchestrator.limits import a_time, keep_latest
from orchestrator.notices import Notify, tell
from orchestrator.outcome import Claim
from orchestrator.queue import ReadyEntry
from orchestrator.recovery import reload_keys
from orchestrator.run_folder import RUN_PREFIX
from orchestrator.security import sanitize_text
from orchestrator.state import QUEUED, RUNNING, JobState
from orchestrator.store.base import StoredLine
from orchestrator.store.locks import LOCK_WAIT_SECONDS
from orchestrator.untrusted import SKIPPED_MAX, UntrustedJobs

if TYPE_CHECKING:
    from orchestrator.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

ORPHAN_ENTRY_GRACE = 60.0  # a ready entry whose job has no event yet is kept this long (submit in flight)
EVENT_IN_FLIGHT = 1.0  # an entry this young whose job's event is not there yet: its writer is probably at it
KNOWN_VIEWS = 128  # jobs a worker left unfinished (a question, an audit, a retry) whose last view it keeps
KNOWN_VIEW_MAX_BYTES = 64 * 1024  # ...if their events take no more than this (inputs may be up to 1 MiB)
# A bound on reading and checking a job ahead, for the slowest host measured (2026-12-05 11:13): ~3x the 72 us a line
# and 19 ms a MiB of an input of small objects of that day's Intel host. A look that may take longer than the time
# left before the running job's first heartbeat is not made (``Claimer.look_ahead``)
LOOK_AHEAD_EVENT_SECONDS, LOOK_AHEAD_MIB_SECONDS = 300e-6, 0.06
EVENT_WAIT = 0.05  # how long a claimer waits for that event (the wait ends the moment the line is written)
LOOKUP_RETRY_SECONDS = 5.0  # a kind with no handler here (its module failed to import) is looked up again then
FAILED_LOOKUPS_KEPT = 1024  # kinds remembered so (all forgotten when there are more)
LEFT_QUEUED_KEPT = 16384  # queued jobs a worker remembers leaving for other workers (``LeftQueued``; ~3 MB at most),
# and delayed jobs it read and found of its kinds (``Claimer._of_my_kinds``)


def look_ahead_seconds(lines: list[StoredLine]) -> float:
    """At most how long reading and checking these lines takes (``LOOK_AHEAD_*``): a signature checked and a
    record replayed a line, and their bytes parsed."""
    return len(lines) * LOOK_AHEAD_EVENT_SECONDS + size_of(lines) * LOOK_AHEAD_MIB_SECONDS / 2**20


def size_of(lines: list[StoredLine]) -> int:
    """The bytes of these lines (without their newlines)."""
    return sum(len(line.raw) for line in lines)


class LeftQueued:
    """Queued jobs this worker left for other workers, by job id, the latest met last: of a kind it has no handler
    for (read again at each pass, since a handler may be registered meanwhile) or of a kind it does not run
    (``WorkerSettings.kinds``: passed over without a read, since a job's kind never changes). The jobs signed by keys
    it does not hold are ``UntrustedJobs``'s (by index entry: whether a key is trusted can change)."""

    def __init__(self) -> None:
        self._jobs: OrderedDict[str, bool] = OrderedDict()  # job id -> passed over without a read

    def leave(self, job_id: str, *, for_good: bool) -> bool:
        """Remember the job as left (the oldest forgotten: most likely run since, read again if not); True the
        first time it is left."""
        first = job_id not in self._jobs
        keep_latest(self._jobs, job_id, for_good, LEFT_QUEUED_KEPT)
        return first

    def passes_over(self, job_id: str) -> bool:
        return self._jobs.get(job_id, False)

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def jobs_not_to_reserve(self) -> list[str]:
        """The latest jobs left, which a shared index is asked never to reserve for this worker
        (``QueueIndex.candidates``'s ``skip``)."""
        return list(islice(reversed(self._jobs), SKIPPED_MAX)) if self._jobs else []


@dataclass
class Unhandled:
    """Queued jobs of one kind that a claim left for another worker, and why this one has no handler for it."""

    reason: str
    job_ids: set[str] = field(default_factory=set)


def new_run_id() -> str:
    return RUN_PREFIX + os.urandom(8).hex()


class Claimer:
    """Claims jobs for one worker (``Worker.claim``): a claim pass over the ready index, and what it remembers
    from one pass to the next."""

    def __init__(self, orch: Orchestrator, settings: WorkerSettings, *, worker_id: str, actor: str,
                 untrusted: UntrustedJobs, notify: Notify | None = None,
                 check_room: Callable[[], None] = lambda: None) -> None:
        """``check_room``: called right before each claim is written; raises when there is no room to run the job
        (``WorkerFolders.check_room``: a full disk), and nothing is claimed."""
        self.orch = orch
        self.check_room = check_room
        self.notify = notify  # where its warning of a kind it has no handler for goes (``notices``)
        self.settings = settings
        self.worker_id = worker_id
        self.actor = actor
        self.queue = orch.queue
        self.next_due: float | None = None  # earliest delayed job this worker could run
        self._warned_kinds: set[str] = set()
        self.unhandled: dict[str, Unhandled] = {}  # kind -> the jobs the last claim left queued for want of a handler
        self.untrusted = untrusted  # jobs left for want of a key (orchestrator/untrusted.py)
        self.left = LeftQueued()  # jobs left for want of a handler, or of a kind this worker does not run
        self._kinds = frozenset(self.settings.kinds)
        self._mine: OrderedDict[str, None] = OrderedDict()  # delayed jobs read and found of those kinds (``_of_my_kinds``)
        self._failed_lookups: dict[str, tuple[int, float, str]] = {}  # kind -> (registry generation, when, why)
        self._known: OrderedDict[str, tuple[JobView, Any]] = OrderedDict()  # see ``remember``
        self._ahead: tuple[JobView, Any] | None = None  # see ``look_ahead``: one view, of any size
        # jobs another worker took first: found running when read (``taken``), or claimed while this one was at it, its
        # append refused (``lost``); what several workers on one queue cost each other (``python -m bench.workers``)
        self.races = {"taken": 0, "lost": 0}
        # the last pass left a runnable job for another worker (another kind, no handler, a key it does not trust):
        # this worker then watches for new jobs on its own, not in turn with the others (``QueueIndex.wait``)
        self.left_for_others = False
        # the last pass: when it was made, the jobs it met, and whether what it left was counted beyond them since
        # (``count_left``); the own entries of jobs it met under a left-over one (``_try_claim``)
        self._pass_at = 0.0
        self._met: set[str] = set()
        self._moved: list[ReadyEntry] = []
        self._counted = False

    def claim(self, now: float | None = None) -> Claim | None:
        """Claim the first runnable job (priority, then FIFO); None if there is none."""
        now = self.orch.clock() if a_time(now) is None else now
        self.queue.ensure_built(self.orch)
        self.next_due = None
        self.unhandled = {}
        self.untrusted.new_pass()
        self.left_for_others = False
        self._pass_at, self._met, self._counted, self._moved = now, set(), False, []
        # a job left for want of a handler or a key is never the one a shared index reserves for this worker: reserved
        # at every pass, it would keep the workers that can run it waiting (PostgreSQL, ``QueueIndex.candidates``)
        skip = self.untrusted.jobs_not_to_reserve() + self.left.jobs_not_to_reserve()
        for entry in self._in_order(self._listed(now, skip)):
            self._met.add(entry.job_id)
            if self.left.passes_over(entry.job_id):  # of a kind this worker does not run: no read, not waited for
                self.left_for_others = True
                continue
            if self._kinds and not self._of_my_kinds(entry):  # its first line read once, then remembered
                continue
            if not entry.due(now):  # delayed (retry backoff): the entry tells, no read needed
                self.next_due = min(self.next_due or entry.runnable_at, entry.runnable_at)
                continue
            if self.untrusted.passes_over(entry, entry.job_id):  # left for want of a key, as it was: no read
                self.left_for_others = True
                continue
            try:
                claim = self._try_claim(entry, now)
            except LockHeldError:  # another process holds its lock (paused mid-append?): looked at again soon
                retry = now + LOCK_WAIT_SECONDS
                self.next_due = min(self.next_due or retry, retry)
                continue
            if claim is not None:
                return claim
        self._ahead = None  # its job was not claimable here: an idle worker holds no view looked at for a claim
        return None

    def _listed(self, now: float, skip: list[str]) -> Iterator[ReadyEntry]:
        """The pass's candidates (``QueueIndex.candidates``). From an index that lists a page of the due entries
        (PostgreSQL's: the reserved row and ``CANDIDATES`` more), the due ones of each page, the next page asked for
        only once this one is left whole (``QueueIndex.next_page``: none of a kind the pass found it has no handler
        for, nor signed by a key found missing, nor of another job remembered as left for want of a key: not read
        again; ``UntrustedJobs.keys_to_leave_out`` is asked at each page, since a page may find a key, and
        ``jobs_to_leave_out`` once, since a job the pass leaves is behind its next pages), then the first page's hints
        (not due: ``next_due``). So one pass reaches every due job this worker can run, as on
        files; until 2026-12-07 one behind more than 9 it could not run was not reached by ``worker --once``, and a
        looping worker's later passes reserved past at most ``SKIPPED_MAX`` of them. A claim that finds its job in
        the first page costs one statement, as before."""
        kinds = self.settings.kinds
        listed = self.queue.candidates(now, skip=skip, kinds=kinds, left_keys=self.untrusted.keys_to_leave_out())
        if self.queue.lists_every_due_entry:
            yield from listed
            return
        later, left_jobs = [], None
        while listed:
            for entry in listed:
                if entry.due(now):
                    yield entry
                else:
                    later.append(entry)
            left_jobs = left_jobs if left_jobs is not None else self.untrusted.jobs_to_leave_out()
            listed = self.queue.next_page(now, skip=skip, kinds=kinds, left_kinds=list(self.unhandled),
                                          left_jobs=left_jobs, left_keys=self.untrusted.keys_to_leave_out())
        yield from later

    def _in_order(self, candidates: Iterable[ReadyEntry]) -> Iterator[ReadyEntry]:
        """The candidates, and among them, at its place in the claim order, the own entry of each job met under a
        left-over one (``_try_claim``): before the first candidate that sorts after it (the candidate itself when it
        is that entry), or at the end of the pass (its entry was put since the listing, or put back by
        ``_try_claim``). A candidate taken from the index ahead of such an entry claimed is met at a later pass."""
        moved = self._moved
        for entry in candidates:
            while moved and moved[0] <= entry:
                own = heapq.heappop(moved)
                if own != entry:
                    yield own
            yield entry
        while moved:
            yield heapq.heappop(moved)

    def _of_my_kinds(self, entry: ReadyEntry) -> bool:
        """Whether an entry's job is of a kind this worker runs (``WorkerSettings.kinds``): one of another kind is
        neither read nor waited for (``next_due``, ``--idle-exit``). A file entry has no kind: the job's first line
        is read (``EventStore.first_line``, ~25 us, where a verified read of the job costs ~0.2 ms), once, since a
        job's kind never changes: one of another kind is remembered in ``LeftQueued`` (and released, as the claim
        releases a job it leaves), one of these kinds in ``_mine`` (the ``LEFT_QUEUED_KEPT`` read last). A hint,
        unverified: a claim reads and checks the job."""
        kind = entry.kind
        if kind is None:
            if entry.job_id in self._mine:
                return True
            try:
                kind = submitted_kind(self.orch.store.first_line(entry.job_id))
            except (JobNotFoundError, InvalidIdError):
                return True  # left to the claim, which drops an orphan entry
            if not isinstance(kind, str):
                return True  # no kind to tell (no line yet: a submit in flight; or not a submission): the claim reads it
            if kind in self._kinds:  # remembered too: read at every pass, a backlog of retries cost a read each
                keep_latest(self._mine, entry.job_id, None, LEFT_QUEUED_KEPT)
        if kind in self._kinds:
            return True
        self._leave(entry, entry.job_id, for_good=True)  # a row from before 0004 (no kind) may be reserved here
        return False

    def _leave(self, entry: ReadyEntry, job_id: str, *, for_good: bool) -> None:
        """Leave a queued job for other workers (``LeftQueued``) and, the first time, release the reservation a
        shared index made of it for this worker (``QueueIndex.release``): not waited out by the workers that run
        it. Not again: a job left before and reserved again (out of ``skip``, which holds the ``SKIPPED_MAX`` left
        last) waits out its reservation, or each release's notify would wake this worker into another pass that
        reserves the next such job, for ever."""
        self.left_for_others = True
        if self.left.leave(job_id, for_good=for_good):
            self.queue.release(entry)

    def _load_for_claim(self, entry: ReadyEntry, now: float) -> JobView | None:
        """The entry's job, read and verified; None if it has no event yet.

        An entry is written before the event that makes its job queued (a submit, a resume, a
        revise), so a worker woken by a new entry usually arrives before that event. For a young
        entry it waits for the event (``EventStore.wait_for_more``) and reads the job again, rather
        than going back to sleep until the writer announces the job (~0.5 ms later).
        """
        waited = now - entry.runnable_at > EVENT_IN_FLIGHT  # an old entry: nothing is in flight
        view = self._kept_view(entry.job_id)  # what this worker last wrote of it
        # read by the statement that reserved the entry (PostgreSQL), verified here as any read; the claim's append
        # still checks that the job did not change since (its expected head), as after a read of its own
        read = self.queue.reserved_read(entry)
        while True:
            try:  # from a view already verified (after a wait, or written here), only the new lines are checked
                # every signature: a line the head record vouches for is taken on its word by reads,
                # never by a run (docs/format.md)
                view = (self.orch.load(entry.job_id, every_signature=True, read=read) if view is None
                        else self.orch.load_more(view, every_signature=True, read=read))
            except JobNotFoundError:
                view = None
            except InvalidIdError:  # a name no job has (not an entry this code wrote): dropped as an orphan is
                return None
            read = None  # a second look reads the job again
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
            if now - entry.runnable_at > ORPHAN_ENTRY_GRACE:  # its submit never completed (or its first line is
                self.queue.drop_orphan_ready(entry, self.orch.store)  # landing late: looked for once more)
            return None
        if not view.ok:
            if reload_keys(self.orch):  # a key made (keys rotate) or revoked since this worker started
                return self._try_claim(entry, now)
            missing = view.missing_keys()
            if missing:  # nothing else wrong: a worker that trusts those keys can check it, and runs it
                self.untrusted.leave(entry, view.job_id, missing)
                self.left_for_others = True
                self.queue.name_keys(entry, view)  # a row from before 0009 then left out by them
                self.queue.release(entry)
                return None
            self._refuse(view, entry, now)
            return None
        s = view.state
        if s is None or s.state != QUEUED:
            if entry.runnable_at > (s.updated_at if s else 0.0) and now - entry.runnable_at < ORPHAN_ENTRY_GRACE:
                return None  # newer than the job's last event: its event (a resume, a revise) may be in flight
            if s is not None and s.state == RUNNING:
                self.races["taken"] += 1
            self.queue.drop_ready(entry)
            return None
        # compared by what names an entry (``ReadyEntry``'s order and identity): the keys of its lines, which only a
        # replacement needs (an index that keeps them: PostgreSQL), are read only then (60,000-92,000 instructions a
        # claim in W3, ``bench.step_cost``)
        expected = ReadyEntry.for_state(s)
        if expected != entry:  # a left-over entry (a crash): the right one put in its place, the job tried there
            expected = ReadyEntry.for_view(view)
            self.queue.put_ready(expected)
            self.queue.drop_ready(entry)
            if expected.due(now):  # not claimed through the old entry: ahead of the jobs queued before its own
                heapq.heappush(self._moved, expected)  # (until 2026-12-07), but at its own place (``_in_order``)
            else:
                self.next_due = min(self.next_due or expected.runnable_at, expected.runnable_at)
            return None
        if self._kinds and s.kind not in self._kinds:  # not this worker's (--kind): left for good, quietly
            self._leave(entry, s.job_id, for_good=True)
            return None
        if self._no_handler(s):  # read again at later passes: a handler may be registered meanwhile
            self._leave(entry, s.job_id, for_good=False)
            return None
        run_id, epoch = new_run_id(), s.epoch + 1
        data = {"worker_id": self.worker_id, "epoch": epoch, "attempt": s.attempt + 1,
                "lease_expires_at": clock_mod.to_iso(lease_end(now, self.settings.lease_seconds))}
        # the claim event carries the first lease expiry: a run shorter than a heartbeat writes no lease record
        self.check_room()
        faults.point("worker.before_claim")
        try:
            claimed = self.orch.append(view, s.job_id, [("job_claimed", data)], run_id=run_id, actor=self.actor,
                                       now=now, fence=epoch)
        except LockHeldError:
            raise  # not lost: passed over for this pass (``claim``)
        except ConcurrencyError:
            self.races["lost"] += 1
            return None  # another worker won this one
        faults.point("worker.after_claim")
        return Claim(claimed, run_id, epoch)

    def _no_handler(self, s: JobState) -> bool:
        """True if this worker has no handler for the job's kind: the job stays queued for a worker that has
        one (workers with different ``--import`` modules share a queue). Counted for ``handler_not_found``."""
        left = self._unhandled_kind(s.kind, s.job_id)
        if left is None:
            self.left.forget(s.job_id)  # a handler registered since: it may be reserved again
            return False
        left.job_ids.add(s.job_id)  # a set: a pass may meet an entry twice (queue.candidates)
        return True

    def _unhandled_kind(self, kind: str, job_id: str) -> Unhandled | None:
        """What the pass notes of ``kind`` when this worker has no handler for it, None when it has one. Warned once
        per kind (naming ``job_id``, the job met with it); a kind is looked up at most once per pass (a
        ``module:function`` kind is an import), and one found without a handler not again for
        ``LOOKUP_RETRY_SECONDS`` unless a handler is registered."""
        left = self.unhandled.get(kind)
        if left is not None:
            return left
        generation, failed_at, reason = self._failed_lookups.get(kind, (-1, 0.0, ""))
        if generation == registry_generation() and time.monotonic() - failed_at < LOOKUP_RETRY_SECONDS:
            left = self.unhandled[kind] = Unhandled(reason)  # not imported again yet (LOOKUP_RETRY_SECONDS)
            return left
        try:
            lookup(kind)
        except HandlerNotFoundError as exc:
            return self._left_for_want_of_a_handler(kind, job_id, exc)
        self._failed_lookups.pop(kind, None)
        return None

    def _left_for_want_of_a_handler(self, kind: str, job_id: str, exc: HandlerNotFoundError) -> Unhandled:
        """Note a kind this worker has no handler for: in this pass, and for ``LOOKUP_RETRY_SECONDS`` (a module that
        failed to import is not imported again at every pass: a pass a job, when busy; and a module that sets a
        stop signal to be ignored while it imports would open, at each import, a moment in which the worker's
        SIGTERM is lost). Warned once per kind."""
        left = self.unhandled[kind] = Unhandled(exc.details["reason"])
        if len(self._failed_lookups) >= FAILED_LOOKUPS_KEPT:
            self._failed_lookups.clear()
        self._failed_lookups[kind] = (registry_generation(), time.monotonic(), left.reason)
        if kind not in self._warned_kinds:
            self._warned_kinds.add(kind)
            tell(self.notify, log, f"{sanitize_text(exc.message)}; leaving job {job_id} queued for a worker that "
                 "has one (--import MODULE / ORCH_HANDLERS)", job_id=job_id, kind=kind)
        return left

    def count_left(self) -> None:
        """Count, in what the last pass left queued for other workers (``unhandled``, ``untrusted.queued``), the due
        jobs it did not meet: an index that lists a page of them at a time (``QueueIndex.lists_every_due_entry``;
        PostgreSQL's, whose next pages leave out the kinds found without a handler and the jobs left for want of a
        key: ``_listed``) left those out, and
        until 2026-12-07 ``worker --once`` said "9 queued job(s)" of 60 (exit 11 and 8, the ``worker_stopped``
        line). Only for such a report (``handler_not_found``, ``untrusted_keys``), never on the claim path: one
        listing of the index (``QueueIndex.ready``), each job counted by its entry's kind, unread; where jobs were
        left for want of a key, each job not met is passed over as a pass would (its entry left, or its row naming a
        key found missing: ``UntrustedJobs.passes_over``, unread since the twenty-eighth session) or else read and
        checked. A store that fails meanwhile leaves the pass's own counts (logged)."""
        if self._counted or self.queue.lists_every_due_entry or not (self.unhandled or self.untrusted.queued):
            return
        self._counted = True
        read_each = bool(self.untrusted.queued)  # a job of a kind it has no handler for may be one of them too
        try:
            for entry in self.queue.ready():
                if entry.job_id in self._met or not entry.due(self._pass_at):
                    continue
                if self._kinds and entry.kind is not None and entry.kind not in self._kinds:
                    continue  # not this worker's (--kind): not counted, as a pass leaves it quietly
                if read_each and self.untrusted.passes_over(entry, entry.job_id):
                    continue  # counted by the key that left it
                if read_each or entry.kind is None:  # a row from before 0004 has no kind: its job tells
                    self._count_by_reading(entry)
                else:
                    left = self._unhandled_kind(entry.kind, entry.job_id)
                    if left is not None:
                        left.job_ids.add(entry.job_id)
        except OrchestratorError as exc:
            log.warning("could not count every queued job left for other workers: %s", exc.message,
                        extra={"code": exc.code})

    def _count_by_reading(self, entry: ReadyEntry) -> None:
        """``count_left`` of one job, read and checked: left for want of a key, or of a handler, or not at all (a job
        this worker could run, refuse, or one no longer queued)."""
        try:
            view = self.orch.load(entry.job_id, every_signature=True)
        except (JobNotFoundError, InvalidIdError):
            return
        missing = view.missing_keys()
        s = view.state
        if missing:
            self.untrusted.leave(entry, entry.job_id, missing)
            self.queue.name_keys(entry, view)
        elif view.ok and s is not None and s.state == QUEUED and (not self._kinds or s.kind in self._kinds):
            left = self._unhandled_kind(s.kind, s.job_id)
            if left is not None:
                left.job_ids.add(s.job_id)

    def handler_not_found(self) -> HandlerNotFoundError | None:
        """The jobs the last ``claim`` left queued for want of a handler, by kind and why, as the error
        ``worker --once`` exits with (11) when it ran nothing; None if it left none. Every such due job is counted
        (``count_left``)."""
        self.count_left()
        if not self.unhandled:
            return None
        kinds = {kind: {"jobs": len(left.job_ids), "reason": left.reason} for kind, left in self.unhandled.items()}
        jobs = sum(k["jobs"] for k in kinds.values())
        listed = "; ".join(f"{kind!r} ({k['jobs']} job(s)): {k['reason']}" for kind, k in list(kinds.items())[:5])
        more = f"; {len(kinds) - 5} more kind(s)" if len(kinds) > 5 else ""
        return HandlerNotFoundError(
            f"{jobs} queued job(s) left for a worker with a handler for their kind: {listed}{more}. "
            "Start a worker that has it (--import MODULE / ORCH_HANDLERS; for a module:function kind, as its reason "
            "says), or cancel the job and submit it with the right --kind",
            worker_id=self.worker_id, jobs=jobs, kinds=kinds)

    def untrusted_keys(self) -> KeyNotTrustedError | None:
        """The jobs the last ``claim`` left queued because keys this worker does not trust signed them, by key, as
        the error ``worker --once`` exits with (8) when it ran nothing; None if it left none. Every such due job is
        counted (``count_left``)."""
        self.count_left()
        return self.untrusted.error(self.worker_id)

    def _refuse(self, view: JobView, entry: ReadyEntry, now: float) -> None:
        """A job whose history failed verification is never run: audit the refusal, drop its entry. (Unless its
        only problem is a key this worker does not hold: ``orchestrator/untrusted.py``.)"""
        err = view.integrity_error() or {}
        audit_log.record(self.orch, job_id=view.job_id, action="run_refused", actor=self.actor,
                         note=sanitize_text(f"{err.get('code')}: {err.get('message')}"), now=now)
        self.queue.drop_ready(entry)
        log.error("refusing to run job %s: %s", view.job_id, err.get("message"),
                  extra={"job_id": view.job_id, "code": err.get("code")})

    def look_ahead(self, within: float | None = None) -> None:
        """Read and check the job the next claim will most likely take (``QueueIndex.upcoming``) while this worker's
        handler runs, and keep its view: the claim then checks only the lines written since (``load_more``), not
        every signature and the replay again: ~0.2 ms of a small job's claim, ~16 ms of one with a 900 KB input, done
        while the handler process has the other CPU. One view is kept so, whatever its size (``remember`` keeps
        many, small ones only), until its claim, the next look, or a claim pass that finds nothing to claim. Reads
        only; a job it cannot read, that is not queued, or of a kind this worker does not run (``--kind``; one it
        left so already is not even read) is not kept: the claim decides. ``within``: the seconds left before the
        running job's first heartbeat is due; a job whose check may take longer (``look_ahead_seconds``: a long
        history under a short lease) is read but not checked, so that the heartbeat is not late."""
        entry = self.queue.upcoming()
        next_id = entry.job_id if entry is not None else None
        if not self._looked_at(next_id):
            self._ahead = None  # the last look's job was not claimed here, and is not next: its memory is let go
        if (entry is None or self._ahead is not None or entry.job_id in self._known
                or self.left.passes_over(entry.job_id) or not entry.due(self.orch.clock())):
            return  # nothing next, looked at already, kept, left to others, or not due
        try:
            read = self.orch.read_job(entry.job_id)
            if within is not None and look_ahead_seconds(read[1]) > within:
                return  # the claim checks it, before its own lease starts
            view = self.orch.load(entry.job_id, every_signature=True, read=read)
        except (OrchestratorError, OSError):  # not there yet, gone, unreadable: the claim finds out and says so
            return
        s = view.state
        if view.ok and s is not None and s.state == QUEUED and (not self._kinds or s.kind in self._kinds):
            self._ahead = (view, self.orch.keyring.trust_state())

    def remember(self, view: JobView) -> None:
        """Keep the view of a job this worker left unfinished: a resume, a revise or a retry brings it back, often to
        this worker, whose claim then checks only the lines written since (``load_more`` compares the rest byte for
        byte with this view) instead of the whole job again."""
        self._known.pop(view.job_id, None)
        if view.state is None or view.state.is_final or size_of(view.stream.lines) > KNOWN_VIEW_MAX_BYTES:
            return
        view.stream.records  # its outcome's record made now, while the job waits, not by the claim that brings it back
        keep_latest(self._known, view.job_id, (view, self.orch.keyring.trust_state()), KNOWN_VIEWS)

    def _looked_at(self, job_id: str | None) -> bool:
        """Whether ``look_ahead``'s view is of ``job_id``."""
        return self._ahead is not None and self._ahead[0].job_id == job_id

    def _kept_view(self, job_id: str) -> JobView | None:
        """The view ``look_ahead`` or ``remember`` kept, if the keys trusted and revoked are still those it was
        checked with."""
        kept = self._known.pop(job_id, None)
        if self._looked_at(job_id):  # ``look_ahead``'s (newer than a kept one)
            kept, self._ahead = self._ahead, None
        if kept is None or kept[1] != self.orch.keyring.trust_state():
            return None
        return kept[0]
