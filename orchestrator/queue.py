"""The ready and running indexes: derived caches that let a worker claim without scanning.

``QueueIndex`` is a projection of the job events, fed by ``Orchestrator.append`` through
``before_append``/``after_append``, and rebuildable from the events at any time
(``docs/ADR-state-source.md``). Two rules make it crash-safe:

* an entry is written *before* the event that makes a job runnable (or running), and
  removed only *after* the event that ends it (a run ended from outside, cancelled or recovered as stale: once stale
  recovery ended what the run left, ``run_left_running``). A crash in between leaves an extra entry,
  never a missing one (an append the store refuses drops the ready entry it put: ``drop_refused``);
* an entry is only a hint: the claimer re-reads the job's verified events before acting,
  drops entries whose job is no longer queued/running when it meets them, and tries a job met
  under an entry not its own at its own entry's place (``Claimer._in_order``).

The file index keeps one empty entry per ready job, named so that a sorted listing is the
claim order (priority desc, then runnable-at asc, then job id):
``index/ready/<1000-priority>.<at_us>+<job_id>`` for a job runnable at once (``at_us``: when it was queued, its
place in FIFO order only), ``index/ready/<1000-priority>.<runnable_at_us>.<job_id>`` for a retry waiting out its
backoff (and for every entry an index written before 2026-12-06 holds: due at its time, as then), and
``index/running/<job_id>@<epoch>``;
each entry is a hard link of ``index/.entry`` (a name, no new file: ``store.file_queue.FileQueueIndex._touch``).
It is built while ``index/built`` and a ``.built`` mark in each folder are there: a folder deleted by hand, or made
anew without the entries it held, is rebuilt from the events (``FileQueueIndex.is_built``).
A PostgreSQL backend implements the same interface with a table and
``SELECT ... FOR UPDATE SKIP LOCKED`` in ``candidates``; the claim itself stays an append
with an expected sequence, so the index never decides who wins.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterator, NamedTuple

from orchestrator import faults
from orchestrator.errors import INDEX_NOT_UPDATED, JobNotFoundError, OrchestratorError
from orchestrator.limits import is_kind
from orchestrator.state import CANCELLED, QUEUED, RUNNING, JobState
from orchestrator.store.base import InTransaction

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.store.base import EventStore, StoredLine
    from orchestrator.views import JobView

log = logging.getLogger(__name__)

INDEX_DIR = "index"
INDEX_FOLDERS = ("", "ready", "running")  # under INDEX_DIR; checked when the index is opened (check_folders)
BUILT_MARKER = "built"
FOLDER_MARK = ".built"  # in ready/ and running/: the folder is the one the index was last built in (FileQueueIndex)
AT_ONCE = "+"  # between a ready entry's time and its job id: runnable at once (``ReadyEntry.at_once``); never in an id
ENTRY_TEMPLATE = ".entry"  # the empty file every entry is a hard link of (FileQueueIndex._touch)


@dataclass(frozen=True, order=True)
class ReadyEntry:
    """One ready-index entry; ordering is the claim order."""

    neg_priority: int
    runnable_at_us: int
    job_id: str
    # the job's kind when the writer knew it (an index that can filter by kind keeps it: PostgreSQL); not part of
    # the entry's identity or order, and not in a file entry's name (a file index's entries carry None)
    kind: str | None = field(default=None, compare=False)
    # runnable at once, whatever the time stamp, which orders it only (a job submitted, resumed, revised, released):
    # a clock stepped back holds up no such job. False: due at ``runnable_at`` (a retry's backoff; an entry written
    # before the mark: a file entry named without it, a PostgreSQL row from before migration 0007). Not part of the
    # entry's identity or order: one job, one entry, however it is named
    at_once: bool = field(default=False, compare=False)
    # the key that signed the job's first line, when the writer knew it (PostgreSQL keeps it, migration 0008: a worker
    # that does not trust that key leaves the row out of its next pages, ``UntrustedJobs``); not part of the entry's
    # identity or order, and not in a file entry's name (a file index's entries carry None)
    signer: str | None = field(default=None, compare=False)
    # every key that signed a line of the job when the writer wrote the entry, the first line's first (PostgreSQL keeps
    # them too, migration 0009: a worker that does not trust one leaves the row out, whichever line it signed); as
    # ``signer``, not part of the entry's identity or order, and none in a file entry
    signers: tuple[str, ...] = field(default=(), compare=False)

    @property
    def priority(self) -> int:
        return -self.neg_priority

    @property
    def keys(self) -> frozenset[str]:
        """The keys the entry names as signing its job's lines (``signer``, ``signers``): a worker that does not trust
        one of them cannot check the job."""
        return frozenset(self.signers) | ({self.signer} if self.signer is not None else set())

    @property
    def runnable_at(self) -> float:
        return self.runnable_at_us / 1e6

    def due(self, now: float) -> bool:
        """Whether a claim at ``now`` may take the entry's job: at once, or its time has come."""
        return self.at_once or self.runnable_at <= now

    @property
    def name(self) -> str:
        return f"{1000 - self.priority:04d}.{self.runnable_at_us:017d}{AT_ONCE if self.at_once else '.'}{self.job_id}"

    @property
    def names(self) -> tuple[str, ...]:
        """The names a file index may hold this entry under: its own, and for an entry runnable at once the name an
        index written before the mark gave it (``holds_entry``)."""
        return (self.name, replace(self, at_once=False).name) if self.at_once else (self.name,)

    @classmethod
    def parse(cls, name: str) -> "ReadyEntry | None":
        prio, dot, rest = name.partition(".")
        at, mark, job_id = rest.partition(AT_ONCE)
        if not mark or not at.isdigit():  # no mark, or a job id holding a "+" (none does: is_id)
            at, mark, job_id = rest.partition(".")
        if not mark or not job_id or not prio.isdigit() or not at.isdigit():
            return None
        return cls(int(prio) - 1000, int(at), job_id, at_once=mark == AT_ONCE)

    @classmethod
    def for_state(cls, state: JobState) -> "ReadyEntry":
        """The entry a queued job should have: runnable at its retry time, else at once (ordered by when it was
        queued)."""
        kind = _entry_kind(state)
        if state.retry_at:
            return cls(-state.priority, int(round(state.retry_at * 1e6)), state.job_id, kind)
        return cls(-state.priority, int(round(state.updated_at * 1e6)), state.job_id, kind, at_once=True)

    @classmethod
    def for_view(cls, view: "JobView") -> "ReadyEntry":
        """``for_state`` of a verified, queued job's view, naming the key of its first line (``JobView.signer``) and
        every key of its lines (``JobView.signers``): an entry put again from a view (a claimer's left-over entry
        replaced, a recovery's missing one put back) keeps what its row had, so a worker that lacks one of those keys
        still leaves it out unread (migrations 0008 and 0009)."""
        assert view.state is not None
        return replace(cls.for_state(view.state), signer=view.signer, signers=view.signers)


