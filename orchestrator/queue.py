"""The ready and running indexes: derived caches that let a worker claim without scanning.

``QueueIndex`` is a projection of the job events, fed by ``Orchestrator.append`` through
``before_append``/``after_append``, and rebuildable from the events at any time
(``docs/ADR-state-source.md``). Two rules make it crash-safe:

* an entry is written *before* the event that makes a job runnable (or running), and
  removed only *after* the event that ends it. A crash in between leaves an extra entry,
  never a missing one;
* an entry is only a hint: the claimer re-reads the job's verified events before acting,
  and drops entries whose job is no longer queued/running when it meets them.

The file index keeps one empty entry per ready job, named so that a sorted listing is the
claim order (priority desc, then runnable-at asc, then job id):
``index/ready/<1000-priority>.<runnable_at_us>.<job_id>``, and ``index/running/<job_id>@<epoch>``;
each entry is a hard link of ``index/.entry`` (a name, no new file: ``FileQueueIndex._touch``).
A PostgreSQL backend implements the same interface with a table and
``SELECT ... FOR UPDATE SKIP LOCKED`` in ``candidates``; the claim itself stays an append
with an expected sequence, so the index never decides who wins.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Iterator, NamedTuple

from orchestrator import faults
from orchestrator.errors import INDEX_NOT_UPDATED, OrchestratorError, StorageError
from orchestrator.limits import keep_latest
from orchestrator.state import QUEUED, RUNNING, JobState
from orchestrator.store.base import InTransaction
from orchestrator.store.files import check_folders, link_name, make_folder, open_creating, path_error, remove_file
from orchestrator.wakeup import InotifyWatcher, TurnBell, Watcher, WatchTurn, make_watcher, wakeup_mode, watch_turn

if TYPE_CHECKING:
    from orchestrator.api import Orchestrator
    from orchestrator.store.base import EventStore, StoredLine

log = logging.getLogger(__name__)

INDEX_DIR = "index"
INDEX_FOLDERS = ("", "ready", "running")  # under INDEX_DIR; checked when the index is opened (check_folders)
BUILT_MARKER = "built"
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

    @property
    def priority(self) -> int:
        return -self.neg_priority

    @property
    def runnable_at(self) -> float:
        return self.runnable_at_us / 1e6

    @property
    def name(self) -> str:
        return f"{1000 - self.priority:04d}.{self.runnable_at_us:017d}.{self.job_id}"

    @classmethod
    def parse(cls, name: str) -> "ReadyEntry | None":
        parts = name.split(".", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        return cls(int(parts[0]) - 1000, int(parts[1]), parts[2])

    @classmethod
    def for_state(cls, state: JobState) -> "ReadyEntry":
        """The entry a queued job should have: runnable at its retry time, else when it was queued."""
        at = state.retry_at if state.retry_at else state.updated_at
        return cls(-state.priority, int(round(at * 1e6)), state.job_id, state.kind)


class IndexChange(NamedTuple):
    """What one event changes in the index: the one place the transition rules live."""

    put_ready: ReadyEntry | None  # the job is (still) queued: its entry, new or unchanged
    drop_ready: ReadyEntry | None  # the entry the job no longer has (it left queued, or moved)
    put_running: bool  # the job is running: the entry of its epoch (put again on each event: idempotent)
    drop_running: bool  # the job left running: the entry of the epoch it ran under

    @classmethod
    def of(cls, old: JobState | None, new: JobState) -> "IndexChange":
        after = ReadyEntry.for_state(new) if new.state == QUEUED else None
        before = ReadyEntry.for_state(old) if old is not None and old.state == QUEUED else None
        was_running = old is not None and old.state == RUNNING
        return cls(after, before if before != after else None,
                   new.state == RUNNING, was_running and new.state != RUNNING)


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

    # -- projection hooks (called by Orchestrator.append) --------------------------------------
    def before_append(self, job_id: str, old: JobState | None, new: JobState) -> InTransaction | None:
        """Make the entries the new state needs exist before its event is written.

        An index kept in the store's database returns its statements instead, for the append to
        run in its own transaction (``EventStore.append(in_transaction=...)``); this one returns None.
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

    def candidates(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = ()) -> Iterator[ReadyEntry]:
        """The entries a claimer should try at ``now``, in claim order, produced lazily (a claim
        usually stops at the first one; a shared index may reserve that one for this claimer).
        ``skip``: jobs the claimer left at an earlier pass (signed by a key it does not hold,
        ``orchestrator/untrusted.py``, or of a kind it has no handler for): a shared index never
        reserves one of them for it. They may still be listed: the claimer passes over the first
        without a read, and reads the others again (a handler may have been registered since).
        ``kinds``: the only kinds the claimer runs (``WorkerSettings.kinds``; empty: all). An index that
        knows its entries' kinds (PostgreSQL) lists no other; the others list every entry, and the
        claimer tells the kind from the job it reads."""
        return iter(self.ready())

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

    @abstractmethod
    def is_built(self) -> bool: ...

    @abstractmethod
    def mark_built(self) -> None: ...

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
                self.mark_built()
            self._seen_built = True

    def index_job(self, s: JobState, ok: bool = True) -> bool:
        """Put the entry a job in state ``s`` needs, whatever the index held; True if it needs one.
        A job whose history failed verification gets a ready entry: a claimer meets it once, refuses
        it (audited) and drops the entry."""
        if s.state == QUEUED or not ok:
            entry = ReadyEntry.for_state(s)
            # an unverified history's kind may be forged: offered to every worker (any of them refuses the job)
            self.put_ready(entry if ok else replace(entry, kind=None))
            return True
        if s.state == RUNNING:
            self.put_running(s.job_id, s.epoch)
            return True
        return False

    def rebuild(self, orch: "Orchestrator") -> int:
        """Scan every job once and add the entries of queued and running ones (O(all jobs))."""
        count = 0
        for job_id in orch.store.job_ids():
            try:
                view = orch.load(job_id)
            except Exception:  # noqa: BLE001 - a broken job must not stop the rebuild
                log.warning("rebuild: cannot read job %s", job_id, extra={"job_id": job_id})
                continue
            faults.point("queue.rebuild.each_job")
            if view.state is not None and self.index_job(view.state, view.ok):
                count += 1
        self.mark_built()
        log.info("ready index rebuilt from events: %d entries", count, extra={"entries": count})
        return count


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