def _entry_kind(state: JobState) -> str | None:
    """The kind a job's ready entry carries: the job's, if it can be a kind today (``limits.is_kind``), else none, as
    a row from before migration 0004. A history stored before 2026-12-07 may hold a kind with a control character
    (the file store took a NUL, which a PostgreSQL text column refuses: the import, a rebuild and every append that
    queued such a job failed, and no job of the project ran); with no kind, every worker lists it, none has its
    handler (none can be registered), and it waits for a cancel."""
    kind = state.kind
    return kind if isinstance(kind, str) and _can_be_a_kind(kind) else None


@functools.lru_cache(maxsize=256)
def _can_be_a_kind(kind: str) -> bool:
    """``is_kind``, its answer kept for the kinds met last: a job's kind is looked at up to four times per append
    (``IndexChange.of``, before and after it), ~4,600 instructions each (callgrind), and the answer is the string's
    alone."""
    return is_kind(kind)


def run_left_running(s: JobState) -> bool:
    """Whether the run of ``s.epoch`` may have left processes that no one but stale recovery will end, so that its
    running entry is kept (``IndexChange``) or put by a rebuild (``index_job``): a cancel of the running job (its worker
    may be dead or paused: ``recovery.end_cancelled_run``), or a stale recovery's event (written before its kill: a
    recovering worker that dies in between leaves them, ``recovery.end_recovered_run``). Only a claim makes a job
    running, so a cancel of a running job follows its claim."""
    if s.last_event == "stale_recovered":
        return True
    return s.state == CANCELLED and len(s.history) >= 2 and s.history[-2][0] == "job_claimed"


class IndexChange(NamedTuple):
    """What one event changes in the index: the one place the transition rules live."""

    put_ready: ReadyEntry | None  # the job is (still) queued: its entry, new or unchanged
    drop_ready: ReadyEntry | None  # the entry the job no longer has (it left queued, or moved)
    put_running: bool  # the job is running: the entry of its epoch (put again on each event: idempotent)
    # the job left running: the entry of the epoch it ran under. Not for a cancel or a stale recovery
    # (``run_left_running``): stale recovery, meeting the entry, kills what the run left, then drops it
    drop_running: bool

    @classmethod
    def of(cls, old: JobState | None, new: JobState) -> "IndexChange":
        after = ReadyEntry.for_state(new) if new.state == QUEUED else None
        before = ReadyEntry.for_state(old) if old is not None and old.state == QUEUED else None
        was_running = old is not None and old.state == RUNNING
        return cls(after, before if before != after else None, new.state == RUNNING,
                   was_running and new.state not in (RUNNING, CANCELLED) and new.last_event != "stale_recovered")


def index_warning(exc: OrchestratorError, job_id: str, seq: int, event_type: str) -> dict[str, str]:
    """The ``{code, message}`` of a job's append acknowledged although ``after_append`` failed (``Orchestrator.append``):
    the event is durable, and the index only a hint derived from it. What such a failure leaves is an entry too many
    (a running entry, or a ready entry not dropped), which the worker that meets it drops, or a ready entry that an
    announcement had to put back and could not: that job waits for a rebuild of the index. Raising would say that
    nothing was written, and the caller would do it again (a second job for a ``submit`` without a key)."""
    return {"code": INDEX_NOT_UPDATED,
            "message": f"event {seq} ({event_type}) of job {job_id} is durable, but the queue index was not brought up "
                       f"to date after it: {exc.message}. Nothing is to be done again: the index is a cache of the "
                       "events. Fix what is named (a folder of the index needs no backup: one missing is made anew); "
                       "an entry left over is dropped by the worker that meets it, and a job still queued that no "
                       f"worker takes gets its entry back once {INDEX_DIR}/{BUILT_MARKER} is removed (the next worker "
                       "rebuilds the index from the events)"}