LISTING_MAX_AGE = 0.05  # seconds a worker draining a backlog keeps walking one listing of ready/
FIRST_CLAIM_EPOCH = 1  # a submitted job's epoch is 0 and a claim takes the next: its first claim's running entry
PASSED_OVER_KEPT = 4096  # jobs a worker remembers passing over for a first claim in flight (``_claim_in_flight``)
TAKEN_OVER_NAMES_CHECKED = 64  # more entries announced while a worker waited its turn: it walks, without a look at each


class FileQueueIndex(QueueIndex):
    """Empty files under ``<state_dir>/index``; listing ``ready/`` costs O(ready jobs), not O(all jobs).
    Its folders are checked when it is opened, as the store's are: never a symbolic link."""

    def __init__(self, root: Path, wakeup: str = "auto") -> None:
        self.root = Path(root)
        check_folders(self.root, INDEX_FOLDERS)
        self.ready_dir = self.root / "ready"
        self.running_dir = self.root / "running"
        self._wakeup = wakeup_mode(wakeup)
        self._waits = _ThreadWaits()  # each thread's own watch and turn
        self._listing: list[str] = []  # the ready/ listing claims walk (see ``candidates``)
        self._listed_at = float("-inf")
        self._next = 0
        self._passed_over: OrderedDict[str, None] = OrderedDict()  # see ``_claim_in_flight``
        self._cursor = threading.Lock()  # workers of one Orchestrator (threads) share the walk
        self.template = self.root / ENTRY_TEMPLATE
        # an entry's path is joined as a string: a ``pathlib`` join costs ~10 us, three per job
        self._ready_s, self._running_s = str(self.ready_dir), str(self.running_dir)
        self._built_s = str(self.root / BUILT_MARKER)
        self._bell = TurnBell(str(self.root))  # rung after each ready entry made: wakes a waiting worker if none watches

    def _touch(self, path: "Path | str") -> None:
        """Make the entry ``path`` exist: a hard link of the index's one empty file, not a file of its own
        (``files.link_name``: only an entry's name means anything); where links fail, the entry is created."""
        try:
            # a planted symlink is linked, not its target; both folders made with the template, as always
            if link_name(self.template, path, self.root, (self.ready_dir, self.running_dir)):
                return
        except FileExistsError:
            return
        try:
            fd = open_creating(path, self.root)
        except OSError as exc:  # a full disk (no inode left) is STORAGE_ERROR, not a traceback
            raise StorageError(f"could not write the index entry {path}: {exc.strerror}") from None
        os.close(fd)

    def put_ready(self, entry: ReadyEntry) -> None:
        self._touch(os.path.join(self._ready_s, entry.name))
        self._bell.ring_if_nobody_watches()
        faults.point("queue.after_put_ready")

    def drop_ready(self, entry: ReadyEntry) -> None:
        remove_file(os.path.join(self._ready_s, entry.name))

    def announce(self, entry: ReadyEntry) -> None:
        # IN_ATTRIB wakes watchers only now that the event is durable
        path = os.path.join(self._ready_s, entry.name)
        try:
            os.utime(path, follow_symlinks=False)  # a planted link: its own times
        except FileNotFoundError:
            # A fast worker claimed the job already (its running entry is there): nothing to do. Or a
            # claimer dropped the entry as stale, because it did not look newer than the job's last
            # event (the clock stepped back between that event and this one): put it back, or the job
            # would stay queued with no entry. (A claimer never drops an entry newer than the job's last
            # event while the entry is young, Claimer._try_claim: so no drop comes after this call.) If a
            # running entry left by a crash hides this case, stale recovery puts the entry back when
            # it meets that running entry (recovery.recover_expired).
            if not self.is_claimed(entry.job_id):
                self._touch(path)
                self._bell.ring_if_nobody_watches()
        except OSError as exc:
            raise path_error(exc, path) from None  # utime's error names no path

    def ready(self) -> list[ReadyEntry]:
        names = self._list(self.ready_dir)
        entries = [e for e in map(ReadyEntry.parse, names) if e is not None]
        entries.sort()
        return entries

    def candidates(self, now: float, skip: Collection[str] = (), kinds: Collection[str] = ()) -> Iterator[ReadyEntry]:
        """Claim order, from a sorted listing of ``ready/`` that successive claims share (nothing is reserved,
        so ``skip`` changes nothing; an entry's name holds no kind, so ``kinds`` does not either).

        Listing a backlog of thousands of entries costs ~0.3 ms, as much as the rest of a claim, so a
        worker draining a backlog walks one listing: each claim goes on where the last one stopped,
        and the folder is listed again once the walk reaches its end or the listing is older than
        ``LISTING_MAX_AGE`` (so a job of higher priority submitted meanwhile waits at most that long).
        The zero-padded names sort as their entries do: a string sort (C speed) gives the claim
        order, and only the entries a claim actually looks at are parsed. An entry gone since the listing is passed
        over, and one whose first claim another worker has in flight comes last (``_claim_in_flight``).
        """
        fresh = time.monotonic() - self._listed_at <= LISTING_MAX_AGE
        return self._walk(relist=not (fresh and self._next < len(self._listing)))

    def _walk(self, relist: bool) -> Iterator[ReadyEntry]:
        if relist:
            self._relist()
        later: dict[str, ReadyEntry] = {}  # passed over for a claim in flight: read if nothing else is claimed
        while True:
            while (name := self._take_next()) is not None:
                entry = ReadyEntry.parse(name)
                # gone since the listing: claimed by another worker (or dropped). Not read: with several workers on
                # one queue, reading and checking each job another had claimed cost as much as a claim of one's own
                if entry is None or not self._ready_there(name):
                    continue
                if self._claim_in_flight(entry.job_id):
                    later[name] = entry
                    continue
                yield entry
            if relist:
                break
            # an older listing ran out: list once more, so nothing added since (a retry) is missed
            relist = True
            self._relist()
        for name, entry in later.items():  # a pass that claims nothing has looked at every entry, as before
            if self._ready_there(name):
                yield entry

    def _claim_in_flight(self, job_id: str) -> bool:
        """Whether another worker is claiming this queued job for the first time: its running entry of that claim is
        there (made before the claim's event) while its ready entry still is (dropped after it). Reading and checking
        the job then finds it running, or claims it only to lose the append: with four workers on one queue, most
        jobs were read so by a worker that did not get them (``python -m bench.workers``). Said once a job
        (``_passed_over``): a crash between that running entry and the claim's event leaves the entry for good (stale
        recovery cannot tell it from a claim in flight), and such a job is read the next time it is met."""
        if job_id in self._passed_over or not self._first_claim_made(job_id):
            return False
        with self._cursor:  # workers of one Orchestrator (threads) share the memory, as the walk
            keep_latest(self._passed_over, job_id, None, PASSED_OVER_KEPT)
        return True

    def _ready_there(self, name: str) -> bool:
        return _entry_exists(os.path.join(self._ready_s, name))

    def _first_claim_made(self, job_id: str) -> bool:
        """Whether the running entry of the job's first claim is there (made before that claim's event)."""
        return _entry_exists(os.path.join(self._running_s, self._running_name(job_id, FIRST_CLAIM_EPOCH)))

    def upcoming(self) -> ReadyEntry | None:
        """The next entry of the listing claims walk (``candidates``): while a backlog is drained, the job the next
        claim takes (an older listing's next entry too: it is listed again). None if another worker has claimed it,
        or is claiming it for the first time: the claim will pass over it."""
        with self._cursor:
            names = self._listing[self._next:self._next + 1]
        entry = ReadyEntry.parse(names[0]) if names else None
        if entry is None or not self._ready_there(names[0]) or self._first_claim_made(entry.job_id):
            return None
        return entry

    def _take_next(self) -> str | None:
        with self._cursor:
            if self._next >= len(self._listing):
                return None
            self._next += 1
            return self._listing[self._next - 1]

    def _relist(self) -> None:
        listing = sorted(self._list(self.ready_dir))
        with self._cursor:
            self._listing, self._listed_at, self._next = listing, time.monotonic(), 0

    @staticmethod
    def _running_name(job_id: str, epoch: int | None) -> str:
        return job_id if epoch is None else f"{job_id}@{epoch}"  # "@" is never in an id

    def put_running(self, job_id: str, epoch: int | None = None) -> None:
        self._touch(os.path.join(self._running_s, self._running_name(job_id, epoch)))

    def drop_running(self, job_id: str, epoch: int | None = None) -> None:
        remove_file(os.path.join(self._running_s, self._running_name(job_id, epoch)))

    def running_entries(self) -> list[tuple[str, int | None]]:
        names = self._list(self.running_dir)
        out: list[tuple[str, int | None]] = []
        for name in names:
            job_id, at, epoch = name.partition("@")
            if name.startswith(".") or (at and not epoch.isdigit()):
                continue
            out.append((job_id, int(epoch) if at else None))
        return out

    @staticmethod
    def _list(folder: Path) -> list[str]:
        """The names in ``folder``; none when it is missing, ``StorageError`` when it cannot be listed."""
        try:
            return os.listdir(folder)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise path_error(exc) from None

    def is_built(self) -> bool:
        return os.path.exists(self._built_s)

    def mark_built(self) -> None:
        self._touch(self._built_s)

    def wait(self, timeout: float, take_turns: bool = True) -> bool:
        """Idle workers take turns watching ``ready/`` (``wakeup.WatchTurn``): one whose turn it is not waits for it,
        and when it comes looks at once if an entry announced meanwhile is still there (another worker's claim
        removed the rest). One that left a job for another worker (``take_turns`` False) gives its turn up and
        watches on its own: the turn goes on until a worker that runs the job has it, or every idle one watches.
        Where turns cannot be taken (polling), every idle worker watches."""
        end = time.monotonic() + timeout
        waits = self._waits
        waits.claimed = False
        # ready/ removed or moved away (the index is a cache: deletable at any time): the next entry goes into a new
        # folder, so that one is watched, and "look now" said, for an entry put there before the watch
        lost = waits.watcher is not None and waits.watcher.lost
        if lost:
            self.close()
        watcher = waits.watcher
        if watcher is None:
            make_folder(self.ready_dir, self.root)
            watcher = waits.watcher = make_watcher(self.ready_dir, self._wakeup)
            waits.turn = watch_turn(self.root) if isinstance(watcher, InotifyWatcher) else None
        if lost:
            return True
        turn = waits.turn
        if turn is not None and not take_turns:
            turn.hand_over()
        elif turn is not None and not turn.mine:
            if not turn.take():
                turn.wait(timeout)
                if not turn.take():
                    return False
            if watcher.wait(0):
                if self._still_ready(watcher.changed(TAKEN_OVER_NAMES_CHECKED)):
                    return True
                waits.claimed = True  # nothing to walk for, but those jobs may run now: ``claimed_while_waiting``
        return watcher.wait(max(0.0, end - time.monotonic()))

    def claimed_while_waiting(self) -> bool:
        return self._waits.claimed

    def _still_ready(self, names: "set[str] | None") -> bool:
        """Whether one of the entries announced while this worker waited its turn is still there to claim (not
        known, or too many to look at each: a look is due)."""
        return names is None or any(self._ready_there(name) for name in names)

    def hand_over_watch(self) -> None:
        turn = self._waits.turn
        if turn is not None and turn.mine:
            turn.release()
            if self._list(self.ready_dir):  # other jobs ready (a backlog, a job of another kind): a waiter looks too
                turn.ring()

    def close(self) -> None:
        waits = self._waits
        for part in (waits.turn, waits.watcher):  # the turn first: it hands over before the watch ends
            if part is not None:
                part.close()
        waits.turn = waits.watcher = None