class QueueIndex(ABC):
    """Ready and running jobs, as hints for claiming and stale recovery."""

    _seen_built = False  # ``built_with_first_job`` has decided for this project: not asked again
    #: Whether ``candidates`` lists every due entry; False for a shared index that lists a page of them at a time
    #: (PostgreSQL: ``pg_queue.CANDIDATES``; the next, ``next_page``, leaves out the kinds a pass found no handler
    #: for), whose claimer lists the rest (``ready``) only to say how many jobs it left for other workers
    #: (``Claimer.count_left``)
    lists_every_due_entry = True
    #: Whether its entries name the key of their job's first line (``ReadyEntry.signer``): a file entry's name
    #: holds none, and an append works it out for an index that keeps it only
    keeps_signers = False

    # -- projection hooks (called by Orchestrator.append) --------------------------------------
    def before_append(self, job_id: str, old: JobState | None, new: JobState,
                      signer: str | None = None, signers: tuple[str, ...] = ()) -> InTransaction | None:
        """Make the entries the new state needs exist before its event is written.

        An index kept in the store's database returns its statements instead, for the append to
        run in its own transaction (``EventStore.append(in_transaction=...)``); this one returns None.
        ``signer``: the key that signed the job's first line (``ReadyEntry.signer``), and ``signers`` every key of its
        lines (``ReadyEntry.signers``), for an index that keeps them.
        """
        change = IndexChange.of(old, new)
        if change.put_ready is not None:
            self.put_ready(change.put_ready)
        if change.put_running:
            self.put_running(job_id, new.epoch)
        return None

    def after_append(self, job_id: str, old: JobState | None, new: JobState) -> None:
        """The event is durable: drop entries the job no longer needs, announce new work.

        The running entry goes first: a job handed back to the queue must not look claimed to its
        own announcement (which puts back a ready entry only for a job nobody claimed).
        """
        faults.point("queue.after_append")
        change = IndexChange.of(old, new)
        if change.drop_running and old is not None:
            self.drop_running(job_id, old.epoch)
        if change.drop_ready is not None:
            self.drop_ready(change.drop_ready)
        if change.put_ready is not None:
            self.announce(change.put_ready)

    def drop_refused(self, job_id: str, old: JobState | None, new: JobState, orch: "Orchestrator") -> None:
        """The store refused the event ``before_append`` made entries for (a writer came first, ``ConcurrencyError``: a
        resume racing a resume or a cancel, a revise racing a revise, a keyed submit racing one of the same key; or the
        write failed): read the job and leave the entry if its state needs that very entry (another writer of the same
        priority, at the same microsecond, put the same name); else drop it, read the job again, and put the entry back
        if its state needs it now. The look after the drop is ``drop_orphan_ready``'s: an event that lands after it is
        announced, and an announcement puts back a dropped entry, so no order of the two takes the entry from the job
        that needs it. The look before it keeps the winner's entry out of the drop: dropped first (until 2026-12-07,
        twenty-seventh session), a loser killed before it put the entry back left the winner's job queued with none,
        which no worker claimed until the index was rebuilt; now only an event landing between the two looks, of the
        same job and priority and stamped that same microsecond, meets the window (docs/worker.md). A second read, on a
        refused append whose entry was not needed only. Until 2026-12-07 the entry stayed, and once its job was queued
        again (a retry, the next resume) a claim came through it, ahead of the jobs queued before
        (``Claimer._try_claim`` now tries such a job at its own entry's place, for the entries a crash still leaves).
        A running entry is left: a claim that lost put the same one as the claim that won (the next epoch), and stale
        recovery drops one no claim holds. Never raises: the caller raises the refusal."""
        entry = IndexChange.of(old, new).put_ready
        if entry is None or (old is not None and old.state == QUEUED and ReadyEntry.for_state(old) == entry):
            return  # none put, or the entry the job had already
        try:
            if _still_needed(orch, job_id, entry):
                return  # the job's own entry now: not dropped, so no crash can take it from the job
            self.drop_ready(entry)
            faults.point("queue.drop_refused.after_drop")
            if _still_needed(orch, job_id, entry):
                self.put_ready(entry)
        except OrchestratorError as exc:  # dropped and not put back (a broken folder): the job's writer may need it
            log.warning("the ready entry %s put for a refused event could not be dropped or put back: %s",
                        entry.name, exc.message, extra={"job_id": job_id, "code": exc.code})

    # -- storage --------------------------------------------------------------------------------
    @abstractmethod
    def put_ready(self, entry: ReadyEntry) -> None: ...

    @abstractmethod
    def drop_ready(self, entry: ReadyEntry) -> None: ...

    def announce(self, entry: ReadyEntry) -> None:
        """Wake idle workers: the job's event is now durable. Restores the entry if a claimer dropped it."""

    @abstractmethod
    def ready(self) -> list[ReadyEntry]:
        """Every ready entry, in claim order (due or not)."""

    def candidates(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = (),
                   left_keys: Collection[str] = ()) -> Iterator[ReadyEntry]:
        """The entries a claimer should try at ``now``, in claim order, produced lazily (a claim
        usually stops at the first one; a shared index may reserve that one for this claimer).
        ``skip``: jobs the claimer left at an earlier pass (signed by a key it does not hold,
        ``orchestrator/untrusted.py``, or of a kind it has no handler for): a shared index never
        reserves one of them for it. They may still be listed: the claimer passes over the first
        without a read, and reads the others again (a handler may have been registered since).
        ``kinds``: the only kinds the claimer runs (``WorkerSettings.kinds``; empty: all). An index that
        knows its entries' kinds (PostgreSQL) lists no other; the others list every entry, and the
        claimer tells the kind from the job it reads. ``left_keys``: keys the claimer found it does not trust; a
        shared index whose entries name their keys never reserves one naming any of them."""
        return iter(self.ready())

    def next_page(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = (),
                  left_kinds: Collection[str] = (), left_jobs: Collection[str] = (),
                  left_keys: Collection[str] = ()) -> list[ReadyEntry]:
        """For an index that lists a page of the due entries (``lists_every_due_entry`` False): the next page, once a
        claimer left every entry of the last one, without entries of ``left_kinds`` (kinds it found no handler for),
        of the jobs ``left_jobs`` or of jobs a line of which a key of ``left_keys`` signed (left for want of a key:
        ``UntrustedJobs``); empty when there is none. An index whose ``candidates`` lists every entry has no next
        page."""
        return []

    def upcoming(self) -> ReadyEntry | None:
        """The entry the next claim will most likely try first, from what this index holds already: no read,
        nothing reserved, the claims' walk left as it is. A worker reads and checks its job while
        a handler runs (``Claimer.look_ahead``). None when it does not know (a shared index reserves its entries
        as it lists them: its claim statement reads the job anyway, ``reserved_read``)."""
        return None

    def reserved_read(self, entry: ReadyEntry) -> "tuple[bytes | None, list[StoredLine]] | None":
        """The job of ``entry``, read with its reservation by the last ``candidates`` if that reserved it (an index
        in the store's database: one round trip for both, ``store/pg_queue.py``), as ``EventStore.read_with_aux``
        returns it for the job's head record: the claimer verifies it as a read of its own. Given once; None when
        there is none (read the job). An index that reserves nothing reads nothing: None."""
        return None

    def release(self, entry: ReadyEntry) -> None:
        """The claimer leaves ``entry``'s job for other claimers (for want of a handler, a key, or of its kind):
        a shared index that reserved it for this claimer lets it go at once and wakes the others, rather
        than have them wait out the reservation. Nothing to do for an index that reserves nothing."""

    def name_keys(self, entry: ReadyEntry, view: JobView) -> None:
        """The claimer read the job of ``entry`` (``view``) and left it for want of a key: an index that keeps the keys
        (``keeps_signers``) writes every key of the job's lines (``JobView.line_keys``, read only then) into an entry
        that names none (``ReadyEntry.signers`` empty), as the event that queued it does since they are kept, so that
        every claimer that found one of them missing leaves it out unread from then on. Nothing to do for an index
        that keeps none (nor are the lines' keys read)."""

    # Running entries are kept per (job, epoch): the worker that hands a job back to the queue drops
    # the entry of *its* epoch, never the one the next claimer (epoch + 1) put before its claim.
    # ``epoch=None`` names an entry of unknown epoch (an older index, or a store that needs none).
    @abstractmethod
    def put_running(self, job_id: str, epoch: int | None = None) -> None: ...

    @abstractmethod
    def drop_running(self, job_id: str, epoch: int | None = None) -> None: ...

    @abstractmethod
    def running_entries(self) -> list[tuple[str, int | None]]:
        """(job id, epoch) of every running entry: jobs that may be running under that epoch."""

    def running(self) -> list[str]:
        """Job ids that may be running (checked against their events before use)."""
        return sorted({job_id for job_id, _ in self.running_entries()})

    def is_claimed(self, job_id: str) -> bool:
        """Whether the job has a running entry, of any epoch: an announcement does not put back the
        ready entry of a job a worker already claimed (``FileQueueIndex.announce``)."""
        return any(j == job_id for j, _ in self.running_entries())

    def holds_entry(self, s: JobState) -> bool:
        """Whether the index holds the entry a job in state ``s`` needs (queued: its ready entry; running: a running
        entry of its epoch, or of none); ``verify`` asks it of every job (an entry deleted by hand: no worker runs or
        recovers the job until the index is rebuilt). True for an index that is not looked at (in memory)."""
        return True

    def holding(self, states: list[JobState]) -> set[str]:
        """The jobs of ``states`` whose entries the index holds (``holds_entry``), looked at together: an index in the
        store's database asks once (``verify``, a chunk of jobs at a time)."""
        return {s.job_id for s in states if self.holds_entry(s)}

    def missing_entry_terms(self, s: JobState) -> tuple[str, str, str]:
        """How ``verify`` names the entry a job in state ``s`` lacks here (``INDEX_ENTRY_MISSING``): where it is not,
        how such an entry goes, and what makes the next worker rebuild the index."""
        return "no entry in the queue index", "the entry was deleted", "rebuild the queue index"

    def drop_orphan_ready(self, entry: ReadyEntry, store: "EventStore") -> None:
        """Drop the ready entry of a job read with no line, then look once more for one, and put the entry back if
        there is one now: a job whose first line landed after the read (a writer paused past the grace; until
        2026-12-07 ``import`` put entries before a job's lines too, under the job's own time, older than any grace).
        Only for an entry taken for an orphan's: no cost to a claim."""
        self.drop_ready(entry)
        if _holds_a_line(store, entry.job_id):
            self.put_ready(entry)

    def drop_orphan_running(self, job_id: str, epoch: int | None, store: "EventStore") -> None:
        """``drop_orphan_ready`` for a running entry: stale recovery that read a job before its first line landed keeps
        its entry, and recovers the job at a later pass."""
        self.drop_running(job_id, epoch)
        if _holds_a_line(store, job_id):
            self.put_running(job_id, epoch)

    @abstractmethod
    def is_built(self) -> bool: ...

    @abstractmethod
    def mark_built(self) -> None: ...

    def start_building(self) -> None:
        """The index is about to be filled from nothing (a rebuild's scan, or a project's first job): it is not built
        until ``mark_built``. The file index marks its folders here, so that one removed meanwhile is seen."""

    def wait(self, timeout: float, take_turns: bool = True) -> bool:
        """Block until new work may have been announced, or ``timeout`` seconds; no busy polling. Each thread
        waits on its own (workers of one Orchestrator in several threads). ``take_turns``: this worker may wait its
        turn to watch, with the other idle workers of the queue (``FileQueueIndex``); False when its last claim
        pass left a job for another worker (another kind, no handler, a key it does not trust), so that the turn
        goes on to one that may run it."""
        threading.Event().wait(timeout)
        return False

    def hand_over_watch(self) -> None:
        """This thread has claimed a job: if it was the idle worker watching for new ones, it lets go of its turn
        (and wakes another if other entries are ready); idle again, it takes the turn back unless another took it."""

    def claimed_while_waiting(self) -> bool:
        """Whether this thread's last ``wait`` took its turn to watch and found every entry announced while it waited
        gone: another worker claimed those jobs (most likely), which may run now. Such a wait returns False (nothing
        to walk for), but the worker's stale recovery has not seen those jobs (``Worker._idle``)."""
        return False

    def close(self) -> None:
        """Release this thread's watch; the index is still usable for claims afterwards."""

    # -- rebuild ----------------------------------------------------------------------------------
    def ensure_built(self, orch: "Orchestrator") -> None:
        if not self.is_built():
            self.rebuild(orch)

    def built_with_first_job(self, store: "EventStore") -> None:
        """Called before a new job's first event: in a project with no job yet, the index is complete
        as it is (every job from now on gets its entries through the append hooks), so it is marked
        built, and the first worker claims at once instead of loading every job submitted before it
        started (``rebuild``). An index that was never built in a project that has jobs (an older
        version wrote them, or an operator removed the index) is left for that rebuild."""
        if not self._seen_built:
            if not (self.is_built() or store.has_jobs()):  # built already, or left for the rebuild
                self.start_building()
                self.mark_built()
            self._seen_built = True

    def index_job(self, s: JobState, ok: bool = True, signer: str | None = None,
                  signers: tuple[str, ...] = ()) -> bool:
        """Put the entry a job in state ``s`` needs, whatever the index held; True if it needs one. A job whose run
        ended from outside (``run_left_running``) gets that run's running entry, which stale recovery meets once.
        A job whose history failed verification gets a ready entry: a claimer meets it once, refuses
        it (audited) and drops the entry. ``signer``, ``signers``: ``JobView``'s (``ReadyEntry``'s)."""
        kept = ok and run_left_running(s)
        if kept:
            self.put_running(s.job_id, s.epoch)
        if s.state == QUEUED or not ok:
            entry = ReadyEntry.for_state(s)
            # an unverified history's kind may be forged: offered to every worker (any of them refuses the job)
            self.put_ready(replace(entry, signer=signer, signers=signers) if ok else replace(entry, kind=None))
            return True
        if s.state == RUNNING:
            self.put_running(s.job_id, s.epoch)
            return True
        return kept

    def rebuild(self, orch: "Orchestrator") -> int:
        """Scan every job once and add the entries of queued and running ones (O(all jobs))."""
        self.start_building()
        count = 0
        for job_id in orch.store.job_ids():
            try:
                view = orch.load(job_id)
            except Exception:  # noqa: BLE001 - a broken job must not stop the rebuild
                log.warning("rebuild: cannot read job %s", job_id, extra={"job_id": job_id})
                continue
            faults.point("queue.rebuild.each_job")
            if view.state is not None and self.index_job(view.state, view.ok, view.signer, view.signers):
                count += 1
        self.mark_built()
        log.info("ready index rebuilt from events: %d entries", count, extra={"entries": count})
        return count


def _still_needed(orch: "Orchestrator", job_id: str, entry: ReadyEntry) -> bool:
    """Whether the job's state, read now, needs ``entry`` (``drop_refused``): its state's own entry, or a history
    that does not verify (a claimer meets it and refuses it, audited), or a read that failed (kept: an entry too many
    is dropped when met, one missing holds the job up). False for a job with no line: nothing was written."""
    try:
        view = orch.load(job_id)
    except JobNotFoundError:
        return False
    except (OrchestratorError, OSError):
        return True
    s = view.state
    return not view.ok or (s is not None and s.state == QUEUED and ReadyEntry.for_state(s) == entry)


def _holds_a_line(store: "EventStore", job_id: str) -> bool:
    """Whether the job holds a line now (one small read); False for a name no job has."""
    try:
        return store.first_line(job_id) is not None
    except OrchestratorError:  # INVALID_ID: not an entry this code wrote
        return False


class MemoryQueueIndex(QueueIndex):
    """For the in-memory store; a condition variable wakes waiting workers."""

    def __init__(self) -> None:
        self._ready: set[ReadyEntry] = set()
        self._running: set[tuple[str, int | None]] = set()
        self._built = False
        self._cond = threading.Condition()
        self._announced = 0
        self._seen = 0  # announcements up to the last wait: later ones, even during a scan, wake the next wait

    def put_ready(self, entry: ReadyEntry) -> None:
        with self._cond:
            self._ready.add(entry)

    def drop_ready(self, entry: ReadyEntry) -> None:
        with self._cond:
            self._ready.discard(entry)

    def announce(self, entry: ReadyEntry) -> None:
        with self._cond:
            if not self.is_claimed(entry.job_id):  # see FileQueueIndex.announce
                self._ready.add(entry)
            self._announced += 1
            self._cond.notify_all()

    def ready(self) -> list[ReadyEntry]:
        with self._cond:
            return sorted(self._ready)

    def put_running(self, job_id: str, epoch: int | None = None) -> None:
        with self._cond:
            self._running.add((job_id, epoch))

    def drop_running(self, job_id: str, epoch: int | None = None) -> None:
        with self._cond:
            self._running.discard((job_id, epoch))

    def running_entries(self) -> list[tuple[str, int | None]]:
        with self._cond:
            return list(self._running)

    def is_built(self) -> bool:
        return self._built

    def mark_built(self) -> None:
        self._built = True

    def wait(self, timeout: float, take_turns: bool = True) -> bool:
        with self._cond:
            woke = self._cond.wait_for(lambda: self._announced != self._seen, timeout)
            self._seen = self._announced
            return woke


def index_for(orch: "Orchestrator", wakeup: str | None = None) -> QueueIndex:
    """The index that matches the store: its own if it has one (PostgreSQL), files next to a file
    store, memory otherwise."""
    own = getattr(orch.store, "queue_index", None)
    if own is not None:
        return own()
    root = getattr(orch.store, "root", None)
    if root is not None:
        from orchestrator.store.file_queue import FileQueueIndex  # files only: PostgreSQL never imports it

        return FileQueueIndex(Path(root) / INDEX_DIR, wakeup or os.environ.get("ORCH_WAKEUP", "auto"))
    return MemoryQueueIndex()