class _ThreadWaits(threading.local):
    """A thread's watch of ``ready/`` and its turn to watch, each None until its first wait (``FileQueueIndex.wait``):
    workers of one Orchestrator (threads) share the index, and one that stops closes its own, never the one another
    is waiting on (a wait on a closed, or reused, descriptor)."""

    watcher: "Watcher | None" = None
    turn: "WatchTurn | None" = None
    claimed = False  # its last wait took the turn and found the entries announced before it gone


def _entry_exists(path: str) -> bool:
    """Whether an index entry is there (a link planted in its place counts, never followed): ``faccessat``, ~0.4 us,
    where ``os.path.lexists`` raises and catches an error for a missing entry (~1.1 us), one to three times a claim."""
    return os.access(path, os.F_OK, follow_symlinks=False)


def index_for(orch: "Orchestrator", wakeup: str | None = None) -> QueueIndex:
    """The index that matches the store: its own if it has one (PostgreSQL), files next to a file
    store, memory otherwise."""
    own = getattr(orch.store, "queue_index", None)
    if own is not None:
        return own()
    root = getattr(orch.store, "root", None)
    if root is not None:
        return FileQueueIndex(Path(root) / INDEX_DIR, wakeup or os.environ.get("ORCH_WAKEUP", "auto"))
    return MemoryQueueIndex()

